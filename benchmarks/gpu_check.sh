#!/usr/bin/env bash
# One prepared GPU run of the pack: the gpu-marked tests, the kernel self-check report, bench_kernels.py
# --markdown (fp16 + bf16), bench_realwidth.py on CUDA (SDXL, FLUX.1, Qwen-Image; GAG and PLADIS; chart on and
# off; TorchCompileModel on FLUX.1) and the ncu summary of one FLUX launch, every table under $OUT.
# Sized for one H100 with no network, under 8 minutes (docs/gpu.md).
#
#   Here (no GPU), once:  COMFYUI_PATH=/path/to/ComfyUI-0.33 COMFY_PYTHON=<its venv>/bin/python \
#                             bash benchmarks/gpu_check.sh --dry-run
#     builds .gpu/ (ignored): a copy of the ComfyUI tree at COMFYUI_PATH and the cp312 wheels of what its import
#     path needs beyond the GPU image (found by tracing the imports of the benchmark's ComfyUI setup with
#     COMFY_PYTHON), checks that the working tree plus .gpu/ is at most 64 MiB, and runs every step that needs
#     no CUDA (pytest collection of the gpu tests, the self-check report and bench_kernels through Triton's
#     interpreter, the realwidth benchmark's import path on the copied tree).
#   On the GPU machine:   bash benchmarks/gpu_check.sh          (with .gpu carried; writes $OUT or ./gpu_out)
#
# No ComfyUI code is committed: the tree is copied from COMFYUI_PATH into the ignored .gpu/ at run time.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CARRY=.gpu
LIMIT=$((64 * 1024 * 1024))
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/gpu_out}
mkdir -p "$OUT"
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1

# Distributions the GPU image holds (/work/.library/device/KINDS.md, "Python packages already there"), lower
# case, '_' as '-'; with the issue's stricter assumption (torch, triton, numpy, safetensors only) av and scipy
# alone would not fit the 64 MiB, so the carry relies on this list and the device run checks it (step 0).
IMAGE_HAS=" absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi
charset-normalizer click cloudpickle colorama contourpy cycler einops filelock fonttools frozenlist fsspec h11
hf-xet httpcore httpx huggingface-hub idna imageio iniconfig jinja2 joblib kiwisolver markdown markdown-it-py
markupsafe matplotlib mdurl mpmath msgpack multidict networkx numpy packaging pandas pillow pip pluggy propcache
protobuf psutil pygments pyparsing pytest python-dateutil pyyaml regex requests rich safetensors scipy
sentencepiece setuptools six sympy tokenizers torch torchaudio torchvision tqdm transformers triton
typing-extensions urllib3 wheel yarl zipp nvidia-ml-py "
IMAGE_HAS=" $(echo $IMAGE_HAS) "  # one line, one space between names
# not carried: test tooling the image has, and pip's own
SKIP=" pytest pluggy iniconfig pygments truststore setuptools "
# imported at ComfyUI's import time but never used by the benchmark, and too large to carry (av 34 MiB,
# comfy-kitchen 56 MiB): where the device lacks them, a stub module of ours stands in (write_stubs)
STUB=" av comfy-kitchen "

log() { echo "[gpu_check] $*" | tee -a "$OUT/summary.log"; }
step() {  # step NAME TIMEOUT_S OUTFILE CMD...: run with a time limit, keep going on failure
  local name=$1 limit=$2 file=$3; shift 3
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$file" 2>&1
  local rc=$?
  log "$name: exit $rc in $((SECONDS - t0)) s -> $file"
  [ $rc -eq 0 ] || tail -5 "$OUT/$file" | sed 's/^/    /' | tee -a "$OUT/summary.log"
  return 0
}

trace_imports() {  # COMFY_PYTHON TREE: name==version of every distribution the benchmark's setup imports
  COMFYUI_PATH=$2 "$1" - <<'EOF'
import importlib.metadata as md, os, sys
sys.path.insert(0, os.environ["COMFYUI_PATH"]); sys.path.insert(0, "tests")
import torch
from comfy.cli_args import args as comfy_args
comfy_args.cpu = not torch.cuda.is_available()
from test_comfyui_tiny import Comfy
Comfy()
from comfy_api.torch_helpers import set_torch_compile_wrapper  # noqa: F401 (the TorchCompileModel path)
import comfy.ldm.modules.attention  # noqa: F401
pkgs = md.packages_distributions()
seen = set()
for name, mod in list(sys.modules.items()):
    top = name.split(".")[0]
    if "-packages" in (getattr(mod, "__file__", None) or "") and top in pkgs:
        seen.update(pkgs[top])
for d in sorted(seen, key=str.lower):
    if not d.lower().startswith("nvidia-"):
        print(f"{d}=={md.version(d)}")
EOF
}

norm() { echo "$1" | tr 'A-Z_' 'a-z-'; }

prepare() {
  : "${COMFYUI_PATH:?set COMFYUI_PATH to a ComfyUI 0.33 checkout}"
  : "${COMFY_PYTHON:?set COMFY_PYTHON to a python with the requirements of that ComfyUI}"
  [ -f "$COMFYUI_PATH/main.py" ] || { log "COMFYUI_PATH=$COMFYUI_PATH has no main.py"; return 2; }
  grep -qx '/.gpu/' .gitignore 2>/dev/null || { log ".gitignore does not ignore /.gpu/"; return 2; }
  mkdir -p "$CARRY/wheels"
  log "copying $COMFYUI_PATH -> $CARRY/ComfyUI (no .git, tests, workflow blueprints)"
  rm -rf "$CARRY/ComfyUI" && mkdir -p "$CARRY/ComfyUI"
  tar -C "$COMFYUI_PATH" --exclude=./.git --exclude=./tests --exclude=./tests-unit --exclude=./.github \
      --exclude=./blueprints --exclude='__pycache__' -cf - . | tar -C "$CARRY/ComfyUI" -xf - || return 1
  log "tracing the imports of the benchmark's ComfyUI setup (COMFY_PYTHON, copied tree)"
  trace_imports "$COMFY_PYTHON" "$ROOT/$CARRY/ComfyUI" >"$OUT/imports.txt" 2>"$OUT/imports.err" \
    || { log "import trace failed:"; tail -20 "$OUT/imports.err"; return 1; }
  local need=() stubs=() spec name f
  while read -r spec; do
    name=$(norm "${spec%%==*}")
    case "$IMAGE_HAS$SKIP" in *" $name "*) continue ;; esac
    case "$STUB" in *" $name "*) stubs+=("$spec"); continue ;; esac
    need+=("$spec")
  done <"$OUT/imports.txt"
  printf '%s\n' "${need[@]}" >"$CARRY/wheels/REQUIRES.txt"
  printf '%s\n' "${stubs[@]}" >"$CARRY/wheels/STUBS.txt"
  log "imported: $(wc -l <"$OUT/imports.txt") distributions; beyond the image: ${need[*]:-none};" \
      "stubbed where missing: ${stubs[*]:-none}"
  write_stubs
  for f in "$CARRY"/wheels/*.whl; do  # drop wheels of an earlier list
    [ -e "$f" ] || continue
    name=$(basename "$f" | cut -d- -f1 | tr 'A-Z_' 'a-z-')
    printf '%s\n' "${need[@]}" | cut -d= -f1 | tr 'A-Z_' 'a-z-' | grep -qx "$name" || rm -f "$f"
  done
  for spec in "${need[@]}"; do
    name=$(norm "${spec%%==*}")
    ls "$CARRY/wheels" | tr 'A-Z_' 'a-z-' | grep -q "^${name}-${spec##*==}-" && continue
    "$COMFY_PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$CARRY/wheels" "$spec" \
      || { log "no cp312 x86-64 wheel for $spec"; return 1; }
  done
  local tree carry total
  tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  carry=$(du -sb "$CARRY" | cut -f1)
  total=$((tree + carry))
  log "size: working tree $((tree / 1048576)) MiB + $CARRY $((carry / 1048576)) MiB (ComfyUI" \
      "$(( $(du -sb "$CARRY/ComfyUI" | cut -f1) / 1048576 )) MiB, wheels $(( $(du -sb "$CARRY/wheels" | cut -f1) / 1048576 )) MiB)" \
      "= $((total / 1048576)) MiB of 64 MiB"
  [ "$total" -le "$LIMIT" ] || { log "over the 64 MiB a run carries"; return 1; }
  log "device call: run(command='bash benchmarks/gpu_check.sh', carry=['$CARRY'], timeout_s=600)"
}

write_stubs() {  # .gpu/stubs/<dist>/<module>/__init__.py: import-time stand-ins, our code, no ComfyUI code
  rm -rf "$CARRY/stubs"
  mkdir -p "$CARRY/stubs/av/av" "$CARRY/stubs/comfy-kitchen/comfy_kitchen"
  local common='

class _Meta(type):
    """A stand-in class: its attributes and calls give further stand-ins (usable in annotations and calls)."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub(f"{cls.__name__}.{name}")

    def __call__(cls, *args, **kwargs):
        return _stub(f"{cls.__name__}()")


def _stub(name):
    return _Meta(name, (), {})


def _module_getattr(module_name):
    def getattr_(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub(f"{module_name}.{name}")
    return getattr_


__getattr__ = _module_getattr(__name__)

'
  local submodules='import importlib.abc
import importlib.machinery
import sys
import types


class _Submodules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Any submodule of this package imports as a module of stand-ins."""

    def find_spec(self, fullname, path, target=None):
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _module_getattr(spec.name)
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Submodules())
'
  { echo '"""gpu_check stub for PyAV (benchmarks/gpu_check.sh): ComfyUI imports it, the benchmark decodes no video."""'
    echo "$submodules$common"; } >"$CARRY/stubs/av/av/__init__.py"
  cat >"$CARRY/stubs/comfy-kitchen/comfy_kitchen/__init__.py" <<'EOF'
"""gpu_check stub for comfy-kitchen (benchmarks/gpu_check.sh): no submodules, so ComfyUI's quant_ops takes its own
fallback; int8 attention unavailable; RoPE through ComfyUI's own PyTorch functions (the same for every setting)."""


def int8_attention_is_available():
    return False


def apply_rope(xq, xk, freqs_cis):
    from comfy.ldm.flux.math import _apply_rope

    return _apply_rope(xq, xk, freqs_cis)


def apply_rope1(x, freqs_cis):
    from comfy.ldm.flux.math import _apply_rope1

    return _apply_rope1(x, freqs_cis)


def __getattr__(name):
    raise AttributeError(f"comfy_kitchen.{name}: not in the gpu_check stub (comfy-kitchen is not installed here)")
EOF
}

install_wheels() {  # on the device: install the carried wheels whose distribution is missing
  local site=/tmp/gag_site missing=()
  while read -r spec; do
    [ -n "$spec" ] || continue
    "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "${spec%%==*}" 2>/dev/null \
      || missing+=("$(norm "${spec%%==*}")")
  done <"$CARRY/wheels/REQUIRES.txt"
  log "image lacks: ${missing[*]:-nothing}"
  while read -r spec; do  # stubs for the large import-only distributions the image lacks
    [ -n "$spec" ] || continue
    "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "${spec%%==*}" 2>/dev/null && continue
    log "stub for ${spec%%==*}"
    export PYTHONPATH=$ROOT/$CARRY/stubs/$(norm "${spec%%==*}")${PYTHONPATH:+:$PYTHONPATH}
  done <"$CARRY/wheels/STUBS.txt"
  local whl=()
  for name in "${missing[@]}"; do
    for f in "$CARRY"/wheels/*.whl; do
      [ "$(basename "$f" | cut -d- -f1 | tr 'A-Z_' 'a-z-')" = "$name" ] && whl+=("$f")
    done
  done
  if [ ${#whl[@]} -gt 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "${whl[@]}" \
      || log "wheel install failed"
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  fi
}

FLUX_ONCE='import os, torch, gag_core
from gag_core import kernels
g = torch.Generator(device="cuda").manual_seed(0)
b, h, t, n, d = 1, 24, 512, 4096, 128
q, k, v = (torch.randn(b, h, t + n, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
o, lse = gag_core.dense_attention_with_lse(q, k, v)
kw = dict(text_range=(0, t), lse=lse, o_dense=o, method="gag", scale=5.0, beta=0.0, tau=15.0, alpha=1.5)
out = kernels.fused_joint_attention(q, k, v, **kw)
torch.cuda.synchronize()
print("fused FLUX launch:", "ok" if out is not None else "fell back")'

TINY_STEPS='import os, sys
sys.path.insert(0, os.environ["COMFYUI_PATH"]); sys.path.insert(0, "tests")
import av, comfy_kitchen
assert "gpu_check" in av.__doc__ and "gpu_check" in comfy_kitchen.__doc__, "the stubs are not the ones imported"
from comfy.cli_args import args
args.cpu = True
from test_comfyui_tiny import Comfy
c = Comfy()
for fam in ("sdxl", "flux1", "qwen_image"):
    guided = c.run_node("GeometryAwareAttentionGuidance", model=c.build(fam), scale=5.0, beta=0.0)
    x = c.sample(guided, fam, steps=1)
    assert bool(x.isfinite().all()), fam
    print(fam, "one guided step:", tuple(x.shape))'

if [ $DRY -eq 1 ]; then
  : >"$OUT/summary.log"
  prepare || { log "prepare failed"; exit 1; }
  log "dry run: the steps that need no CUDA"
  step "gpu tests (collection only)" 120 gpu_tests.txt "$PY" -m pytest -q -m gpu --collect-only tests/test_kernels.py
  grep -q "tests collected\|test collected" "$OUT/gpu_tests.txt" || { log "no gpu test collected"; exit 1; }
  step "self-check report (Triton interpreter)" 300 selfcheck.txt env GAG_TRITON_INTERPRET=1 \
      "$PY" benchmarks/bench_selfcheck.py --interpret
  step "bench_kernels (Triton interpreter)" 300 kernels.md "$PY" benchmarks/bench_kernels.py --interpret --markdown
  step "bench_realwidth (argument parsing)" 60 realwidth.txt env COMFYUI_PATH="$ROOT/$CARRY/ComfyUI" \
      "$COMFY_PYTHON" benchmarks/bench_realwidth.py --help
  step "copied ComfyUI with the stubs: one tiny guided step per family" 300 comfy_stubs.txt \
      env PYTHONPATH="$ROOT/$CARRY/stubs/av:$ROOT/$CARRY/stubs/comfy-kitchen" COMFYUI_PATH="$ROOT/$CARRY/ComfyUI" \
      "$COMFY_PYTHON" -c "$TINY_STEPS"
  log "ncu: needs CUDA; the device run profiles one FLUX launch (kernel name regex gag_fused)"
  bad=$(grep -c "exit [1-9]" "$OUT/summary.log")
  log "dry run done: $bad failed step(s); outputs in $OUT"
  [ "$bad" -eq 0 ]
  exit
fi

: >"$OUT/summary.log"
T0=$SECONDS
[ -f "$CARRY/wheels/REQUIRES.txt" ] || { log "no $CARRY/: run --dry-run here first and carry $CARRY"; exit 2; }
install_wheels
{ nvidia-smi; "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__,
  torch.cuda.get_device_name())'; } >"$OUT/env.txt" 2>&1
export COMFYUI_PATH=$ROOT/$CARRY/ComfyUI PYTHONUNBUFFERED=1
step "gpu tests" 75 gpu_tests.txt "$PY" -m pytest -q -m gpu tests/test_kernels.py
step "self-check report" 40 selfcheck.txt "$PY" benchmarks/bench_selfcheck.py
step "bench_kernels fp16+bf16" 70 kernels.md bash -c \
  "'$PY' benchmarks/bench_kernels.py --markdown --dtype float16 && '$PY' benchmarks/bench_kernels.py --markdown --dtype bfloat16"
step "bench_realwidth (CUDA, chart on and off)" 110 realwidth.txt "$PY" benchmarks/bench_realwidth.py --rounds 1 \
  --steps 1 --dtype bfloat16 --models sdxl flux1 qwen_image --chart
step "bench_realwidth (CUDA, TorchCompileModel, FLUX.1)" 130 realwidth_compile.txt "$PY" benchmarks/bench_realwidth.py \
  --rounds 1 --steps 1 --no-memory --dtype bfloat16 --models flux1 --compile
step "ncu, one FLUX launch" 40 ncu.txt ncu --kernel-name regex:gag_fused --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
  "$PY" -c "$FLUX_ONCE"
log "done in $((SECONDS - T0)) s; tables in $OUT"

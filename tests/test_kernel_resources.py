"""The fused kernel compiled ahead of time for sm_80/86/89/90 at every launch class: no spill, shared memory in limit.

No GPU is needed: gag_core.kernels.resources compiles each class with Triton's ptxas and reads the cubin's
registers, stack and local bytes with the cuobjdump of Triton's wheel (skipped when either is missing). The
compiles run in a child process, so this process never imports Triton outside its interpreter (the kernel
tests need the interpreter). Triton's cache keeps the kernels: a rerun without kernel changes reads them back.
KNOWN_SPILLS lists what still spills, with the bytes it may not exceed; docs/gpu.md says why it stays.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gag_core.kernels import resources

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGETS = (80, 86, 89, 90)

# key bucket (keys rounded up to a power of two) -> the most stack + local bytes per thread allowed there:
# 513–1024 keys hold 16 rows × 1024 fp32 logits at 16 warps, 32 registers a thread under a cap of 128
# (docs/gpu.md, "What still spills"); measured 88–112 B on every target.
KNOWN_SPILLS: dict[int, int] = {1024: 128}


def _bucket(keys: int) -> int:
    """The key count's power of two (at least 16): the tile table's unit."""
    return 1 << max(4, (keys - 1).bit_length())


def _tools_missing() -> str | None:
    """Why the compile cannot run here, found without importing Triton."""
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        return "triton is not installed"
    bin_dir = Path(list(spec.submodule_search_locations)[0]) / "backends" / "nvidia" / "bin"
    for tool in ("ptxas", "cuobjdump"):
        if not os.access(bin_dir / tool, os.X_OK):
            return f"no {tool} in Triton's wheel ({bin_dir})"
    return None


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Every quick launch class compiled for every target (one child process): the rows and the wall time."""
    why = _tools_missing()
    if why:
        pytest.skip(why)
    out = tmp_path_factory.mktemp("resources") / "rows.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "GAG_TRITON_INTERPRET")}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "gag_core.kernels.resources", "--targets",
                          ",".join(map(str, TARGETS)), "--json", str(out)],
                         capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=3600)
    if not out.exists():
        pytest.fail(f"the resource sweep wrote nothing (exit {res.returncode}):\n{res.stderr[-4000:]}")
    rows = json.loads(out.read_text())
    print(f"\n{len(rows)} compiles in {time.perf_counter() - t0:.0f} s")
    return rows


def test_quick_classes_cover_what_the_pack_launches():
    """Every family shape, every mode, head_dim 64 and 128, key buckets up to 1024, both dtypes, both methods."""
    classes = resources.launch_classes()
    # one class per compiled kernel: a family shape is covered by any class of its mode, key bucket and head_dim
    assert {(c.mode, _bucket(c.keys), c.head_dim) for c in classes} >= \
        {(m, _bucket(k), d) for _, m, k, d, _ in resources.FAMILY_SHAPES}
    assert {c.mode for c in classes} == set(resources.MODES)
    assert {c.dtype for c in classes} == {"float16", "bfloat16"}
    assert {c.method for c in classes} == {"gag", "pladis"}
    assert {c.mask for c in classes} == {"bool", "add"} and {c.alpha for c in classes} >= {1.5, 1.25}
    for mode in ("cross_dense", "joint"):
        for d in (64, 128):
            assert {_bucket(c.keys) for c in classes if c.mode == mode and c.head_dim == d} >= {256, 512, 1024}
    full = resources.launch_classes(full=True)
    assert {c.keys for c in full} >= set(resources.KEY_BUCKETS) and len(full) > 10 * len(classes)


@pytest.mark.parametrize("cc", TARGETS)
def test_no_spill_and_shared_memory_in_limit(measured, cc):
    rows = [r for r in measured if r["cc"] == cc]
    assert len(rows) == len(resources.launch_classes())
    bad = []
    for r in rows:
        found = resources.problems(r)
        allowed = KNOWN_SPILLS.get(_bucket(r["keys"]))
        if found and allowed is not None and "error" not in r and r["shared"] <= r["smem_limit"] \
                and r["stack"] + r["local"] <= allowed:
            continue
        bad += [f"{r['name']}: {p}" for p in found]
    assert not bad, f"sm_{cc}:\n" + "\n".join(bad)

"""The fused Triton kernel (gag_core.kernels) against gag_core's PyTorch path.

Without a GPU the kernel runs on CPU tensors through Triton's interpreter (GAG_TRITON_INTERPRET=1), at small
shapes; with one, the same tests run compiled on CUDA, and the `gpu` tests add the SDXL and FLUX shapes.

Tolerance, from measured floating-point noise: `noise` is how far gag_core's own path in the test dtype lands
from the float64 reference on the same inputs (at least one unit roundoff of the output's magnitude); the
kernel must land within TOL_FACTOR·noise. Over 300 random interpreter cases (every mode, dtype, method, α,
β, τ) the worst kernel error was 3.6·noise (float32, α = 1.25, whose τ is found to 1e-5 rather than exactly),
so TOL_FACTOR = 8 leaves a margin of two; any real fault is orders of magnitude above it.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import pytest
import torch

import gag_core
from gag_core import kernels

TOL_FACTOR = 8.0
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- fixtures

CHILD_ENV = "GAG_KERNEL_TESTS_CHILD"
IMPORTED_EARLY = "Triton was imported before these tests without its interpreter"


def _interpreter_blocked() -> bool:
    """True when Triton is already imported in compiled mode (e.g. by torch._dynamo), so no interpreter here."""
    return "triton" in sys.modules and not kernels.interpreting()


@pytest.fixture(scope="module")
def device():
    """"cuda" when a GPU is there; else "cpu" with the kernel forced through Triton's interpreter."""
    if torch.cuda.is_available() and os.environ.get(kernels.INTERPRET_ENV) != "1":
        if not kernels.triton_available():
            pytest.skip("triton is not installed")
        yield "cuda"
        return
    if _interpreter_blocked():  # test_interpreter_tests_in_a_fresh_process runs them instead
        pytest.skip(IMPORTED_EARLY + " (rerun in a fresh process below)")
    patch = pytest.MonkeyPatch()
    patch.setenv(kernels.INTERPRET_ENV, "1")
    patch.delenv(kernels.DISABLE_ENV, raising=False)
    if not kernels.triton_available():
        patch.undo()
        pytest.skip(f"triton is not installed ({kernels._loaded.get('error')})")
    if not kernels.interpreting():
        patch.undo()
        pytest.skip(IMPORTED_EARLY)
    yield "cpu"
    patch.undo()


@pytest.fixture(autouse=True)
def fresh_self_check(monkeypatch):
    """Every test starts with no kernel class checked yet."""
    monkeypatch.setattr(gag_core.attention, "_trust", {})
    monkeypatch.setattr(gag_core.attention, "_check_log", [])


def reference(fn, *args, **kwargs):
    """Run a gag_core function on its PyTorch path (the kernel switched off)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(kernels.DISABLE_ENV, "1")
        return fn(*args, **kwargs)


def randn(gen, shape, dtype, device, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)


def poisoned(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def assert_matches(out, ref64, ref_dtype, poison):
    """Every element written (no NaN poison left), and within TOL_FACTOR × the measured noise of ref64."""
    assert out is not None, "the fast path did not run"
    assert out.data_ptr() == poison.data_ptr()
    assert bool(torch.isfinite(out).all()), f"{int((~torch.isfinite(out)).sum())} elements left unwritten"
    unit = UNIT_ROUNDOFF[out.dtype] * float(ref64.abs().max())
    noise = max(float((ref_dtype.double() - ref64).abs().max()), unit)
    err = float((out.double() - ref64).abs().max())
    assert err <= TOL_FACTOR * noise, f"kernel error {err:.3e} > {TOL_FACTOR} × noise {noise:.3e}"


def random_params(rng: random.Random, method: str) -> dict:
    """λ, β, τ as users set them; τ sometimes small enough that the cap bites, sometimes off."""
    scale = rng.uniform(2.0, 10.0) if method == "gag" else rng.uniform(1.0, 3.0)
    return {"scale": scale, "beta": rng.choice([0.0, 1.0, rng.uniform(0.0, 1.0)]),
            "tau": rng.choice([None, 0.0, rng.uniform(0.2, 3.0), 15.0])}


def run_cross(device, dtype, *, seed, method="gag", alpha=1.5, b=1, h=2, n=37, m=19, d=32, dv=None, mask=None,
              dense_given=False, params=None, logit_scale=1.0):
    """Kernel vs reference for one cross-attention case; returns the kernel output."""
    gen = torch.Generator().manual_seed(seed)
    dv = d if dv is None else dv
    q = randn(gen, (b, h, n, d), dtype, device, logit_scale)
    k = randn(gen, (b, h, m, d), dtype, device)
    v = randn(gen, (b, h, m, dv), dtype, device)
    kw = dict(method=method, alpha=alpha, **(params or random_params(random.Random(seed), method)))
    o_d = reference(gag_core.sparse_dense_attention, q, k, v, alpha=alpha, mask=mask)[1] if dense_given else None
    out = poisoned((b, h, n, dv), dtype, device)
    res = kernels.fused_cross_attention(q, k, v, mask=mask, o_dense=o_d, out=out, **kw)
    m64 = mask.double() if mask is not None and mask.dtype != torch.bool else mask
    ref64 = reference(gag_core.gag_attention, q.double(), k.double(), v.double(), mask=m64,
                      dense=(lambda *_: o_d.double()) if dense_given else None, **kw)
    ref_dt = reference(gag_core.gag_attention, q, k, v, mask=mask, dense=(lambda *_: o_d) if dense_given else None,
                       **kw)
    assert_matches(res, ref64, ref_dt, out)
    return res


def run_joint(device, dtype, *, seed, text_range, method="gag", alpha=1.5, b=1, h=2, length=48, d=32, mask=None,
              params=None):
    """Kernel vs reference for one joint-attention case (dense output and lse from gag_core, as the host's)."""
    gen = torch.Generator().manual_seed(seed)
    q = randn(gen, (b, h, length, d), dtype, device, 1.5)
    k = randn(gen, (b, h, length, d), dtype, device)
    v = randn(gen, (b, h, length, d), dtype, device)
    params = params or random_params(random.Random(seed), method)
    kw = dict(method=method, alpha=alpha, text_range=text_range, **params)
    o_d, lse = reference(gag_core.dense_attention_with_lse, q, k, v, mask)
    out = poisoned((b, h, length, d), dtype, device)
    res = kernels.fused_joint_attention(q, k, v, lse=lse, o_dense=o_d, mask=mask, out=out, **kw)
    m64 = mask.double() if mask is not None and mask.dtype != torch.bool else mask
    ref64 = reference(gag_core.joint_gag_attention, q.double(), k.double(), v.double(), mask=m64,
                      dense=lambda *_: (o_d.double(), lse.double()), **kw)
    ref_dt = reference(gag_core.joint_gag_attention, q, k, v, mask=mask, dense=lambda *_: (o_d, lse), **kw)
    assert_matches(res, ref64, ref_dt, out)
    s, e = text_range
    assert torch.equal(res[:, :, s:e], o_d[:, :, s:e]), "text rows must keep the dense output"
    return res


# ----------------------------------------------------------------------------------------------- cross-attention

@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
@pytest.mark.parametrize("method", ["gag", "pladis"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cross_matches_reference(device, dtype, method, alpha):
    seed = zlib.crc32(f"{dtype} {method} {alpha}".encode())
    rng = random.Random(seed)
    d = rng.choice([16, 32, 40, 64])
    run_cross(device, dtype, seed=seed, method=method, alpha=alpha, b=rng.randint(1, 2), h=rng.randint(1, 3),
              n=rng.randint(1, 70), m=rng.randint(1, 90), d=d, dv=rng.choice([d, 24]),
              logit_scale=rng.choice([0.5, 1.0, 2.0]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cross_with_host_dense_output(device, dtype):
    rng = random.Random(7)
    run_cross(device, dtype, seed=7 + DTYPES.index(dtype), n=rng.randint(20, 60), m=rng.randint(5, 77),
              dense_given=True)


@pytest.mark.parametrize("kind", ["bool_keys", "bool_full", "additive", "additive_rows"])
def test_cross_masks(device, kind):
    gen = torch.Generator().manual_seed(11)
    b, h, n, m = 2, 2, 29, 23
    if kind == "bool_keys":  # key padding, broadcast over heads and queries
        mask = torch.rand((b, 1, 1, m), generator=gen) > 0.3
        mask[..., 0] = True
    elif kind == "bool_full":  # per element, with one fully masked query row (must give 0, never NaN)
        mask = torch.rand((b, h, n, m), generator=gen) > 0.5
        mask[0, 1, 3] = False
    elif kind == "additive":  # float bias with −inf entries, broadcast from (M,)
        mask = torch.randn((m,), generator=gen)
        mask[::4] = float("-inf")
    else:  # additive (N, M) bias
        mask = torch.randn((n, m), generator=gen)
    res = run_cross(device, torch.float32, seed=12, b=b, h=h, n=n, m=m, mask=mask.to(device))
    if kind == "bool_full":
        assert torch.equal(res[0, 1, 3], torch.zeros_like(res[0, 1, 3]))


def test_cross_keeps_layout_and_values_of_strided_inputs(device):
    """(B, N, H, D) tensors viewed as (B, H, N, D), as ComfyUI passes them: same values, output in that layout."""
    gen = torch.Generator().manual_seed(3)
    b, h, n, m, d = 1, 3, 40, 21, 32
    q = randn(gen, (b, n, h, d), torch.float16, device).transpose(1, 2)
    k = randn(gen, (b, m, h, d), torch.float16, device).transpose(1, 2)
    v = randn(gen, (b, m, h, d), torch.float16, device).transpose(1, 2)
    kw = dict(method="gag", scale=6.0, beta=0.3, tau=2.0, alpha=1.5)
    strided = kernels.fused_cross_attention(q, k, v, **kw)
    dense = kernels.fused_cross_attention(q.contiguous(), k.contiguous(), v.contiguous(), **kw)
    assert strided is not None and strided.stride() == q.stride()
    assert torch.equal(strided, dense)


# ----------------------------------------------------------------------------------------------- joint attention

@pytest.mark.parametrize("where", ["text_first", "text_middle", "text_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_joint_matches_reference(device, dtype, where):
    seed = zlib.crc32(f"{dtype} {where}".encode())
    rng = random.Random(seed)
    length, t = rng.randint(30, 64), rng.randint(3, 20)
    start = {"text_first": 0, "text_middle": rng.randint(1, length - t - 1), "text_last": length - t}[where]
    run_joint(device, dtype, seed=seed, text_range=(start, start + t), length=length,
              method=rng.choice(["gag", "pladis"]), alpha=rng.choice([1.5, 2.0, 1.25]), h=rng.randint(1, 3))


def test_joint_with_mask(device):
    gen = torch.Generator().manual_seed(5)
    length, text = 40, (0, 12)
    mask = torch.rand((1, 1, length, length), generator=gen) > 0.2
    mask[..., 0] = True  # every row keeps a key (the dense lse is finite)
    mask[0, 0, 20, : text[1]] = False  # an image row that sees no text: guidance leaves it dense
    res = run_joint(device, torch.float32, seed=6, text_range=text, length=length, mask=mask.to(device),
                    params={"scale": 5.0, "beta": 0.5, "tau": 2.0})
    assert res is not None


@pytest.mark.parametrize("kind", ["cross", "cross_dense_given", "joint"])
def test_guidance_stats_match_the_pytorch_path(device, kind):
    """With a GuidanceStats the kernel reports the sums gag_combine would (the web chart keeps the fast path)."""
    gen = torch.Generator().manual_seed(31)
    n = 40
    q, k, v = (randn(gen, (1, 2, n, 32), torch.float32, device) for _ in range(3))
    kw = dict(method="gag", scale=6.0, beta=0.4, tau=1.5, alpha=1.5)
    fast, slow = gag_core.GuidanceStats(), gag_core.GuidanceStats()
    if kind == "joint":
        o_d, lse = reference(gag_core.dense_attention_with_lse, q, k, v)
        kw.update(text_range=(0, 10), tau=0.3)  # joint updates are smaller: a lower cap so some rows hit it
        res = kernels.fused_joint_attention(q, k, v, lse=lse, o_dense=o_d, stats=fast, **kw)
        reference(gag_core.joint_gag_attention, q, k, v, dense=lambda *_: (o_d, lse), stats=slow, **kw)
    else:
        k, v = k[:, :, :17], v[:, :, :17]
        o_d = reference(gag_core.sparse_dense_attention, q, k, v)[1] if kind == "cross_dense_given" else None
        res = kernels.fused_cross_attention(q, k, v, o_dense=o_d, stats=fast, **kw)
        reference(gag_core.gag_attention, q, k, v, dense=(lambda *_: o_d) if o_d is not None else None,
                  stats=slow, **kw)
    assert res is not None
    assert fast.tokens == slow.tokens > 0 and fast.capped == slow.capped > 0
    for name in ("rel_guidance_sum", "parallel_energy", "orthogonal_energy"):
        assert getattr(fast, name) == pytest.approx(getattr(slow, name), rel=1e-4), name


# ----------------------------------------------------------------------------------------------- entmax exactness

@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
@pytest.mark.parametrize("logits", ["flat", "normal", "spread", "ties"])
def test_kernel_entmax_rows_are_exact(device, alpha, logits):
    """With q = logits, k = √D·I and v = I, PLADIS s = 1 writes E = α-entmax(z) and s = 0 writes softmax(z)."""
    gen = torch.Generator().manual_seed(21)
    n, m, d = 24, 32, 32
    scale = {"flat": 0.01, "normal": 1.0, "spread": 30.0, "ties": 1.0}[logits]
    z = torch.randn((1, 1, n, m), generator=gen, dtype=torch.float64) * scale
    if logits == "ties":
        z = z.round()  # many exactly equal logits, some right at the threshold
    q = z.float().to(device)
    k = (torch.eye(m, d, dtype=torch.float32) * d**0.5).expand(1, 1, m, d).to(device)
    v = torch.eye(m, d, dtype=torch.float32).expand(1, 1, m, d).to(device)
    kw = dict(method="pladis", beta=0.0, tau=None, alpha=alpha)
    ent = kernels.fused_cross_attention(q, k, v, scale=1.0, **kw)
    soft = kernels.fused_cross_attention(q, k, v, scale=0.0, **kw)
    z64 = (q.double() @ k.double().transpose(-1, -2)) * d**-0.5
    z32 = (q * d**-0.5) @ k.transpose(-1, -2)  # gag_core's float32 logits, rounded like the kernel's
    e_ref, s_ref = gag_core.entmax_reference(z64, alpha), torch.softmax(z64, -1)
    # noise: the entmax package's / torch's float32 results against float64, at least 1 ulp of 1
    entmax_pkg = pytest.importorskip("entmax", reason="the entmax package is the independent oracle here")
    unit = 2.0**-24
    e32 = {1.5: entmax_pkg.entmax15, 2.0: entmax_pkg.sparsemax}.get(alpha)
    e32 = e32(z32, dim=-1) if e32 else entmax_pkg.entmax_bisect(z32, alpha, dim=-1)
    noise = max(float((e32.double() - e_ref).abs().max()), unit)
    assert float((ent.double() - e_ref).abs().max()) <= TOL_FACTOR * noise
    noise = max(float((torch.softmax(z32, -1).double() - s_ref).abs().max()), unit)
    assert float((soft.double() - s_ref).abs().max()) <= TOL_FACTOR * noise
    if alpha in (1.5, 2.0):  # exact finish: the support is the reference's away from the threshold
        assert torch.equal(ent[e_ref > 1e-5] > 0, e_ref[e_ref > 1e-5] > 0)
        assert bool((ent[e_ref == 0] <= 1e-6).all())


# ----------------------------------------------------------------------------------------------- fallback

def _small(device="cpu", dtype=torch.float32, n=8, m=5, d=16):
    gen = torch.Generator().manual_seed(1)
    return tuple(randn(gen, (1, 2, length, d), dtype, device) for length in (n, m, m))


KW = dict(method="gag", scale=5.0, beta=0.0, tau=15.0, alpha=1.5)


def test_disable_env_forces_fallback(device, monkeypatch):
    q, k, v = _small(device)
    assert kernels.fused_cross_attention(q, k, v, **KW) is not None
    monkeypatch.setenv(kernels.DISABLE_ENV, "1")
    assert kernels.fused_cross_attention(q, k, v, **KW) is None
    assert kernels.unsupported_reason_cross(q, k, v, **KW) == f"{kernels.DISABLE_ENV}=1"


def test_cpu_tensors_fall_back_without_interpreter_switch(monkeypatch):
    monkeypatch.delenv(kernels.INTERPRET_ENV, raising=False)
    q, k, v = _small()
    assert kernels.fused_cross_attention(q, k, v, **KW) is None
    assert "CPU tensors" in kernels.unsupported_reason_cross(q, k, v, **KW)


@pytest.mark.parametrize("case, expected", [
    ("float64", "dtype"), ("head_dim_300", "head_dim"), ("keys_1025", "keys"), ("alpha_1", "alpha"),
    ("alpha_2.5", "alpha"), ("mask_int", "mask dtype"), ("mask_shape", "broadcast"), ("requires_grad", "grad"), ("q_not_4d", "4-D"),
    ("dense_shape", "o_dense"), ("out_dtype", "out"),
])
def test_unsupported_inputs_fall_back(device, case, expected):
    q, k, v = _small(device)
    kw = dict(KW)
    extra = {}
    if case == "float64":
        q, k, v = q.double(), k.double(), v.double()
    elif case == "head_dim_300":
        q, k, v = _small(device, d=300)
    elif case == "keys_1025":
        q, k, v = _small(device, m=1025)
    elif case == "alpha_1":
        kw["alpha"] = 1.0
    elif case == "alpha_2.5":
        kw["alpha"] = 2.5
    elif case == "mask_int":
        extra["mask"] = torch.ones((1, 1, 1, 5), dtype=torch.int32, device=device)
    elif case == "mask_shape":
        extra["mask"] = torch.ones((3, 5), dtype=torch.bool, device=device)
    elif case == "requires_grad":
        q = q.clone().requires_grad_(True)
    elif case == "q_not_4d":
        q = q[0]
    elif case == "dense_shape":
        extra["o_dense"] = torch.zeros((1, 2, 7, 16), device=device)
    elif case == "out_dtype":
        extra["out"] = torch.zeros((1, 2, 8, 16), dtype=torch.float16, device=device)
    reason = kernels.unsupported_reason_cross(q, k, v, **kw, **extra)
    assert reason is not None and expected in reason, reason
    assert kernels.fused_cross_attention(q, k, v, **kw, **extra) is None


@pytest.mark.parametrize("case, expected", [
    ("too_much_text", "text keys"), ("lse_shape", "lse"), ("dense_missing", "o_dense"),
])
def test_unsupported_joint_inputs_fall_back(device, case, expected):
    length = 1030 if case == "too_much_text" else 12
    q, k, v = _small(device, n=length, m=length)
    lse = torch.zeros((1, 2, length), device=device)
    o_d = torch.zeros((1, 2, length, 16), device=device)
    text = (0, 1029) if case == "too_much_text" else (0, 4)
    if case == "lse_shape":
        lse = lse[..., :-1]
    if case == "dense_missing":
        o_d = None
    kw = dict(KW, text_range=text, lse=lse, o_dense=o_d)
    reason = kernels.unsupported_reason_joint(q, k, v, **kw)
    assert reason is not None and expected in reason, reason
    assert kernels.fused_joint_attention(q, k, v, **kw) is None


def test_missing_triton_falls_back(device, monkeypatch):
    monkeypatch.setattr(kernels, "_loaded", {"module": None, "error": "ImportError: No module named 'triton'"})
    q, k, v = _small(device)
    assert kernels.fused_cross_attention(q, k, v, **KW) is None
    assert "triton unavailable" in kernels.unsupported_reason_cross(q, k, v, **KW)


def test_kernel_that_raises_falls_back_with_a_warning(device, monkeypatch):
    class Broken:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise RuntimeError("out of resources: shared memory")
            return launch

    module = kernels._load()
    monkeypatch.setattr(module, "gag_fused_kernel", Broken())
    monkeypatch.setattr(kernels, "interpreting", lambda: device == "cpu")
    monkeypatch.setattr(kernels, "_failed", set())
    q, k, v = _small(device)
    with pytest.warns(RuntimeWarning, match="out of resources"):
        assert kernels.fused_cross_attention(q, k, v, **KW) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # remembered: no second warning, no second try
        assert kernels.fused_cross_attention(q, k, v, **KW) is None


def test_import_gag_core_without_triton():
    """With `import triton` failing, gag_core imports and the fast path just declines."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('triton blocked for this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.path.append({str(REPO_ROOT)!r})\n"
        "import torch, gag_core\n"
        "from gag_core import kernels\n"
        "q = torch.randn(1, 2, 8, 16); k = torch.randn(1, 2, 5, 16)\n"
        "kw = dict(method='gag', scale=5.0, beta=0.0, tau=15.0, alpha=1.5)\n"
        "assert kernels.fused_cross_attention(q, k, k, **kw) is None\n"
        "print(kernels.unsupported_reason_cross(q, k, k, **kw))\n"
        "out = gag_core.gag_attention(q, k, k, **kw)\n"
        "assert out.shape == (1, 2, 8, 16)\n"
    )
    env = dict(os.environ, GAG_TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env.pop("GAG_DISABLE_TRITON", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "triton unavailable" in res.stdout


# ----------------------------------------------------------------------------------------------- dispatch

def test_gag_attention_dispatches_to_the_kernel_and_back(device, monkeypatch):
    calls = []
    real = kernels.fused_cross_attention

    def spy(*args, **kwargs):
        res = real(*args, **kwargs)
        calls.append(res is not None)
        return res

    monkeypatch.setattr(kernels, "fused_cross_attention", spy)
    q, k, v = _small(device, n=20, m=9, d=32)
    fast = gag_core.gag_attention(q, k, v, **KW)
    assert calls == [True, True]  # the self-check on a slice, then the call
    assert torch.equal(gag_core.gag_attention(q, k, v, **KW), fast) and calls == [True, True, True]
    assert torch.equal(fast, real(q, k, v, **KW))
    monkeypatch.setenv(kernels.DISABLE_ENV, "1")
    slow = gag_core.gag_attention(q, k, v, **KW)
    assert len(calls) == 3  # not called with the kernel disabled
    ref64 = gag_core.gag_attention(q.double(), k.double(), v.double(), **KW)
    assert_matches(fast, ref64, slow, fast)


def test_joint_gag_attention_dispatches_to_the_kernel(device, monkeypatch):
    calls = []
    real = kernels.fused_joint_attention

    def spy(*args, **kwargs):
        res = real(*args, **kwargs)
        calls.append(res is not None)
        return res

    monkeypatch.setattr(kernels, "fused_joint_attention", spy)
    q, k, v = _small(device, n=30, m=30, d=32)
    kw = dict(KW, text_range=(0, 8))
    fast = gag_core.joint_gag_attention(q, k, v, **kw)
    assert calls == [True, True]  # the self-check on a slice, then the call
    slow = reference(gag_core.joint_gag_attention, q, k, v, **kw)
    ref64 = reference(gag_core.joint_gag_attention, q.double(), k.double(), v.double(), **kw)
    assert_matches(fast, ref64, slow, fast)


def test_joint_kernel_with_the_dense_text_mass_of_a_chained_kernel(device):
    """m from the text-mass channel of a dense callback (no row lse given) feeds the kernel like the lse does."""
    import torch.nn.functional as F

    q, k, v = _small(device, n=30, m=30, d=32)
    kw = dict(KW, text_range=(4, 12))
    sdpa = lambda q_, k_, v_, m_: F.scaled_dot_product_attention(q_, k_, v_, attn_mask=m_)  # noqa: E731
    fast = gag_core.joint_gag_attention(q, k, v, dense=sdpa, dense_text_mass=True, **kw)
    slow = reference(gag_core.joint_gag_attention, q, k, v, **kw)
    ref64 = reference(gag_core.joint_gag_attention, q.double(), k.double(), v.double(), **kw)
    assert_matches(fast, ref64, slow, fast)


# ----------------------------------------------------------------------------------------------- self-check

def _spy_kernel(monkeypatch, name, transform):
    """Replace kernels.`name` by transform(real, *args, **kwargs); return the list of calls made."""
    calls = []
    real = getattr(kernels, name)

    def fake(*args, **kwargs):
        calls.append(args[0].shape[2])
        return transform(real, *args, **kwargs)

    monkeypatch.setattr(kernels, name, fake)
    return calls


def _corrupt(real, *args, **kwargs):
    out = real(*args, **kwargs)
    return out * 1.02  # a 2 % error: what a miscompiled tile or a wrong stride would give, and far less


def _raise(real, *args, **kwargs):
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


@pytest.mark.parametrize("fault", [_corrupt, _raise], ids=["corrupted", "raising"])
@pytest.mark.parametrize("kind", ["cross", "joint"])
def test_self_check_catches_a_bad_kernel_once(device, monkeypatch, caplog, kind, fault):
    """A kernel that is wrong or raises on its first call: one warning, the PyTorch result, and the PyTorch
    path for that class from then on (the kernel is not even called again)."""
    name = "fused_cross_attention" if kind == "cross" else "fused_joint_attention"
    calls = _spy_kernel(monkeypatch, name, fault)
    q, k, v = _small(device, n=40, m=40 if kind == "joint" else 13, d=32)
    fn = gag_core.gag_attention if kind == "cross" else gag_core.joint_gag_attention
    kw = dict(KW) if kind == "cross" else dict(KW, text_range=(0, 10))
    want = reference(fn, q, k, v, **kw)
    with caplog.at_level("WARNING", logger="gag_core"):
        assert torch.equal(fn(q, k, v, **kw), want)
        assert torch.equal(fn(q, k, v, **kw), want)
    assert calls == [gag_core.attention.SELF_CHECK_ROWS]  # only the slice, only once
    warned = [r for r in caplog.records if "PyTorch path for this class" in r.getMessage()]
    assert len(warned) == 1
    assert ("disagrees" if fault is _corrupt else "illegal memory access") in warned[0].getMessage()
    report = gag_core.kernel_self_check_report()
    assert all(not r["ok"] for r in report) and len(report) == (1 if fault is _corrupt else 0)


def test_self_check_passes_a_correct_kernel_with_margin(device):
    """The real kernel passes its self-check with its error well below the tolerance, at a small cost."""
    for dtype in DTYPES:
        q, k, v = _small(device, dtype=dtype, n=40, m=13, d=32)
        gag_core.gag_attention(q, k, v, **KW)
        q, k, v = _small(device, dtype=dtype, n=40, m=40, d=32)
        gag_core.joint_gag_attention(q, k, v, **dict(KW, text_range=(0, 10)))
    report = gag_core.kernel_self_check_report()
    assert len(report) == 2 * len(DTYPES) and all(r["ok"] for r in report)
    assert max(r["error"] / r["tolerance"] for r in report) < 0.5


def test_interpreter_tests_in_a_fresh_process():
    """When something (torch._dynamo imports Triton) made the interpreter unavailable here, run this file anew."""
    if os.environ.get(CHILD_ENV) == "1":
        pytest.skip("already the fresh process")
    if torch.cuda.is_available() or not _interpreter_blocked():
        pytest.skip("the kernel tests ran in this process")
    env = dict(os.environ, **{CHILD_ENV: "1", kernels.INTERPRET_ENV: "1"})
    env.pop(kernels.DISABLE_ENV, None)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))],
                         capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and IMPORTED_EARLY not in res.stdout, res.stdout[-3000:]


# ----------------------------------------------------------------------------------------------- GPU, full shapes

@pytest.mark.gpu
@pytest.mark.parametrize("heads, n", [(10, 4096), (20, 1024)])
@pytest.mark.parametrize("method", ["gag", "pladis"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_sdxl_cross_attention(dtype, method, heads, n):
    """SDXL cross-attention shapes (B = 2, M = 77, D = 64), dense computed in the kernel and given by the host."""
    params = {"scale": 7.0 if method == "gag" else 2.0, "beta": 0.0, "tau": 15.0}
    for dense_given in (False, True):
        run_cross("cuda", dtype, seed=heads + n, method=method, b=2, h=heads, n=n, m=77, d=64,
                  dense_given=dense_given, params=params, logit_scale=2.0)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["gag", "pladis"])
def test_gpu_flux_joint_attention(method):
    """FLUX joint attention: 512 text + 4096 image tokens, 24 heads, D = 128, bfloat16."""
    params = {"scale": 5.0 if method == "gag" else 2.0, "beta": 0.0, "tau": 15.0}
    run_joint("cuda", torch.bfloat16, seed=1, text_range=(0, 512), method=method, b=1, h=24, length=4608,
              d=128, params=params)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [256, 1000, 1024])
def test_gpu_many_keys(m):
    """The largest key counts the kernel takes, with masks."""
    gen = torch.Generator().manual_seed(m)
    mask = (torch.rand((2, 1, 1, m), generator=gen) > 0.2).cuda()
    run_cross("cuda", torch.float16, seed=m, b=2, h=4, n=1000, m=m, d=128, mask=mask)

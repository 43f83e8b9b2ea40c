"""GAG and PLADIS in the graphs users build: stacked with the host's model-patching nodes (both orders), under
TorchCompileModel, under other packs' attention replacements, and with stand-ins for third-party mechanisms.

Each stack runs on a tiny seeded model through ComfyUI's sampler and must keep GAG's effect (the stack differs
from the other node alone, and the run guided attention calls) and the other node's effect (the stack differs
from GAG alone, wherever that node changes the output at all). With GAG_COMPAT_REPORT=<path> the relative
change GAG makes on top of each node (‖stack − other‖ / ‖other‖) is appended there as JSON lines
(docs/compatibility.md). The stand-ins are written from reading each pack's code, none is copied:
- IP-Adapter (cubiq/ComfyUI_IPAdapter_plus): attn2 replaced; text attention through optimized_attention(q, k, v,
  heads) without transformer_options, plus attention over image-prompt tokens with the adapter's own k/v,
  weighted and added; on FLUX a "dit" double-block replacement that adds the same to the image stream;
- sd-perturbed-attention's PLADIS: attn2 replaced by dense + s·(sparse − dense);
- SageAttention patches (KJNodes): an optimized_attention_override that runs its own kernel, ignoring ComfyUI's;
- GGUF loaders: custom weight operations (weights dequantized in each forward);
- a model class from another pack, and a Nunchaku-style transformer (its own attention): both pass through.
TorchCompileModel runs with dynamo's "eager" backend here (what breaks is tracing and guards, not code
generation; inductor takes minutes on 2 cores): benchmarks/bench_compile.py measures inductor.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

import pytest
import torch

from test_comfyui_tiny import EXPECTED_BLOCKS, comfy  # noqa: F401  (fixture)

pytestmark = pytest.mark.comfyui

ADV = "GeometryAwareAttentionGuidanceAdvanced"
NOT_GUIDED = "was not guided at all"
REPORT = os.environ.get("GAG_COMPAT_REPORT")


# ----------------------------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def host(comfy):  # noqa: F811
    """The comfy fixture with ComfyUI's built-in extra nodes (comfy_extras) loaded."""
    if "TorchCompileModel" not in comfy.nodes.NODE_CLASS_MAPPINGS:
        asyncio.run(comfy.nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    return comfy


def pack_module(comfy, name: str):  # noqa: F811
    return sys.modules[comfy.patch.__name__.rsplit(".", 2)[0] + "." + name]


class Runs:
    """The run checks of the sampling runs inside a `with`: guided calls and passes per run, messages logged."""

    def __init__(self, comfy, monkeypatch):  # noqa: F811
        self.runs: list[dict] = []
        run_check = pack_module(comfy, "nodes.run_check")
        original = run_check.RunWatch.report
        runs = self.runs

        def report(watch, tally, compiled=None, node_key=None):
            message = original(watch, tally, compiled, node_key)
            runs.append(dict(routed=tally.routed, passes=tally.passes, compiled=compiled, message=message,
                             replaced=dict(tally.replaced)))
            return message

        monkeypatch.setattr(run_check.RunWatch, "report", report)

    @property
    def last(self) -> dict:
        return self.runs[-1]


def gag(comfy, model, **kw):  # noqa: F811
    inputs = dict(method="gag", scale=5.0, beta=0.0, tau=15.0, alpha=1.5, start_percent=0.0, end_percent=1.0,
                  blocks="auto")
    inputs.update(kw)
    return comfy.run_node(ADV, model=model, **inputs)


def pladis(comfy, model, scale=2.0):  # noqa: F811
    return comfy.run_node("PLADISGuidance", model=model, scale=scale)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖."""
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def record(**row) -> None:
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps(row) + "\n")


def unet_attn2_blocks(model):
    """(block name, number) of every attn2 of a UNet, as set_model_attn2_replace names them."""
    out = []
    for name, module in model.model.diffusion_model.named_modules():
        if type(module).__name__ == "CrossAttention" and name.endswith("attn2"):
            parts = name.split(".")
            group = parts[0].split("_")[0]
            number = int(parts[1]) - (1 if group == "middle" else 0)
            out.append((group, number))
    return out


# ----------------------------------------------------------------------------------------------- stand-ins

class ImagePromptAttention:
    """IP-Adapter-like: text attention (optimized_attention without transformer_options) + weight · attention
    over `tokens` image-prompt tokens through the adapter's own k/v projections (one pair per width)."""

    def __init__(self, weight: float = 1.0, tokens: int = 4, seed: int = 5):
        self.weight, self.tokens, self.seed = weight, tokens, seed
        self.layers: dict[int, tuple] = {}
        self.calls = 0

    def kv(self, dim: int, batch: int):
        if dim not in self.layers:
            gen = torch.Generator().manual_seed(self.seed + dim)
            embeds = torch.randn(1, self.tokens, 16, generator=gen)
            wk, wv = (torch.randn(16, dim, generator=gen) * 2.0 for _ in range(2))
            self.layers[dim] = (embeds @ wk, embeds @ wv)
        k, v = self.layers[dim]
        return k.expand(batch, -1, -1), v.expand(batch, -1, -1)

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        self.calls += 1
        heads = extra_options["n_heads"]
        out = optimized_attention(q, k, v, heads)  # text attention, no transformer_options: no override sees it
        ip_k, ip_v = self.kv(q.shape[-1], q.shape[0])
        return (out + self.weight * optimized_attention(q, ip_k, ip_v, heads)).to(q.dtype)


def with_image_prompt(model, weight: float = 1.0):
    """A clone with every attn2 (UNet) replaced by an ImagePromptAttention, or (FLUX) every double block wrapped
    so that image-prompt attention is added to the image stream after the block."""
    patched = model.clone()
    fn = ImagePromptAttention(weight)
    if type(patched.model.diffusion_model).__name__ == "UNetModel":
        for group, number in unet_attn2_blocks(patched):
            patched.set_model_attn2_replace(fn, group, number)
        return patched, fn
    heads = patched.model.diffusion_model.num_heads

    def block(args, extra):
        from comfy.ldm.modules.attention import optimized_attention

        out = extra["original_block"](args)
        img = out["img"]
        ip_k, ip_v = fn.kv(img.shape[-1], img.shape[0])
        fn.calls += 1
        out["img"] = img + fn.weight * optimized_attention(img, ip_k, ip_v, heads)
        return out

    for i in range(len(patched.model.diffusion_model.double_blocks)):
        patched.set_model_patch_replace(block, "dit", "double_block", i)
    return patched, fn


def pladis_attention_wrapper(comfy, scale: float = 2.0):  # noqa: F811
    """sd-perturbed-attention-like PLADIS replacement: dense + s·(α-entmax attention − dense)."""
    entmax = pack_module(comfy, "gag_core.entmax").entmax

    def _pladis_attention(q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        heads = extra_options["n_heads"]
        dense = optimized_attention(q, k, v, heads)
        b, n, c = q.shape
        d = c // heads
        qh, kh, vh = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
        sparse = entmax(qh @ kh.transpose(-1, -2) * d ** -0.5, 1.5) @ vh
        return dense + scale * (sparse.transpose(1, 2).reshape(b, n, c) - dense)

    return _pladis_attention


def with_sage_like_override(model):
    """SageAttention-patch-like: an optimized_attention_override that runs its own kernel (q and k rounded to
    bfloat16, then SDPA), never the one ComfyUI chose."""
    def sage_like(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                  skip_output_reshape=False, **kwargs):
        if not skip_reshape:
            b, _, c = q.shape
            q, k, v = (t.reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))
        q, k = q.to(torch.bfloat16).to(v.dtype), k.to(torch.bfloat16).to(v.dtype)
        m = None if mask is None else (mask[:, None] if mask.ndim == 3 else mask)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)
        return out if skip_output_reshape else out.transpose(1, 2).reshape(out.shape[0], -1, heads * out.shape[-1])

    patched = model.clone()
    options = dict(patched.model_options.get("transformer_options", {}))
    options["optimized_attention_override"] = sage_like
    patched.model_options["transformer_options"] = options
    return patched


def build_with_custom_ops(host, family: str, seed: int = 0):
    """GGUF-loader-like: the tiny model built with custom weight operations whose Linear and Conv2d dequantize a
    4-bit copy of their weight in each forward (comfy's `custom_operations` hook, as GGUF loaders use it)."""
    import comfy.ops
    from test_comfyui_tiny import CONFIGS

    def dequantized(w):
        s = w.abs().amax().clamp_min(1e-8) / 7.0
        return (w / s).round().clamp(-8, 7) * s

    class QuantOps(comfy.ops.disable_weight_init):
        class Linear(comfy.ops.disable_weight_init.Linear):
            def forward(self, x):
                return torch.nn.functional.linear(x, dequantized(self.weight).to(x.dtype),
                                                  None if self.bias is None else self.bias.to(x.dtype))

        class Conv2d(comfy.ops.disable_weight_init.Conv2d):
            def forward(self, x):
                return self._conv_forward(x, dequantized(self.weight).to(x.dtype),
                                          None if self.bias is None else self.bias.to(x.dtype))

    cls_name, config = CONFIGS[family]
    model_config = getattr(host.supported_models, cls_name)(config)
    model_config.set_inference_dtype(torch.float32, None)
    model_config.custom_operations = QuantOps
    reference = host.build(family, seed)
    base = model_config.get_model({})
    base.diffusion_model.load_state_dict(reference.model.diffusion_model.state_dict())
    base.diffusion_model.eval()
    cpu = torch.device("cpu")
    return host.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)


# ----------------------------------------------------------------------------------------------- TorchCompileModel

@pytest.mark.slow
@pytest.mark.parametrize("family", ("sd15", "sdxl", "flux1"))
def test_guidance_acts_under_torch_compile_model_in_both_orders(host, monkeypatch, family):
    """The compiled baseline is traced first (the case where every graph used to be replayed unguided); GAG and
    PLADIS after and before TorchCompileModel then equal their eager results within float noise."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    runs = Runs(host, monkeypatch)
    torch._dynamo.reset()  # no graph of an earlier test; dynamo's default recompile limit, as in ComfyUI
    try:
        _compiled_checks(host, runs, family, counters)
    finally:
        torch._dynamo.reset()


def _compiled_checks(host, runs, family, counters):
    base = host.build(family)
    eager = {"gag": prompt_sample(host, gag(host, base), family),
             "pladis": prompt_sample(host, pladis(host, base), family)}

    def compiled(m):
        return host.run_node("TorchCompileModel", model=m, backend="eager")

    compiled_base = compiled(base)
    plain = prompt_sample(host, compiled_base, family)
    assert rel(plain, prompt_sample(host, base, family)) < NOISE
    # GAG and PLADIS on the compiled model (the baseline's graphs exist), and GAG compiled by a later node
    cases = (("gag", "after", gag(host, compiled_base)), ("pladis", "after", pladis(host, compiled_base)),
             ("gag", "before", compiled(gag(host, base))))
    for method, order, model in cases:
        counters.clear()
        out = prompt_sample(host, model, family)
        run = runs.last
        if (method, order) == ("gag", "after"):  # the guided passes were traced anew, not replayed
            breaks = sum(n for reason, n in counters["graph_break"].items() if "GuidedAttention" in reason)
            assert counters["stats"]["unique_graphs"] > 0 and breaks > 0, dict(counters["graph_break"])
        assert run["compiled"] and run["routed"] > 0 and run["message"] is None, (method, order, run)
        assert rel(out, eager[method]) < NOISE, (method, order, rel(out, eager[method]))
        assert rel(out, plain) > 10 * NOISE, (method, order)
    if family != "sd15":
        return
    # settings changed between runs reach the compiled model (nothing is frozen into a graph)
    weaker = prompt_sample(host, gag(host, compiled_base, scale=1.0), family)
    assert rel(weaker, prompt_sample(host, gag(host, base, scale=1.0), family)) < NOISE
    # and passes outside the window stay unguided: the compiled model with an empty window is the baseline
    late = prompt_sample(host, gag(host, compiled_base, start_percent=0.25, end_percent=0.26), family)
    assert rel(late, plain) < NOISE


NOISE = 1e-3  # float32 noise of compiled against eager code after two sampling steps of a tiny model


# ----------------------------------------------------------------------------------------------- replacements

@pytest.mark.parametrize("family", ("sd15", "sdxl", "flux1"))
def test_image_prompt_attention_replacement_keeps_both_effects(host, monkeypatch, family):
    runs = Runs(host, monkeypatch)
    base = host.build(family)
    ip_model, fn = with_image_prompt(base)
    alone = host.sample(ip_model, family)
    assert fn.calls > 0 and rel(alone, host.sample(base, family)) > 1e-3  # the stand-in changes the output
    # α = 1 (entmax = softmax) and PLADIS s = 0: the replacement's output exactly (its output is O_d)
    # (FLUX: the block replacement wraps the block, whose joint attention gag_core computes: equal within float noise)
    for kw in (dict(alpha=1.0), dict(method="pladis", scale=0.0)):
        out = host.sample(gag(host, ip_model, **kw), family)
        assert torch.equal(out, alone) if family != "flux1" else rel(out, alone) < 1e-5, kw
    gag_alone = host.sample(gag(host, base), family)
    for order, model in (("gag on top", gag(host, ip_model)), ("ip on top", with_image_prompt(gag(host, base))[0])):
        out = host.sample(model, family)
        assert runs.last["routed"] > 0 and runs.last["message"] is None, (order, runs.last)
        assert rel(out, alone) > 1e-3 and rel(out, gag_alone) > 1e-3, order  # GAG's effect and the adapter's
        record(host=host_version(), family=family, node="IP-Adapter-like attn2 replacement", order=order,
               gag_change=rel(out, alone), other_change=rel(alone, host.sample(base, family)))
    if family != "flux1":  # UNet: the preset's blocks were guided through the replacement, the others not
        guided = {block for block, entry in runs.last["replaced"].items() if entry[1]}
        assert guided == set(EXPECTED_BLOCKS[family]) and len(runs.last["replaced"]) > len(guided)


@pytest.mark.parametrize("family", ("sd15", "sdxl"))
def test_gag_leaves_blocks_of_a_pladis_replacement_to_it_and_says_so(host, monkeypatch, caplog, family):
    runs = Runs(host, monkeypatch)
    base = host.build(family)
    other = base.clone()
    fn = pladis_attention_wrapper(host)
    for group, number in unet_attn2_blocks(other):
        other.set_model_attn2_replace(fn, group, number)
    alone = host.sample(other, family)
    with caplog.at_level(logging.WARNING, logger="comfyui_gag"):
        stacked = host.sample(gag(host, other), family)
    assert torch.equal(stacked, alone)  # not guided twice
    message = runs.last["message"]
    assert message and "_pladis_attention" in message and "sparse-attention guidance" in message
    assert "input 1" in message  # names the blocks
    assert any("_pladis_attention" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------------------------- third-party stand-ins

@pytest.mark.parametrize("family", ("sd15", "flux1"))
def test_sage_like_override_and_gguf_like_ops_keep_guidance(host, monkeypatch, family):
    runs = Runs(host, monkeypatch)
    base = host.build(family)
    plain = host.sample(base, family)
    for label, other in (("SageAttention-like override", with_sage_like_override(base)),
                         ("GGUF-like custom weight ops", build_with_custom_ops(host, family))):
        alone = host.sample(other, family)
        assert rel(alone, plain) > 1e-6, label  # the stand-in changes the output a little
        no_op = host.sample(gag(host, other, alpha=1.0), family)  # the override's output exactly when chained
        assert torch.equal(no_op, alone) if "override" in label else rel(no_op, alone) < 1e-5, label
        out = host.sample(gag(host, other), family)
        assert runs.last["routed"] > 0 and rel(out, alone) > 1e-3, label
        record(host=host_version(), family=family, node=label, order="gag on top", gag_change=rel(out, alone),
               other_change=rel(alone, plain))


def test_a_model_class_of_another_pack_and_a_replaced_transformer_pass_through_with_a_warning(host, caplog):
    import comfy.model_base

    base = host.build("sd15")

    class ThirdPartyModel(comfy.model_base.BaseModel):  # defined outside comfy.model_base
        pass

    foreign = base.clone()
    foreign.model = ThirdPartyModel.__new__(ThirdPartyModel)
    foreign.model.__dict__.update(base.model.__dict__)
    with caplog.at_level(logging.WARNING, logger="comfyui_gag"):
        assert gag(host, foreign) is foreign
    assert any("ThirdPartyModel" in r.getMessage() and "passes through unguided" in r.getMessage()
               for r in caplog.records)

    flux = host.build("flux1")

    class NunchakuLikeTransformer(torch.nn.Module):  # its own attention, never ComfyUI's
        def forward(self, x, *args, **kwargs):
            return torch.zeros_like(x)

    replaced = flux.clone()
    replaced.model = type(flux.model).__new__(type(flux.model))
    replaced.model.__dict__.update(flux.model.__dict__)
    replaced.model._modules = dict(flux.model._modules)
    replaced.model._modules["diffusion_model"] = NunchakuLikeTransformer()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="comfyui_gag"):
        assert gag(host, replaced) is replaced and pladis(host, replaced) is replaced
    messages = [r.getMessage() for r in caplog.records]
    assert any("NunchakuLikeTransformer" in m and "transformer was replaced" in m for m in messages), messages


# ----------------------------------------------------------------------------------------------- host nodes


def host_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        return "?"


def prompt_sample(host, model, family, steps=2, positive=None, negative=None):
    """A sample with prompts of one length (7 tokens each), so cond and uncond share one batch as with real
    prompts (NAG, for one, acts only on such batches)."""
    return host.sample(model, family, steps=steps, positive=positive or host.conditioning(family, 7, seed=1),
                       negative=negative or host.conditioning(family, 7, seed=2))


# (node, inputs, families, steps): model -> model patch nodes of the host; cfg 2 unless "cfg" is given
MODEL_NODES = [
    ("PerturbedAttentionGuidance", dict(scale=3.0), ("sd15", "sdxl"), 2),  # UNet middle block only
    ("SelfAttentionGuidance", dict(scale=0.5, blur_sigma=2.0), ("sd15",), 2),
    ("NAGuidance", dict(nag_scale=5.0, nag_alpha=0.5, nag_tau=1.5), ("sd15", "flux1"), 2),
    ("APG", dict(eta=1.0, norm_threshold=5.0, momentum=0.0), ("sd15", "flux1"), 2),
    ("SkipLayerGuidanceDiT", dict(double_layers="1", single_layers="1", scale=3.0, start_percent=0.0,
                                  end_percent=1.0, rescaling_scale=0.0), ("flux1",), 2),
    ("SkipLayerGuidanceDiTSimple", dict(double_layers="1", single_layers="1", start_percent=0.0, end_percent=1.0),
     ("flux1",), 2),
    ("CFGZeroStar", {}, ("sd15", "flux1"), 2),
    ("CFGNorm", dict(strength=1.0), ("sd15",), 2),
    ("TCFG", {}, ("sd15",), 2),
    ("Mahiro", {}, ("sd15",), 2),
    ("FreSca", dict(scale_low=1.0, scale_high=1.25, freq_cutoff=2), ("sd15",), 2),
    ("RescaleCFG", dict(multiplier=0.7), ("sd15",), 2),
    ("FreeU", dict(b1=1.1, b2=1.2, s1=0.9, s2=0.2), ("sd15",), 2),
    ("FreeU_V2", dict(b1=1.3, b2=1.4, s1=0.9, s2=0.2), ("sd15", "sdxl"), 2),
    ("HyperTile", dict(tile_size=64, swap_size=2, max_depth=0, scale_depth=False), ("sd15",), 2),
    ("PatchModelAddDownscale", dict(block_number=1, downscale_factor=2.0, start_percent=0.0, end_percent=0.35,
                                    downscale_after_skip=True, downscale_method="bicubic", upscale_method="bicubic"),
     ("sd15",), 2),
    ("TomePatchModel", dict(ratio=0.5), ("sd15",), 2),
    ("UNetSelfAttentionMultiply", dict(q=1.0, k=1.2, v=1.0, out=1.0), ("sd15",), 2),
    ("UNetCrossAttentionMultiply", dict(q=1.0, k=1.2, v=1.0, out=1.0), ("sd15",), 2),
    ("EasyCache", dict(reuse_threshold=5.0, start_percent=0.0, end_percent=1.0, verbose=False), ("sd15", "flux1"), 6),
    ("LazyCache", dict(reuse_threshold=5.0, start_percent=0.0, end_percent=1.0, verbose=False), ("sd15", "flux1"), 6),
    ("ModelAttentionBackend", dict(attention="pytorch attention"), ("sd15", "flux1"), 2),
    ("ContextWindowsManual", dict(context_length=4, context_overlap=1, context_schedule="standard_static",
                                  context_stride=1, closed_loop=False, fuse_method="pyramid", dim=2,
                                  freenoise=False), ("sd15",), 2),
]
CASES = [(node, kw, fam, steps) for node, kw, fams, steps in MODEL_NODES for fam in fams]


def run(host, node: str, **inputs) -> tuple:
    """All outputs of a host node (V1 classes: an instance's FUNCTION; V3: through the executor's binding)."""
    if node not in host.nodes.NODE_CLASS_MAPPINGS:
        pytest.skip(f"{node} is not in this ComfyUI ({host_version()})")
    cls = host.nodes.NODE_CLASS_MAPPINGS[node]
    if hasattr(cls, "define_schema"):
        data, missing, v3_data = host.execution.get_input_data(inputs, cls, "12")
        assert not missing, missing
        out = asyncio.run(host.execution.get_output_data("test-prompt", "12", cls, data, v3_data=v3_data))
        return tuple(o[0] for o in out[0])
    return tuple(getattr(cls(), cls.FUNCTION)(**inputs))


def _apply(host, node: str, model, kw):
    if node not in host.nodes.NODE_CLASS_MAPPINGS:
        pytest.skip(f"{node} is not in this ComfyUI ({host_version()})")
    cls = host.nodes.NODE_CLASS_MAPPINGS[node]
    required = cls.INPUT_TYPES().get("required", {})
    kw = {k: v for k, v in kw.items() if k in required}  # inputs this host version has
    return run(host, node, model=model, **kw)[0]


class Baselines:
    """Samples of the plain model and of GAG / PLADIS alone, per (family, method, steps), computed once."""

    def __init__(self, host):
        self.host, self.cache, self.models = host, {}, {}

    def model(self, family):
        if family not in self.models:
            self.models[family] = self.host.build(family)
        return self.models[family]

    def sample(self, family, method, steps):
        key = (family, method, steps)
        if key not in self.cache:
            base = self.model(family)
            model = base if method is None else (gag(self.host, base) if method == "gag" else pladis(self.host, base))
            self.cache[key] = prompt_sample(self.host, model, family, steps)
        return self.cache[key]


@pytest.fixture(scope="module")
def baselines(host):
    return Baselines(host)


def _check_stack(host, runs, baselines, family, steps, node, method, other_alone, stack_models):
    plain = baselines.sample(family, None, steps)
    guided_alone = baselines.sample(family, method, steps)
    other_changes = rel(other_alone, plain) > 1e-6
    for order, model in stack_models:
        out = prompt_sample(host, model, family, steps)
        run = runs.last
        assert torch.isfinite(out).all(), (node, order)
        assert run["routed"] > 0 and run["message"] is None, (node, order, run)
        assert rel(out, other_alone) > 1e-4, (node, order, "GAG's effect lost")
        if other_changes:
            assert rel(out, guided_alone) > 1e-6, (node, order, "the other node's effect lost")
        record(host=host_version(), family=family, node=node, method=method, order=order,
               gag_change=rel(out, other_alone), gag_alone_change=rel(guided_alone, plain),
               other_change=rel(other_alone, plain))
    return other_changes


@pytest.mark.parametrize("node,kw,family,steps", CASES, ids=[f"{n}-{f}" for n, _, f, _ in CASES])
def test_gag_stacked_with_a_host_patch_node_in_both_orders(host, monkeypatch, baselines, node, kw, family, steps):
    runs = Runs(host, monkeypatch)
    base = baselines.model(family)
    other = _apply(host, node, base, kw)
    other_alone = prompt_sample(host, other, family, steps)
    methods = ("gag", "pladis") if family == "sd15" and node in PLADIS_TOO else ("gag",)
    for method in methods:
        apply = (lambda m: gag(host, m)) if method == "gag" else (lambda m: pladis(host, m))
        changes = _check_stack(host, runs, baselines, family, steps, node, method, other_alone,
                               (("gag on top", apply(other)), ("gag below", _apply(host, node, apply(base), kw))))
        if node in CHANGES_TINY_OUTPUT:
            assert changes, f"{node} no longer changes the tiny model's output"


# nodes also stacked with PLADIS (one per mechanism); nodes that change a tiny model's output (the rest, e.g. the
# caches at this threshold or attention backends, need not)
PLADIS_TOO = {"PerturbedAttentionGuidance", "NAGuidance", "APG", "FreeU_V2", "TomePatchModel", "EasyCache",
              "UNetCrossAttentionMultiply", "ContextWindowsManual"}
CHANGES_TINY_OUTPUT = {"PerturbedAttentionGuidance", "SelfAttentionGuidance", "NAGuidance", "APG",
                       "SkipLayerGuidanceDiT", "FreeU", "FreeU_V2", "UNetCrossAttentionMultiply"}


def test_caches_really_skip_model_passes(host, monkeypatch, baselines):
    """EasyCache / LazyCache at the threshold the stacks use skip passes, with and without GAG."""
    runs = Runs(host, monkeypatch)
    base = baselines.model("sd15")
    for node in ("EasyCache", "LazyCache"):
        kw = dict(reuse_threshold=5.0, start_percent=0.0, end_percent=1.0, verbose=False)
        for model in (gag(host, _apply(host, node, base, kw)), _apply(host, node, gag(host, base), kw)):
            host.sample(model, "sd15", steps=6)
            assert runs.last["routed"] > 0
            # a skipped step runs no attention: fewer calls than the same run without the cache
            calls, full = _attention_calls(host, model), _attention_calls(host, gag(host, base))
            assert 0 < calls < full, (node, calls, full)


def _attention_calls(host, model) -> int:
    """Attention calls the kernels ran during a 6-step sample of `model` (a counting override underneath)."""
    counted = model.clone()
    options = dict(counted.model_options.get("transformer_options", {}))
    calls = []
    previous = options.get("optimized_attention_override")

    def count(func, *args, **kwargs):
        calls.append(1)
        return previous(func, *args, **kwargs) if previous is not None else func(*args, **kwargs)

    options["optimized_attention_override"] = count
    counted.model_options["transformer_options"] = options
    host.sample(counted, "sd15", steps=6)
    return len(calls)


# ----------------------------------------------------------------------------------------------- conditioning, LoRA

def _area_and_mask_conditioning(host, family):
    cond = host.conditioning(family, 7, seed=1)
    other = host.conditioning(family, 7, seed=3)
    area = run(host, "ConditioningSetArea", conditioning=other, width=32, height=32, x=0, y=0, strength=1.0)[0]
    mask = torch.zeros(1, 64, 64)
    mask[:, 32:, 32:] = 1.0
    masked = run(host, "ConditioningSetMask", conditioning=host.conditioning(family, 5, seed=4), mask=mask,
                 strength=1.0, set_cond_area="default")[0]
    both = run(host, "ConditioningCombine", conditioning_1=cond, conditioning_2=area)[0]
    return run(host, "ConditioningCombine", conditioning_1=both, conditioning_2=masked)[0]


@pytest.mark.parametrize("family", ("sd15", "flux1"))
def test_regional_conditioning_area_and_mask(host, monkeypatch, baselines, family):
    runs = Runs(host, monkeypatch)
    base = baselines.model(family)
    positive = _area_and_mask_conditioning(host, family)
    plain = prompt_sample(host, base, family, positive=positive)
    assert rel(plain, baselines.sample(family, None, 2)) > 1e-4  # the regions change the output
    out = prompt_sample(host, gag(host, base), family, positive=positive)
    assert runs.last["routed"] > 0 and rel(out, plain) > 1e-3
    record(host=host_version(), family=family, node="regional conditioning (area + mask)", order="-",
           gag_change=rel(out, plain), other_change=rel(plain, baselines.sample(family, None, 2)))


def _lora_patches(model, seed=7, rank=2):
    """LoRA weights for every attention projection, as a LoRA loader adds them (ModelPatcher.add_patches)."""
    from comfy.weight_adapter.lora import LoRAAdapter

    gen = torch.Generator().manual_seed(seed)
    patches = {}
    for key, w in model.model.state_dict().items():
        if key.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "qkv.weight")) and w.ndim == 2:
            up = torch.randn(w.shape[0], rank, generator=gen) * 0.3
            down = torch.randn(rank, w.shape[1], generator=gen) * 0.3
            patches[key] = LoRAAdapter(set(), (up, down, None, None, None, None))
    return patches


@pytest.mark.parametrize("family", ("sd15", "flux1"))
def test_lora_and_hook_keyframes(host, monkeypatch, baselines, family):
    import comfy.hooks

    runs = Runs(host, monkeypatch)
    base = baselines.model(family)
    plain = baselines.sample(family, None, 2)
    for order in ("lora below", "lora on top"):
        lora = base.clone() if order == "lora below" else gag(host, base)
        lora.add_patches(_lora_patches(base), 1.0, 1.0)
        alone_model = base.clone()
        alone_model.add_patches(_lora_patches(base), 1.0, 1.0)
        alone = prompt_sample(host, alone_model, family)
        out = prompt_sample(host, gag(host, lora) if order == "lora below" else lora, family)
        assert rel(alone, plain) > 1e-3 and runs.last["routed"] > 0
        assert rel(out, alone) > 1e-3 and rel(out, baselines.sample(family, "gag", 2)) > 1e-3, order
        record(host=host_version(), family=family, node="LoRA (ModelPatcher.add_patches)", order=order,
               gag_change=rel(out, alone), other_change=rel(alone, plain))
    # hook keyframes: a weight hook on the positive prompt with a keyframe that switches it off halfway
    hooks = comfy.hooks.HookGroup()
    hook = comfy.hooks.WeightHook()
    hook.weights = _lora_patches(base, seed=9)
    hook.need_weight_init = False  # the weights are patches already (as create_hook_model_as_lora makes them)
    hooks.add(hook)
    keyframes = comfy.hooks.HookKeyframeGroup()
    keyframes.add(comfy.hooks.HookKeyframe(strength=1.0, start_percent=0.0))
    keyframes.add(comfy.hooks.HookKeyframe(strength=0.0, start_percent=0.5))
    hooks.set_keyframes_on_hooks(keyframes)
    positive = comfy.hooks.set_hooks_for_conditioning(host.conditioning(family, 7, seed=1), hooks)
    alone = prompt_sample(host, base, family, positive=positive, steps=4)
    out = prompt_sample(host, gag(host, base), family, positive=positive, steps=4)
    assert rel(alone, baselines.sample(family, None, 4)) > 1e-3 and runs.last["routed"] > 0
    assert rel(out, alone) > 1e-3
    record(host=host_version(), family=family, node="hook keyframes (weight hook on the prompt)", order="-",
           gag_change=rel(out, alone), other_change=rel(alone, baselines.sample(family, None, 4)))


# ----------------------------------------------------------------------------------------------- ControlNet

def _tiny_controlnet(host, seed=11):
    """A tiny SD1.5 ControlNet (comfy.cldm) matching the tiny UNet, with random non-zero output convolutions."""
    import comfy.cldm.cldm
    import comfy.controlnet
    from test_comfyui_tiny import CONFIGS

    config = dict(CONFIGS["sd15"][1])
    for k in ("out_channels", "transformer_depth_output", "use_temporal_attention", "use_temporal_resblock"):
        config.pop(k, None)
    config["hint_channels"] = 3
    config.update(num_heads=8, num_head_channels=-1)  # what comfy.supported_models.SD15 adds to a UNet config
    net = comfy.cldm.cldm.ControlNet(**config, device="cpu", dtype=torch.float32,
                                     operations=comfy.ops.disable_weight_init)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / (p.shape[1] ** 0.5 if p.ndim >= 2 else 50.0))
    net.eval()
    return comfy.controlnet.ControlNet(net, load_device=torch.device("cpu"), manual_cast_dtype=None)


def test_controlnet(host, monkeypatch, baselines):
    import comfy.ops  # noqa: F401

    runs = Runs(host, monkeypatch)
    try:
        control = _tiny_controlnet(host)
    except Exception as e:  # the class moved or its arguments changed in this host version
        pytest.skip(f"no tiny ControlNet on this host: {type(e).__name__}: {e}")
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    positive, negative = host.conditioning("sd15", 7, seed=1), host.conditioning("sd15", 7, seed=2)
    pos, neg = run(host, "ControlNetApplyAdvanced", positive=positive, negative=negative, control_net=control,
                   image=image, strength=1.0, start_percent=0.0, end_percent=1.0)[:2]
    base = baselines.model("sd15")
    alone = prompt_sample(host, base, "sd15", positive=pos, negative=neg)
    assert rel(alone, baselines.sample("sd15", None, 2)) > 1e-3  # the ControlNet changes the output
    guided = prompt_sample(host, gag(host, base), "sd15", positive=pos, negative=neg)
    assert runs.last["routed"] > 0 and rel(guided, alone) > 1e-4
    assert rel(guided, baselines.sample("sd15", "gag", 2)) > 1e-3
    record(host=host_version(), family="sd15", node="ControlNet (tiny, ControlNetApplyAdvanced)", order="-",
           gag_change=rel(guided, alone), other_change=rel(alone, baselines.sample("sd15", None, 2)))


# ----------------------------------------------------------------------------------------------- diagnosis, interrupt

class Interrupter:
    """An attention override under GAG that interrupts the run as ComfyUI does (interrupt flag, then the check
    ComfyUI's ops run) at attention call `at` of model pass `in_pass`."""

    def __init__(self, at: int, in_pass: int):
        self.at, self.in_pass, self.calls, self.passes, self.fired = at, in_pass, 0, -1, False
        self.seen_sigma = None

    def __deepcopy__(self, memo):  # ModelPatcher.clone deep-copies model_options (0.8): stay one object
        return self

    def __call__(self, func, *args, **kwargs):
        import comfy.model_management as mm

        sigmas = kwargs.get("transformer_options", {}).get("sigmas")
        if sigmas is not None and sigmas is not self.seen_sigma:
            self.seen_sigma, self.passes, self.calls = sigmas, self.passes + 1, 0
        self.calls += 1
        if not self.fired and self.passes == self.in_pass and self.calls == self.at:
            self.fired = True
            mm.interrupt_current_processing(True)
            mm.throw_exception_if_processing_interrupted()
        return func(*args, **kwargs)


@pytest.fixture
def telemetry_page(host, monkeypatch):
    """The pack's telemetry and notices connected to a fake server: (sent messages, telemetry module)."""
    telemetry = pack_module(host, "nodes.telemetry")
    sent: list[tuple] = []
    fresh = telemetry.Telemetry(sender=lambda event, data, client: sent.append((event, data, client)))
    monkeypatch.setattr(telemetry, "TELEMETRY", fresh)
    fresh.subscribe("page", ["11"])
    return sent, telemetry


@pytest.mark.parametrize("where", ("first pass", "mid-step"))
def test_an_interrupted_run_reports_nothing_and_leaves_no_statistics(host, monkeypatch, caplog, telemetry_page,
                                                                     where):
    import comfy.model_management as mm

    sent, telemetry = telemetry_page
    runs = Runs(host, monkeypatch)
    base = host.build("sd15")
    # the cut comes after guided calls of that pass (the tiny UNet's attn2 calls alternate with attn1)
    stop = Interrupter(at=9, in_pass=0 if where == "first pass" else 2)
    under = base.clone()
    options = dict(under.model_options.get("transformer_options", {}))
    options["optimized_attention_override"] = stop
    under.model_options["transformer_options"] = options
    guided = gag(host, under)  # unique id "11": the subscribed node
    with caplog.at_level(logging.WARNING, logger="comfyui_gag"):
        with pytest.raises(mm.InterruptProcessingException):
            host.sample(guided, "sd15", steps=300 if where == "mid-step" else 5)
    mm.interrupt_current_processing(False)
    assert stop.fired
    assert not any(NOT_GUIDED in r.getMessage() for r in caplog.records)  # no false report
    assert runs.runs == []  # no verdict on an unfinished run
    assert "11" not in telemetry.TELEMETRY._steps  # the cut step's statistics are gone
    assert not any(event.endswith("notice") for event, _, _ in sent)
    steps_sent = [data["steps"] for event, data, _ in sent if event == telemetry.EVENT]
    assert all(n == 300 for n in steps_sent) and len(steps_sent) == (2 if where == "mid-step" else 0)
    # the next run's chart starts at its own step 0 and counts its own steps
    sent.clear()
    host.sample(gag(host, base), "sd15", steps=3)
    points = [data for event, data, _ in sent if event == telemetry.EVENT]
    assert [(p["step"], p["steps"]) for p in points] == [(0, 3), (1, 3), (2, 3)]
    assert runs.last["routed"] > 0 and runs.last["message"] is None


def test_a_run_that_guides_nothing_names_the_cause_once_in_log_and_browser(host, monkeypatch, caplog,
                                                                           telemetry_page):
    from comfy.samplers import calculate_sigmas

    sent, _ = telemetry_page
    base = host.build("sd15")
    sampling = base.get_model_object("model_sampling")
    s0, s1 = (float(x) for x in calculate_sigmas(sampling, "normal", 2)[:2])
    mid = s1 + 0.5 * (s0 - s1)  # a window between the two steps of the run: no step inside
    lo = next(p / 1000 for p in range(1000) if float(sampling.percent_to_sigma(p / 1000)) <= mid)
    with caplog.at_level(logging.WARNING, logger="comfyui_gag"):
        host.sample(gag(host, base, start_percent=lo, end_percent=min(lo + 0.002, 1.0)), "sd15", steps=2)
    notices = [data for event, data, _ in sent if event == "comfyui_gag.notice"]
    logged = [r.getMessage() for r in caplog.records if NOT_GUIDED in r.getMessage()]
    assert len(notices) == 1 and len(logged) == 1
    assert "step window" in notices[0]["message"] and notices[0]["message"] == logged[0]
    assert notices[0]["node"] == "11" and notices[0]["level"] == "warning"
    # a guided run sends nothing
    sent.clear()
    host.sample(gag(host, base), "sd15", steps=2)
    assert not [1 for event, _, _ in sent if event == "comfyui_gag.notice"]

"""Parse-level checks of the bundled workflows (run without ComfyUI; with COMFYUI_PATH the host's registry is used)."""
from __future__ import annotations

import copy
import json
import re
from urllib.parse import urlparse

import pytest
from conftest import COMFYUI_PATH

import workflow_utils as wu
from gag_core.presets import get_preset

PATHS = wu.workflow_paths()
IDS = [p.name for p in PATHS]
SAMPLERS = ("KSampler", "SamplerCustomAdvanced")


@pytest.fixture(scope="session")
def object_info() -> dict:
    """Node schemas: the host's live registry plus this pack when COMFYUI_PATH is set, else the snapshot."""
    if COMFYUI_PATH:
        return wu.host_object_info()
    return wu.snapshot_object_info()


@pytest.fixture(params=PATHS, ids=IDS)
def workflow(request) -> tuple[str, dict]:
    wf = wu.load_workflow(request.param)
    if COMFYUI_PATH:  # a workflow for a newer host is checked on that host and against the snapshot, not here
        missing = wu.missing_node_types(wf, wu.init_host_nodes().NODE_CLASS_MAPPINGS)
        if missing:
            pytest.skip(f"{request.param.name} needs a newer ComfyUI (this one lacks {missing})")
    return request.param.name, wf


def _values(node: dict, object_info: dict) -> dict:
    return wu.widget_values(node, object_info[node["type"]])


def _of_type(wf: dict, *types) -> list[dict]:
    return [n for n in wf["nodes"] if n["type"] in types]


def _up(wf, node, name):
    found = wu.upstream(wf, node["id"], name)
    return None if found is None else found[0]


def _model_chain(wf: dict, sampler: dict) -> list[dict]:
    """Nodes on the MODEL path above a sampler, nearest first (through the guider for SamplerCustomAdvanced)."""
    node = _up(wf, sampler, "guider") if sampler["type"] == "SamplerCustomAdvanced" else sampler
    chain = []
    while True:
        node = _up(wf, node, "model")
        if node is None:
            return chain
        chain.append(node)


def _branches(wf: dict) -> list[dict]:
    """For each SaveImage (or SaveVideo, through its CreateVideo): its decoder, sampler and model chain."""
    out = []
    for save in _of_type(wf, *wu.SAVE_NODES):
        video = None
        if save["type"] == "SaveVideo":
            video = _up(wf, save, "video")
            assert video is not None and video["type"] == "CreateVideo", f"SaveVideo {save['id']} is not fed by a CreateVideo"
            dec = _up(wf, video, "images")
        else:
            dec = _up(wf, save, "images")
        assert dec is not None and dec["type"] == "VAEDecode", f"{save['type']} {save['id']} is not fed by a VAEDecode"
        sampler = _up(wf, dec, "samples")
        assert sampler is not None and sampler["type"] in SAMPLERS, f"VAEDecode {dec['id']} is not fed by a sampler"
        out.append({"save": save, "video": video, "decode": dec, "sampler": sampler, "chain": _model_chain(wf, sampler)})
    return out


# ---------------------------------------------------------------------------------------------------------------


def test_one_workflow_per_family():
    assert set(IDS) == set(wu.WORKFLOW_FAMILY), "every bundled workflow needs a family in WORKFLOW_FAMILY"
    assert {"sdxl", "dmd2", "flux1", "qwen_image"} <= set(wu.WORKFLOW_FAMILY.values())


def test_front_end_would_load_it(workflow):
    name, wf = workflow
    assert wu.zod_problems(wf) == []
    assert wf["version"] == 0.4 and isinstance(wf["version"], float)
    assert "definitions" not in wf, "write workflows without subgraphs"
    assert wf["last_node_id"] >= max(n["id"] for n in wf["nodes"])
    assert wf["last_link_id"] >= max(link[0] for link in wf["links"])
    assert len({n["id"] for n in wf["nodes"]}) == len(wf["nodes"])
    assert all(n["mode"] == 0 for n in wf["nodes"]), "no muted or bypassed nodes"


@pytest.mark.parametrize("break_it", [
    lambda wf: wf.pop("version"),
    lambda wf: wf.update(version="0.4"),
    lambda wf: wf["links"][0].pop(),
    lambda wf: wf["nodes"][0].update(pos=[1]),
    lambda wf: wf["nodes"][0].pop("flags"),
    lambda wf: wf["nodes"][0]["properties"].update(cnr_id="-bad id-"),
    lambda wf: wf["nodes"][0]["properties"].update(models=[{"name": "x", "url": "not a url", "directory": "vae"}]),
    lambda wf: wf.update(last_link_id=None),
], ids=["no-version", "string-version", "short-link", "bad-pos", "no-flags", "bad-cnr-id", "bad-model-url",
        "no-last-link-id"])
def test_front_end_check_rejects_broken_workflows(break_it):
    wf = copy.deepcopy(wu.load_workflow(PATHS[0]))
    wf["nodes"].sort(key=lambda n: "models" not in n.get("properties", {}))  # a loader first
    break_it(wf)
    assert wu.zod_problems(wf), "the ported front-end schema accepted a broken workflow"


def test_node_types_are_known(workflow, object_info):
    _, wf = workflow
    unknown = sorted({n["type"] for n in wf["nodes"]} - set(object_info) - wu.FRONTEND_ONLY)
    assert unknown == []
    assert not any(re.fullmatch(r"[0-9a-f-]{36}", n["type"]) for n in wf["nodes"]), "subgraph instance found"


def test_widget_values_fit_inputs(workflow, object_info):
    _, wf = workflow
    problems = []
    for node in wf["nodes"]:
        if node["type"] in wu.FRONTEND_ONLY:
            continue
        info = object_info[node["type"]]
        problems += [f"{node['id']} {node['type']}: {p}" for p in wu.widget_problems(node, info)]
        problems += [f"{node['id']} {node['type']}: {p}" for p in wu.slot_problems(node, info)]
    assert problems == []


def test_links_join_compatible_types(workflow, object_info):
    _, wf = workflow
    assert wu.link_problems(wf, object_info) == []
    for node in wf["nodes"]:
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                origin = wu.nodes_by_id(wf)[wu.links_by_id(wf)[inp["link"]][1]]
                assert origin["type"] not in wu.FRONTEND_ONLY, f"{node['type']}.{inp['name']} fed by a front-end node"


def test_required_inputs_are_connected(workflow, object_info):
    _, wf = workflow
    missing = []
    for node in wf["nodes"]:
        if node["type"] in wu.FRONTEND_ONLY:
            continue
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        for spec in wu.input_specs(object_info[node["type"]]):
            if spec.category == "required" and not spec.is_widget and spec.name not in linked:
                missing.append(f"{node['id']} {node['type']}.{spec.name}")
    assert missing == []


def test_baseline_and_gag_side_by_side_from_one_seed(workflow, object_info):
    name, wf = workflow
    branches = _branches(wf)
    assert len(branches) == 2, "exactly two outputs: baseline and GAG"
    guided = [b for b in branches if any(n["type"] in wu.GUIDANCE_NODES for n in b["chain"])]
    assert len(guided) == 1, "one branch guided, one baseline"
    gag, base = guided[0], next(b for b in branches if b is not guided[0])
    gag_chain = [n["id"] for n in gag["chain"] if n["type"] not in wu.GUIDANCE_NODES]
    assert sum(n["type"] in wu.GUIDANCE_NODES for n in gag["chain"]) == 1
    assert gag_chain == [n["id"] for n in base["chain"]], "the GAG model must be the baseline model plus GAG only"

    s_gag, s_base = gag["sampler"], base["sampler"]
    assert s_gag["type"] == s_base["type"]
    if s_gag["type"] == "KSampler":
        assert _values(s_gag, object_info) == _values(s_base, object_info), "sampler settings differ"
        shared = ("positive", "negative", "latent_image", "seed")
        seed = _up(wf, s_gag, "seed")
        assert seed is not None, "link one seed node to both samplers"
    else:
        g_gag, g_base = _up(wf, s_gag, "guider"), _up(wf, s_base, "guider")
        assert _values(g_gag, object_info) == _values(g_base, object_info), "guider settings differ"
        for name_ in ("positive", "negative", "conditioning"):  # CFGGuider; BasicGuider (no CFG): conditioning
            a, b = _up(wf, g_gag, name_), _up(wf, g_base, name_)
            assert (a is None) == (b is None) and (a is None or a["id"] == b["id"]), f"{name_} is not shared"
        shared = ("noise", "sampler", "sigmas", "latent_image")
    for input_name in shared:
        a, b = _up(wf, s_gag, input_name), _up(wf, s_base, input_name)
        assert a is not None and b is not None and a["id"] == b["id"], f"{input_name} is not shared"
    assert _up(wf, gag["decode"], "vae")["id"] == _up(wf, base["decode"], "vae")["id"]
    assert gag["save"]["type"] == base["save"]["type"]
    if gag["video"] is not None:
        assert _values(gag["video"], object_info) == _values(base["video"], object_info), "video settings differ"
        assert _values(gag["save"], object_info) | {"filename_prefix": ""} == \
            _values(base["save"], object_info) | {"filename_prefix": ""}, "video format differs"
    prefixes = [_values(b["save"], object_info)["filename_prefix"] for b in branches]
    assert len(set(prefixes)) == 2


def test_guidance_node_follows_the_preset_table(workflow, object_info):
    name, wf = workflow
    preset = get_preset(wu.WORKFLOW_FAMILY[name])
    guidance = _of_type(wf, *wu.GUIDANCE_NODES)
    assert len(guidance) == 1
    node = guidance[0]
    values = _values(node, object_info)
    if node["type"] == "PLADISGuidance":
        assert values["scale"] == pytest.approx(preset.pladis_scale)
        return
    assert values["scale"] == pytest.approx(preset.scale)
    assert values["beta"] == pytest.approx(preset.beta)
    assert preset.scale_range[0] <= values["scale"] <= preset.scale_range[1]
    assert preset.beta_range[0] <= values["beta"] <= preset.beta_range[1]
    if node["type"] == "GeometryAwareAttentionGuidanceAdvanced":
        assert values["method"] == "gag"
        for key in ("tau", "alpha", "start_percent", "end_percent"):
            assert values[key] == pytest.approx(getattr(preset, key)), key
        blocks = values["blocks"].replace(" ", "")
        assert blocks in ("auto", preset.blocks.replace(" ", "")), f"blocks {values['blocks']!r} vs {preset.blocks!r}"


def test_note_gives_the_recommended_ranges(workflow):
    name, wf = workflow
    preset = get_preset(wu.WORKFLOW_FAMILY[name])
    notes = " ".join(str(v) for n in _of_type(wf, "Note", "MarkdownNote") for v in n["widgets_values"])
    assert notes, "a Note with the recommended settings"
    for lo, hi in (preset.scale_range, preset.beta_range):
        assert re.search(rf"{lo:g}\s*[–-]\s*{hi:g}", notes), f"range {lo:g}–{hi:g} missing from the note"


def test_model_loaders_carry_download_metadata(workflow, object_info):
    _, wf = workflow
    used = set()
    for node in wf["nodes"]:
        if node["type"] in wu.FRONTEND_ONLY:
            continue
        models = {m["name"]: m for m in node.get("properties", {}).get("models", [])}
        for key, value in _values(node, object_info).items():
            folder = wu.MODEL_INPUT_FOLDERS.get((node["type"], key))
            if folder is None:
                continue
            used.add((node["id"], value))
            assert value in models, f"{node['type']}.{key}={value!r} has no properties.models entry"
            entry = models[value]
            url = urlparse(entry["url"])
            assert entry["directory"] == folder
            assert url.scheme == "https" and url.path.endswith("/" + value), entry["url"]
        for m in models:
            assert (node["id"], m) in used, f"{node['type']} lists model {m!r} it does not load"
    assert used, "no model loader found"


def _first_values(wf, object_info, node_type):
    nodes = _of_type(wf, node_type)
    assert nodes, f"no {node_type}"
    return _values(nodes[0], object_info)


# The recipe each workflow must follow (issue: family, loaders, steps, CFG, sampler).
RECIPES = {
    "gag_sdxl.json": dict(loader=("CheckpointLoaderSimple", "ckpt_name", "sd_xl_base_1.0.safetensors"),
                          steps=(25, 40), cfg=(4.0, 9.0), size=1024),
    "gag_dmd2.json": dict(loader=("LoraLoaderModelOnly", "lora_name", "dmd2_sdxl_4step_lora_fp16.safetensors"),
                          steps=(4, 4), cfg=(1.0, 1.0), sampler="lcm", scheduler="sgm_uniform", size=1024),
    "gag_flux1_schnell.json": dict(loader=("UNETLoader", "unet_name", "flux1-schnell.safetensors"),
                                   clip=("DualCLIPLoader", "flux"), steps=(4, 4), cfg=(1.0, 1.0), size=1024),
    "gag_flux1_dev.json": dict(loader=("UNETLoader", "unet_name", "flux1-dev.safetensors"),
                               clip=("DualCLIPLoader", "flux"), steps=(20, 32), cfg=(1.0, 1.0), flux_guidance=True,
                               size=1024),
    "gag_zimage_turbo.json": dict(loader=("UNETLoader", "unet_name", "z_image_turbo_bf16.safetensors"), clip=("CLIPLoader", "lumina2"), steps=(8, 9), cfg=(1.0, 1.0), model_sampling="ModelSamplingAuraFlow", size=1024),
    "gag_qwen_image.json": dict(loader=("UNETLoader", "unet_name", "qwen_image_fp8_e4m3fn.safetensors"),
                                clip=("CLIPLoader", "qwen_image"), steps=(15, 50), cfg=(1.0, 5.0),
                                model_sampling="ModelSamplingAuraFlow", size=1328),
    "gag_flux2_klein.json": dict(loader=("UNETLoader", "unet_name", "flux-2-klein-4b.safetensors"),
                                 clip=("CLIPLoader", "flux2"), steps=(4, 4), cfg=(1.0, 1.0), size=1024),
    # ComfyUI's "Wan 2.2 5B Video Generation" template (video_wan2_2_5B_ti2v) as it ships: text to video.
    "gag_wan22_t2v.json": dict(loader=("UNETLoader", "unet_name", "wan2.2_ti2v_5B_fp16.safetensors"),
                               clip=("CLIPLoader", "wan"), vae="wan2.2_vae.safetensors", steps=(20, 20),
                               cfg=(5.0, 5.0), sampler="uni_pc", scheduler="simple", model_sampling="ModelSamplingSD3",
                               shift=8.0, latent="Wan22ImageToVideoLatent", size=(1280, 704), length=121, fps=24.0),
    # ComfyUI's "MiniMax H3: Image to Video" template (video_minimax_h3_i2v), its subgraph flattened, turbo off.
    "gag_minimax_h3_i2v.json": dict(loader=("UNETLoader", "unet_name",
                                            "minimax_h3_fl2va_pruned_int8_convrot.safetensors"),
                                    clip=("CLIPLoader", "minimax"), vae="minimax_h3_video_vae_fp16.safetensors",
                                    steps=(20, 20), cfg=(1.0, 1.0), latent="MiniMaxH3ImageToVideo", size=(1344, 768),
                                    length=124, fps=24.0, batch=None),
}


def test_workflow_follows_its_family_recipe(workflow, object_info):
    name, wf = workflow
    recipe = RECIPES[name]
    node_type, key, file_name = recipe["loader"]
    assert _first_values(wf, object_info, node_type)[key] == file_name
    if "clip" in recipe:
        assert _first_values(wf, object_info, recipe["clip"][0])["type"] == recipe["clip"][1]
        assert _of_type(wf, "VAELoader"), "split loaders need a VAELoader"
    sampler = _branches(wf)[0]["sampler"]
    if sampler["type"] == "KSampler":
        v = _values(sampler, object_info)
        steps, cfg = v["steps"], v["cfg"]
        if "sampler" in recipe:
            assert (v["sampler_name"], v["scheduler"]) == (recipe["sampler"], recipe["scheduler"])
    else:
        scheduler = _up(wf, sampler, "sigmas")
        steps = _values(scheduler, object_info)["steps"]
        guider = _up(wf, sampler, "guider")
        cfg = _values(guider, object_info)["cfg"] if guider["type"] == "CFGGuider" else 1.0  # BasicGuider: no CFG
    assert recipe["steps"][0] <= steps <= recipe["steps"][1]
    assert recipe["cfg"][0] <= cfg <= recipe["cfg"][1]
    if recipe.get("flux_guidance"):
        fg = _of_type(wf, "FluxGuidance")
        assert fg and all(_up(wf, b["sampler"], "positive")["id"] == fg[0]["id"] for b in _branches(wf))
    if "model_sampling" in recipe:
        for b in _branches(wf):
            assert recipe["model_sampling"] in [n["type"] for n in b["chain"]]
    if "shift" in recipe:
        for n in _of_type(wf, recipe["model_sampling"]):
            assert _values(n, object_info)["shift"] == pytest.approx(recipe["shift"])
    if "vae" in recipe:
        assert _first_values(wf, object_info, "VAELoader")["vae_name"] == recipe["vae"]
    if "latent" in recipe:
        latent = next(n for n in wf["nodes"] if n["type"] == recipe["latent"])
    else:
        latent = next(n for n in wf["nodes"] if n["type"].startswith("Empty") and "Latent" in n["type"])
    lv = _values(latent, object_info)
    size = recipe["size"] if isinstance(recipe["size"], tuple) else (recipe["size"], recipe["size"])
    assert (lv["width"], lv["height"], lv.get("batch_size", 1)) == (*size, 1)
    if "length" in recipe:
        assert lv["length"] == recipe["length"]
        assert all(_up(wf, b["sampler"], "latent_image")["id"] == latent["id"] for b in _branches(wf))
        assert not [i for i in latent.get("inputs", []) if i["name"] == "start_image" and i.get("link") is not None]
    if "fps" in recipe:
        assert all(_values(b["video"], object_info)["fps"] == pytest.approx(recipe["fps"]) for b in _branches(wf))


def test_api_prompt_is_complete(workflow, object_info):
    _, wf = workflow
    prompt = wu.to_api_prompt(wf, object_info)
    assert {p["class_type"] for p in prompt.values()}.isdisjoint(wu.FRONTEND_ONLY)
    for node_id, entry in prompt.items():
        info = object_info[entry["class_type"]]
        widgets = wu.nodes_by_id(wf)[int(node_id)].get("widgets_values", [])
        names = {s.name for s in wu.input_specs(info)} | {s.name for s, _ in wu.widget_layout(info, widgets)}
        assert set(entry["inputs"]) <= names
        for spec in wu.input_specs(object_info[entry["class_type"]]):
            if spec.category == "required":
                assert spec.name in entry["inputs"], f"{node_id} {entry['class_type']} lacks {spec.name}"
        for value in entry["inputs"].values():
            if isinstance(value, list):
                assert value[0] in prompt and isinstance(value[1], int)
    assert sum(p["class_type"] in wu.SAVE_NODES for p in prompt.values()) == 2
    json.dumps(prompt)  # serialisable as sent to /prompt


def test_snapshot_covers_every_used_node_type():
    snapshot = wu.snapshot_object_info()
    assert set(wu.used_node_types()) <= set(snapshot), "refresh tests/workflow_object_info.json (--write-snapshot)"


def test_nodes_do_not_overlap(workflow):
    """Readable as opened: no two node boxes (title bar included) overlap on the canvas."""
    _, wf = workflow
    title = 30  # LiteGraph's NODE_TITLE_HEIGHT: the title bar sits above pos
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - title, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in wf["nodes"]]
    clashes = [(a[0], b[0]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
               if a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]]
    assert clashes == []

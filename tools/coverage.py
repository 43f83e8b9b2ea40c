"""How much of a ComfyUI host's own template use the pack guides: usage-weighted share of the local templates.

    python tools/coverage.py --host /path/to/ComfyUI [--templates DIR] [--repo PATH] [--top 15]

Reads the template index the host installs (`comfyui-workflow-templates*` packages: `templates/index.json`
with a `usage` count per template, and each template's workflow JSON), keeps the local templates (not
`openSource: false`, not `api_*`), finds the diffusion model each one loads (UNETLoader /
CheckpointLoaderSimple file names, mapped to the `comfy.model_base` class they load as by `FILE_CLASSES`
below), reads the class lineage from the host's comfy/model_base.py (parsed, not imported) and asks the pack's
family table (nodes/families.py `classify`, and `Family.modes` for MiniMax H3's conditioning modes) whether
that class is guided. A template loading several text-conditioned classes splits its use between them.
Prints the guided share of the text-conditioned use and the largest unguided templates with the reason.
Needs torch (the pack's modules import it); no ComfyUI import.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Model file name (case-insensitive regex, first match wins) -> the comfy.model_base class it loads as. Read from
# the host's model detection (comfy/supported_models.py: which unet_config builds which class) and the files'
# names; ComfyUI itself decides from the weights, which the index does not ship.
FILE_CLASSES: tuple[tuple[str, str], ...] = (
    (r"minimax_music", "MiniMaxMusic3"),
    (r"minimax_h3", "MiniMaxH3"),
    (r"^ltx-2|^ltx_2", "LTXAV"),
    (r"^ltx-video|^ltxv", "LTXV"),
    (r"z_image.*pixel", "ZImagePixelSpace"),
    (r"z_image|netayume|lumina|newbie", "Lumina2"),  # Z-Image builds a Lumina2; NetaYume and NewBie are Lumina 2
    (r"krea2", "Krea2"),
    (r"mage_flow", "MageFlow"),
    (r"qwen_image_2_1|qwen_image21", "QwenImage21"),
    (r"qwen[_-]image|firered-image", "QwenImage"),  # FireRed Image Edit is a Qwen-Image-Edit finetune
    (r"wan_animate_2", "WAN_Animate2"),
    (r"wan.*animate", "WAN22_Animate"),
    (r"scail_2", "WAN21_SCAIL2"),
    (r"scail", "WAN21_SCAIL"),
    (r"vace", "WAN21_Vace"),
    (r"s2v", "WAN22_S2V"),
    (r"humo", "WAN21_HuMo"),
    (r"fun_camera", "WAN21_Camera"),
    (r"dancer", "WAN22_WanDancer"),
    (r"flowrvs|flow_rvs", "WAN21_FlowRVS"),
    (r"causal_forcing|causvid_ar|self_forcing", "WAN21_CausalAR"),
    (r"ti2v_5b|fun_control_5b|fun_inpaint_5b", "WAN22"),  # the 5B (Wan 2.2 VAE, 48 channels) is WAN22
    (r"wan|chrono_edit|bernini", "WAN21"),  # T2V / I2V / FLF2V / Fun control+inpaint / ATI / WanMove / ChronoEdit
    (r"hunyuanvideo1\.5.*sr", "HunyuanVideo15_SR_Distilled"),
    (r"hunyuanvideo1\.5|hunyuanvideo15", "HunyuanVideo15"),
    (r"hunyuan_video.*i2v", "HunyuanVideoI2V"),
    (r"hunyuan_video", "HunyuanVideo"),
    (r"hunyuanimage2\.1.*refiner", "HunyuanImage21Refiner"),
    (r"hunyuanimage2\.1|hunyuan_image_2", "HunyuanImage21"),
    (r"hunyuan3d-v2\.1|hunyuan_3d_v2\.1", "Hunyuan3Dv2_1"),
    (r"hunyuan3d", "Hunyuan3Dv2"),
    (r"chroma-radiance|chroma1-radiance", "ChromaRadiance"),
    (r"chroma", "Chroma"),
    (r"longcat", "LongCatImage"),
    (r"pid_flux", "PiD"),
    (r"flux-2|flux2", "Flux2"),
    (r"flux", "Flux"),  # FLUX.1 dev / schnell / fill / canny / depth / Kontext / Krea dev
    (r"sd_xl_refiner", "SDXLRefiner"),
    (r"sd_xl|sdxl", "SDXL"),
    (r"sd3", "SD3"),
    (r"lotus", "Lotus"),
    (r"svd", "SVD_img2vid"),
    (r"anima", "Anima"),
    (r"boogu", "Boogu"),
    (r"omnigen2", "Omnigen2"),
    (r"ideogram4", "Ideogram4"),
    (r"ernie-image|ernie_image", "ErnieImage"),
    (r"kandinsky5.*t2i", "Kandinsky5Image"),
    (r"kandinsky5", "Kandinsky5"),
    (r"joyai|joyimage", "JoyImage"),
    (r"^lens", "Lens"),
    (r"pixeldit", "PixelDiTT2I"),
    (r"cosmos.*predict2", "CosmosPredict2"),
    (r"hidream_o1", "HiDreamO1"),
    (r"hidream", "HiDream"),  # I1 and E1 (E1 packs its edit image: those passes stay dense)
    (r"acestep_v1\.5|ace_step_1\.5", "ACEStep15"),
    (r"acestep|ace_step", "ACEStep"),
    (r"stable_audio_3", "StableAudio3"),
    (r"stable-audio|stable_audio", "StableAudio1"),
    (r"seedvr2", "SeedVR2"),
    (r"triposplat", "TripoSplat"),
    (r"sam3", "SAM3"),
    (r"rt_detr", "RT_DETR_v4"),
    (r"void_pass", "CogVideoX"),  # VOID video inpainting runs on CogVideoX
    (r"capybara", "HunyuanVideo15"),  # a HunyuanVideo 1.5 finetune (its template: hunyuan_video_15 encoders)
    (r"ovis_image", "Flux"),  # detected as FLUX (yak_mlp + txt_norm) on 0.8.0 and 0.33.0
    (r"v1-5|sd15|sd_1\.5", "BaseModel"),  # SD 1.5
    # no class in the host's model_base: loaded by a custom node ("?" marks them)
    (r"sdpose", "?SDPose"),
)
# Classes without text conditioning (upscalers, 3D, segmentation, depth, image-only video): left out of the share.
NOT_TEXT = frozenset({"SeedVR2", "TripoSplat", "Hunyuan3Dv2", "Hunyuan3Dv2_1", "SAM3", "RT_DETR_v4",
                      "DepthAnything3", "SVD_img2vid", "Lotus", "PiD", "?SDPose"})
# Audio generators are text-conditioned but not what the pack is for: counted apart (--with-audio counts them in).
AUDIO = frozenset({"ACEStep", "ACEStep15", "StableAudio1", "StableAudio3", "MiniMaxMusic3"})
LOADER = re.compile(r"unet|checkpoint|diffusion", re.I)
MODEL_FILE = re.compile(r"\.(safetensors|gguf|ckpt|pt|pth|bin)$", re.I)


def template_dirs() -> list[Path]:
    """Every templates/ folder of the installed comfyui-workflow-templates* packages."""
    out = []
    for package in ("comfyui_workflow_templates_json", "comfyui_workflow_templates_media_other",
                    "comfyui_workflow_templates_media_image", "comfyui_workflow_templates_media_video",
                    "comfyui_workflow_templates_media_api", "comfyui_workflow_templates"):
        spec = importlib.util.find_spec(package)
        for root in (spec.submodule_search_locations or []) if spec else []:
            if (Path(root) / "templates").is_dir():
                out.append(Path(root) / "templates")
    return out


def find_index(templates: str | None) -> tuple[Path, list[Path]]:
    """(templates/index.json, folders holding the workflow files) of the installed template packages, or of
    `templates` (a folder holding index.json and the workflows). The templates core package says where its
    version keeps them: the JSON package (core 0.3.1xx+ loader names it) or the media packages (older cores; a
    newer JSON package pip may have pulled in beside them is not the host's)."""
    if templates:
        path = Path(templates)
        path = path if path.name == "index.json" else path / "index.json"
        if path.is_file():
            return path, [path.parent]
        raise SystemExit(f"no index.json at {templates!r}")
    dirs = template_dirs()
    spec = importlib.util.find_spec("comfyui_workflow_templates_core")
    loader = ""
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / "loader.py").is_file():
            loader = (Path(root) / "loader.py").read_text()
    json_first = "JSON_PACKAGE" in loader
    ordered = sorted(dirs, key=lambda d: ("templates_json" in str(d)) != json_first)
    for folder in ordered:
        if (folder / "index.json").is_file():
            return folder / "index.json", ordered
    raise SystemExit("no comfyui-workflow-templates package in this Python: run it with the host's venv, or "
                     "pass --templates <folder with index.json>")


def host_lineage(host: Path) -> dict[str, tuple[str, ...]]:
    """class name -> its lineage (itself first) among comfy/model_base.py's classes, parsed from the source."""
    tree = ast.parse((host / "comfy" / "model_base.py").read_text())
    bases = {n.name: [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in n.bases]
             for n in tree.body if isinstance(n, ast.ClassDef)}

    def walk(name, seen):
        out = [name]
        for base in bases.get(name, []):
            if base in bases and base not in seen:
                for c in walk(base, seen | {name}):
                    if c not in out:
                        out.append(c)
        return out

    return {name: tuple(walk(name, frozenset())) for name in bases}


def load_families(repo: Path):
    """The pack's nodes/families.py, imported as part of the package at `repo` (as ComfyUI imports it)."""
    name = "gag_coverage_pack"
    spec = importlib.util.spec_from_file_location(name, repo / "__init__.py", submodule_search_locations=[str(repo)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{name}.nodes.families")


def workflow_nodes(workflow: dict):
    yield from workflow.get("nodes", [])
    for graph in (workflow.get("definitions") or {}).get("subgraphs", []):
        yield from graph.get("nodes", [])


def model_files(workflow: dict) -> list[str]:
    """Diffusion model files the workflow's loader nodes name."""
    files = []
    for node in workflow_nodes(workflow):
        if not LOADER.search(str(node.get("type", ""))) or "lora" in str(node.get("type", "")).lower():
            continue
        for value in node.get("widgets_values") or []:
            if isinstance(value, str) and MODEL_FILE.search(value) and value not in files:
                files.append(value)
    return files


def file_class(name: str) -> str | None:
    for pattern, cls in FILE_CLASSES:
        if re.search(pattern, name, re.I):
            return cls
    return None


def minimax_mode(workflow: dict) -> str:
    """MiniMax H3's conditioning mode: ref2va (reference node), fl2va (image-to-video node fed an image), t2va."""
    types = {str(n.get("type", "")) for n in workflow_nodes(workflow)}
    if "MiniMaxH3ReferenceToVideo" in types:
        return "ref2va"
    if "MiniMaxH3AddGuide" in types or ("MiniMaxH3ImageToVideo" in types and "LoadImage" in types):
        return "fl2va"
    return "t2va"


def classify(families, mro: tuple[str, ...]):
    """families.classify, or for a family table that predates it (exact class names only) the same lookup."""
    if hasattr(families, "classify"):
        return families.classify(mro)
    if mro[0] in families.PASS_THROUGH:
        return None, families.PASS_THROUGH[mro[0]]
    key = families.MODEL_CLASSES.get(mro[0])
    return (families.FAMILIES[key], "") if key else (None, "")


def template_mode(cls: str, workflow: dict, files: list[str]) -> str:
    """The conditioning mode a template runs its class in, where the family table guides only some modes."""
    if cls == "MiniMaxH3":
        return minimax_mode(workflow)
    if cls == "HiDream":  # E1 edits pack the source image next to the target: i1 (text to image) or e1
        return "e1" if any(re.search(r"hidream_e1", f, re.I) for f in files) else "i1"
    return ""


def verdict(families, lineage: dict, cls: str, mode: str, modes: dict) -> tuple[bool, str]:
    """(guided, reason when not) for one model_base class (and MiniMax mode); `modes` overrides Family.modes."""
    if cls not in lineage:
        return False, f"{cls.lstrip('?')}: no class in this host's model_base loads it"
    family, reason = classify(families, lineage[cls])
    if family is None:
        return False, reason or f"{cls}: no family row"
    guided_modes = modes.get(family.key, getattr(family, "modes", ()))
    if mode and guided_modes and mode not in guided_modes:
        return False, f"{cls} {mode}: this conditioning mode is not routed"
    return True, ""


def measure(index: Path, host: Path, repo: Path, with_audio: bool = False, modes: dict | None = None,
            folders: list[Path] | None = None) -> dict:
    families = load_families(repo)
    lineage = host_lineage(host)
    folders = folders or [index.parent]
    rows, skipped, unknown = [], [], []
    for category in json.loads(index.read_text()):
        for t in category.get("templates", []):
            name, usage = t["name"], int(t.get("usage") or 0)
            if t.get("openSource") is False or name.startswith("api_"):
                continue
            path = next((f / f"{name}.json" for f in folders if (f / f"{name}.json").is_file()), None)
            if path is None:
                skipped.append((name, usage, "workflow file missing"))
                continue
            workflow = json.loads(path.read_text())
            classes = []
            files = model_files(workflow)
            for f in files:
                cls = file_class(f)
                if cls is None:
                    unknown.append((name, usage, f))
                elif cls not in NOT_TEXT and (with_audio or cls not in AUDIO) and cls not in classes:
                    classes.append(cls)
            if not classes:
                skipped.append((name, usage, "no text-conditioned diffusion model"))
                continue
            for cls in classes:
                mode = template_mode(cls, workflow, files)
                guided, reason = verdict(families, lineage, cls, mode, modes or {})
                rows.append(dict(template=name, usage=usage / len(classes), cls=cls, mode=mode, guided=guided,
                                 reason=reason))
    total = sum(r["usage"] for r in rows)
    guided = sum(r["usage"] for r in rows if r["guided"])
    return dict(rows=rows, total=total, guided=guided, share=guided / total if total else 0.0, skipped=skipped,
                unknown=unknown)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI tree (default $COMFYUI_PATH)")
    parser.add_argument("--templates", help="folder holding the template index.json (default: the installed one)")
    parser.add_argument("--repo", default=str(REPO), help="the pack whose family table is measured (default: this)")
    parser.add_argument("--top", type=int, default=15, help="unguided templates listed")
    parser.add_argument("--with-audio", action="store_true", help="count the audio generators in")
    parser.add_argument("--json", action="store_true", help="print the measurement as JSON")
    parser.add_argument("--modes", action="append", default=[], metavar="FAMILY=MODE,MODE",
                        help="the modes a family guides, for a family table older than Family.modes "
                             "(the pack before issue 20: --modes minimax_h3=t2va)")
    args = parser.parse_args(argv)
    if not args.host or not (Path(args.host) / "comfy" / "model_base.py").is_file():
        parser.error(f"--host {args.host!r} is not a ComfyUI tree (no comfy/model_base.py)")
    host = Path(args.host)
    index, folders = find_index(args.templates)
    modes = {}
    for item in args.modes:
        key, _, value = item.partition("=")
        if not key or not value:
            parser.error(f"--modes {item!r}: expected FAMILY=MODE[,MODE]")
        modes[key] = tuple(value.split(","))
    result = measure(index, host, Path(args.repo), args.with_audio, modes, folders)
    version = re.search(r'"(.*)"', (host / "comfyui_version.py").read_text())
    if args.json:
        print(json.dumps({k: v for k, v in result.items()}, indent=1, default=str))
        return 0
    print(f"ComfyUI {version.group(1) if version else '?'} ({host}), templates {index.parent}")
    print(f"local text-conditioned template use: {result['total']:,.0f}; guided {result['guided']:,.0f} = "
          f"{100 * result['share']:.1f} %")
    by_class = defaultdict(float)
    for r in result["rows"]:
        by_class[(r["cls"], r["mode"], r["guided"], r["reason"])] += r["usage"]
    print("\nby model_base class (use, share):")
    for (cls, mode, guided, reason), use in sorted(by_class.items(), key=lambda kv: -kv[1]):
        label = f"{cls} {mode}".strip()
        print(f"  {'guided  ' if guided else 'unguided'} {label:28s} {use:9,.0f} {100 * use / result['total']:5.1f} %"
              + (f"  ({reason})" if reason else ""))
    unguided = sorted((r for r in result["rows"] if not r["guided"]), key=lambda r: -r["usage"])
    print(f"\nlargest unguided templates (top {args.top}):")
    for r in unguided[: args.top]:
        print(f"  {r['usage']:8,.0f} {100 * r['usage'] / result['total']:5.2f} %  {r['template']}  [{r['cls']}"
              f"{' ' + r['mode'] if r['mode'] else ''}]  {r['reason']}")
    if result["unknown"]:
        print("\nmodel files with no class in FILE_CLASSES (left out):")
        for name, usage, f in sorted(result["unknown"], key=lambda x: -x[1]):
            print(f"  {usage:8,d} {name}: {f}")
    left = sum(u for _, u, _ in result["skipped"])
    print(f"\nleft out (no text-conditioned diffusion model{'' if args.with_audio else ', or audio'}): "
          f"{len(result['skipped'])} templates, {left:,} uses")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python tests/workflow_thumbnails.py: the schematic thumbnail beside each bundled workflow (workflows/<name>.jpg).

ComfyUI's Templates browser shows `/api/workflow_templates/<pack>/<name>.jpg` on each custom template's card. These
are schematics drawn from the workflow itself (its model, its GAG node and λ), labelled as such: no model was run.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
SIZE = (400, 400)
TITLES = {
    "gag_sdxl.json": "SDXL",
    "gag_dmd2.json": "DMD2 (SDXL, 4 steps)",
    "gag_flux1_schnell.json": "FLUX.1 [schnell]",
    "gag_flux1_dev.json": "FLUX.1 [dev]",
    "gag_qwen_image.json": "Qwen-Image",
    "gag_flux2_klein.json": "FLUX.2 [klein] 4B",
    "gag_zimage_turbo.json": "Z-Image Turbo",
    "gag_wan22_t2v.json": "Wan 2.2 5B, text to video",
    "gag_minimax_h3_i2v.json": "MiniMax H3, image to video",
}
GUIDANCE = ("GeometryAwareAttentionGuidance", "GeometryAwareAttentionGuidanceAdvanced")
LOADERS = ("CheckpointLoaderSimple", "UNETLoader")
BG, INK, MUTED, ORANGE, GREY = (24, 26, 32), (235, 235, 235), (150, 155, 165), (240, 140, 40), (90, 95, 105)


def _font(size: int):
    return ImageFont.load_default(size=size)  # Pillow's bundled font: the same pixels on every machine


def describe(name: str) -> dict:
    """What the thumbnail shows, read from the workflow: title, model file, GAG node and its λ."""
    wf = json.loads((WORKFLOWS / name).read_text(encoding="utf-8"))
    gag = next(n for n in wf["nodes"] if n["type"] in GUIDANCE)
    loader = next(n for n in wf["nodes"] if n["type"] in LOADERS)
    return {"title": TITLES[name], "model": str(loader["widgets_values"][0]),
            "node": "GAG advanced" if gag["type"].endswith("Advanced") else "GAG",
            "scale": float(gag["widgets_values"][1 if gag["type"].endswith("Advanced") else 0])}


def render(name: str) -> Image.Image:
    """The schematic: title, loader → GAG → sampler, and the two outputs the workflow renders side by side."""
    d = describe(name)
    img = Image.new("RGB", SIZE, BG)
    draw = ImageDraw.Draw(img)
    w, h = SIZE
    # the Templates card crops the top and puts a badge there: everything sits below y = 56
    draw.text((20, 62), d["title"], fill=INK, font=_font(28))
    model = d["model"] if len(d["model"]) <= 40 else d["model"][:37] + "..."
    draw.text((20, 100), model, fill=MUTED, font=_font(14))
    boxes = [("model", GREY), (d["node"], ORANGE), ("sampler", GREY)]
    bw, gap, y = 112, 14, 136
    for i, (label, colour) in enumerate(boxes):
        x = 20 + i * (bw + gap)
        draw.rounded_rectangle([x, y, x + bw, y + 44], radius=8, outline=colour, width=3)
        size = 15 if draw.textlength(label, font=_font(15)) <= bw - 12 else 12
        tw = draw.textlength(label, font=_font(size))
        draw.text((x + (bw - tw) / 2, y + 22 - size / 2 - 2), label, fill=INK, font=_font(size))
        if i:
            draw.line([x - gap + 2, y + 22, x - 4, y + 22], fill=MUTED, width=3)
    py, ps = 200, 140
    for i, (label, colour) in enumerate([("baseline", GREY), (f"GAG, scale {d['scale']:g}", ORANGE)]):
        x = 20 + i * (ps + 80)
        draw.rectangle([x, py, x + ps, py + ps - 40], outline=colour, width=3)
        draw.text((x + 4, py + ps - 32), label, fill=INK, font=_font(15))
    draw.text((20, h - 34), "ComfyUI-GAG: schematic of the workflow, not a render", fill=MUTED, font=_font(13))
    return img


def main(out: Path = WORKFLOWS) -> list[Path]:
    paths = []
    for name in sorted(TITLES):
        path = out / name.replace(".json", ".jpg")
        render(name).save(path, "JPEG", quality=85, optimize=True)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else WORKFLOWS):
        print(p, p.stat().st_size)

"""A labelled comparison grid: one row per (caption, seed), one column per guidance setting."""
from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 96  # pixels per image after nearest-neighbour upscaling
PAD = 6
LABEL_W = 230
HEAD_H = 46
PASS, FAIL = (40, 170, 60), (200, 40, 40)
_ASCII = {"λ": "lambda", "β": "beta", "τ": "tau", "α": "alpha", "‖": "|", "·": "*", "−": "-", "–": "-", "Δ": "d"}


def ascii_label(text: str) -> str:
    """Spell Greek letters and symbols out: the built-in bitmap font has only ASCII glyphs."""
    return "".join(_ASCII.get(ch, ch if ord(ch) < 128 else "?") for ch in text)


def comparison_grid(rows: list[str], columns: list[str], images: list[list[np.ndarray]],
                    correct: list[list[bool]] | None = None) -> Image.Image:
    """images[r][c] (S, S, 3) uint8; a green/red frame marks what the scorer judged correct/wrong."""
    font = ImageFont.load_default()
    w = LABEL_W + len(columns) * (CELL + PAD) + PAD
    h = HEAD_H + len(rows) * (CELL + PAD) + PAD
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(columns):
        x = LABEL_W + c * (CELL + PAD) + PAD
        for i, line in enumerate(textwrap.wrap(ascii_label(name), 15)[:4]):
            draw.text((x, 4 + 11 * i), line, fill=(0, 0, 0), font=font)
    for r, name in enumerate(rows):
        y = HEAD_H + r * (CELL + PAD) + PAD
        for i, line in enumerate(textwrap.wrap(ascii_label(name), 36)[:6]):
            draw.text((6, y + 4 + 12 * i), line, fill=(0, 0, 0), font=font)
        for c in range(len(columns)):
            x = LABEL_W + c * (CELL + PAD) + PAD
            if correct is not None:
                draw.rectangle([x - 3, y - 3, x + CELL + 2, y + CELL + 2], fill=PASS if correct[r][c] else FAIL)
            img = Image.fromarray(images[r][c]).resize((CELL, CELL), Image.NEAREST)
            canvas.paste(img, (x, y))
    return canvas

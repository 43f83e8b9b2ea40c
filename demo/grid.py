"""A labelled comparison grid: one row per (caption, seed), one column per guidance setting."""
from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 96  # pixels per image after nearest-neighbour upscaling
PAD = 6
LINE = 12  # pixels per text line
PASS, FAIL = (40, 170, 60), (200, 40, 40)
INK, GREY = (0, 0, 0), (90, 90, 90)
_ASCII = {"λ": "lambda", "β": "beta", "τ": "tau", "α": "alpha", "‖": "|", "·": "*", "−": "-", "–": "-", "Δ": "d"}


def ascii_label(text: str) -> str:
    """Spell Greek letters and symbols out: the built-in bitmap font has only ASCII glyphs."""
    return "".join(_ASCII.get(ch, ch if ord(ch) < 128 else "?") for ch in text)


def _wrap(draw: ImageDraw.ImageDraw, font, text: str, width: int) -> list[str]:
    """Greedy word wrap of `text` to lines at most `width` pixels wide (a longer word gets a line of its own)."""
    lines: list[str] = []
    for word in ascii_label(text).split():
        if lines and draw.textlength(lines[-1] + " " + word, font=font) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def comparison_grid(rows: list[str], columns: list[str], images: list[list[np.ndarray]],
                    correct: list[list[bool]] | None = None, scores: list[str] | None = None,
                    note: str | None = None) -> Image.Image:
    """images[r][c] (S, S, 3) uint8; a green/red frame marks what the scorer judged correct/wrong.

    `scores[c]` is printed under column c's header (e.g. the overall score of that setting); `note` is printed
    under the legend, wrapped to the grid's width.
    """
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_lines = [textwrap.wrap(ascii_label(name), 28)[:6] for name in rows]
    label_w = PAD + max((int(probe.textlength(line, font=font)) for ls in row_lines for line in ls), default=0) + PAD
    w = label_w + len(columns) * (CELL + PAD) + PAD
    head_lines = [_wrap(probe, font, name, CELL + PAD - 2)[:3] for name in columns]
    n_head = max((len(ls) for ls in head_lines), default=1) + (1 if scores else 0)
    legend = []
    if correct is not None:
        legend.append("Frame: green = the scorer judged the image correct for its caption, red = wrong.")
    if note:
        legend.append(note)
    legend_lines = [line for text in legend for line in _wrap(probe, font, text, w - 2 * PAD)]
    top = PAD + LINE * len(legend_lines) + (PAD if legend_lines else 0)
    head_h = top + LINE * n_head + PAD
    h = head_h + len(rows) * (CELL + PAD) + PAD
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(legend_lines):
        draw.text((PAD, PAD + LINE * i), line, fill=GREY, font=font)
    for c, lines in enumerate(head_lines):
        x = label_w + c * (CELL + PAD) + PAD
        for i, line in enumerate(lines):
            draw.text((x, top + LINE * i), line, fill=INK, font=font)
        if scores:
            draw.text((x, top + LINE * (n_head - 1)), ascii_label(scores[c]), fill=INK, font=font)
            draw.line([x, top + LINE * n_head - 1, x + CELL, top + LINE * n_head - 1], fill=INK)
    for r, lines in enumerate(row_lines):
        y = head_h + r * (CELL + PAD) + PAD
        for i, line in enumerate(lines):
            draw.text((PAD, y + 4 + LINE * i), line, fill=INK, font=font)
        for c in range(len(columns)):
            x = label_w + c * (CELL + PAD) + PAD
            if correct is not None:
                draw.rectangle([x - 3, y - 3, x + CELL + 2, y + CELL + 2], fill=PASS if correct[r][c] else FAIL)
            img = Image.fromarray(images[r][c]).resize((CELL, CELL), Image.NEAREST)
            canvas.paste(img, (x, y))
    return canvas

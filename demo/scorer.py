"""Reads an image back into objects (colour segmentation) and checks it against a caption, GenEval style."""
from __future__ import annotations

import math
from collections import deque
from functools import lru_cache
from itertools import product

import numpy as np

from .world import BACKGROUND, COLOURS, SHAPES, Obj, Spec, relation_holds, shape_mask

COLOUR_DISTANCE = 80.0  # largest RGB residual of a pixel read as a background/colour blend
MIN_AREA = 14  # components smaller than this many pixels are noise
MIN_IOU = 0.55  # a component whose best shape template fits worse than this is no object


def classify_pixels(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (H, W) int: index into COLOURS, −1 background, −2 unclassified.

    Each pixel p is read as a blend bg + a·(c − bg) of the background and a palette colour c: it belongs to c
    when that colour explains it best (smallest residual, below COLOUR_DISTANCE) with coverage a ≥ 0.5.
    """
    p = img.astype(np.float32)[:, :, None, :] - np.array(BACKGROUND, np.float32)  # (H, W, 1, 3)
    d = np.array(list(COLOURS.values()), np.float32) - np.array(BACKGROUND, np.float32)  # (C, 3)
    a = np.clip((p * d).sum(-1) / (d * d).sum(-1), 0.0, 1.0)  # (H, W, C) coverage
    resid = np.linalg.norm(p - a[..., None] * d, axis=-1)  # (H, W, C)
    best = resid.argmin(-1)  # (H, W)
    a_best = np.take_along_axis(a, best[..., None], -1)[..., 0]
    r_best = np.take_along_axis(resid, best[..., None], -1)[..., 0]
    labels = np.where(a_best >= 0.5, best, -1)
    labels[r_best > COLOUR_DISTANCE] = -2
    return labels


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, each as a boolean mask."""
    seen = np.zeros_like(mask)
    h, w = mask.shape
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp = np.zeros_like(mask)
        queue = deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            comp[y, x] = True
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    queue.append((yy, xx))
        out.append(comp)
    return out


_OFFSETS = list(product((-1, 0, 1), (-1, 0, 1), (-1, 0, 1)))  # half-pixel shifts of cx, cy and side
_PAD = 2  # empty pixels around a component's bounding box in its local window


@lru_cache(maxsize=1024)
def _templates(w: int, h: int) -> np.ndarray:
    """(len(SHAPES), len(_OFFSETS), h + 2·PAD, w + 2·PAD) masks of every shape fitted to a w×h box in its window."""
    size = max(w, h) + 2 * _PAD
    cx2, cy2, side2 = w + 2 * _PAD, h + 2 * _PAD, w + h  # half-pixel units, window coordinates
    t = np.stack([
        np.stack([shape_mask(s, (cx2 + dx) / 2, (cy2 + dy) / 2, (side2 + ds) / 2, size) for dx, dy, ds in _OFFSETS])
        for s in SHAPES
    ])
    return t[..., : h + 2 * _PAD, : w + 2 * _PAD]


def _best_shape(comp: np.ndarray) -> tuple[str | None, float, float, float]:
    """Best-fitting shape template near the component's bounding box: (shape or None, IoU, cx, cy)."""
    ys, xs = np.nonzero(comp)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    w, h = int(x1 - x0), int(y1 - y0)
    local = np.pad(comp[y0:y1, x0:x1], _PAD)  # (h + 2·PAD, w + 2·PAD)
    t = _templates(w, h)  # (S, K, h + 2·PAD, w + 2·PAD)
    iou = (t & local).sum((-1, -2)) / np.maximum((t | local).sum((-1, -2)), 1)  # (S, K)
    best_per_shape = iou.max(-1)
    i = int(best_per_shape.argmax())
    best_iou = float(best_per_shape[i])
    return (SHAPES[i] if best_iou >= MIN_IOU else None), best_iou, (x0 + x1) / 2, (y0 + y1) / 2


def detect(img: np.ndarray) -> list[Obj]:
    """All objects in an image: per palette colour, 4-connected components large and shape-like enough."""
    labels = classify_pixels(img)
    objs = []
    for ci, colour in enumerate(COLOURS):
        for comp in _components(labels == ci):
            area = int(comp.sum())
            if area < MIN_AREA:
                continue
            shape, _, cx, cy = _best_shape(comp)
            if shape is not None:
                objs.append(Obj(shape, colour, cx, cy, int(round(math.sqrt(area)))))
    return objs


def check(spec: Spec, objs: list[Obj]) -> bool:
    """GenEval's rule per task: named objects present (≥ 1), colours where named, exact count, relation."""
    of = lambda shape, colour=None: [o for o in objs if o.shape == shape and (colour is None or o.colour == colour)]  # noqa: E731
    if spec.task == "counting":
        return len(of(spec.shapes[0])) == spec.count
    if spec.task in ("single_object", "colors", "two_object", "color_attr"):
        return all(len(of(s, c)) >= 1 for s, c in zip(spec.shapes, spec.colours))
    if spec.task in ("position", "color_position"):
        a, b = of(spec.shapes[0], spec.colours[0]), of(spec.shapes[1], spec.colours[1])
        return any(relation_holds(x, y, spec.relation) for x in a for y in b)
    raise ValueError(f"unknown task {spec.task!r}")


def score(spec: Spec, img: np.ndarray) -> bool:
    """Does the image satisfy the caption spec?"""
    return check(spec, detect(img))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95 % for z = 1.96)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))

"""The synthetic world: coloured shapes on a plain background, captions from a fixed grammar, exact ground truth."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

SIZE = 32  # image side in pixels
BACKGROUND = (30, 30, 30)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
}
SHAPES = ("circle", "square", "triangle")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
NUMBERS = {2: "two", 3: "three"}
RELATIONS = ("left of", "right of", "above", "below")
# GenEval's task types that make sense in this world.
TASKS = ("single_object", "colors", "counting", "two_object", "position", "color_attr")
# Trained on, never evaluated: positions with colours, to teach attribute binding and layout together.
TRAIN_ONLY_TASKS = ("color_position",)

MIN_SIDE, MAX_SIDE = 10, 13  # object bounding-box side in pixels
GAP = 2  # minimum empty pixels between two objects' bounding boxes
POSITION_MARGIN = 4.0  # a left of b ⇔ cx_b − cx_a ≥ margin (likewise for the other relations)


@dataclass(frozen=True)
class Obj:
    """One object: shape, colour name, bounding-box centre (x, y) and side, all in pixels."""

    shape: str
    colour: str
    cx: float
    cy: float
    side: int


@dataclass(frozen=True)
class Spec:
    """What a caption asks for: one task type and its required objects, count and relation."""

    task: str
    shapes: tuple[str, ...]  # the named shapes (one or two)
    colours: tuple[str | None, ...]  # colour per named shape, None = any
    count: int = 1  # counting: exact number of shapes[0]
    relation: str | None = None  # position: shapes[0] <relation> shapes[1]


def caption_of(spec: Spec) -> str:
    """The fixed grammar: 'a red circle', 'two squares', 'a circle left of a square', ..."""

    def np_(i: int) -> str:
        c = spec.colours[i]
        return f"a {c} {spec.shapes[i]}" if c else f"a {spec.shapes[i]}"

    if spec.task in ("single_object", "colors"):
        return np_(0)
    if spec.task == "counting":
        return f"{NUMBERS[spec.count]} {PLURAL[spec.shapes[0]]}"
    if spec.task in ("two_object", "color_attr"):
        return f"{np_(0)} and {np_(1)}"
    if spec.task in ("position", "color_position"):
        return f"{np_(0)} {spec.relation} {np_(1)}"
    raise ValueError(f"unknown task {spec.task!r}")


def relation_holds(a: Obj, b: Obj, relation: str, margin: float = POSITION_MARGIN) -> bool:
    """a <relation> b on centres with a margin: left of ⇔ b.cx − a.cx ≥ margin (image y grows downwards)."""
    if relation == "left of":
        return b.cx - a.cx >= margin
    if relation == "right of":
        return a.cx - b.cx >= margin
    if relation == "above":
        return b.cy - a.cy >= margin
    if relation == "below":
        return a.cy - b.cy >= margin
    raise ValueError(f"unknown relation {relation!r}")


def random_spec(rng: random.Random, task: str) -> Spec:
    """A random caption spec of one task type."""
    if task == "single_object":
        return Spec(task, (rng.choice(SHAPES),), (None,))
    if task == "colors":
        return Spec(task, (rng.choice(SHAPES),), (rng.choice(list(COLOURS)),))
    if task == "counting":
        return Spec(task, (rng.choice(SHAPES),), (None,), count=rng.choice((2, 3)))
    s0, s1 = rng.sample(SHAPES, 2)
    if task == "two_object":
        return Spec(task, (s0, s1), (None, None))
    if task == "position":
        return Spec(task, (s0, s1), (None, None), relation=rng.choice(RELATIONS))
    c0, c1 = rng.sample(list(COLOURS), 2)
    if task == "color_attr":
        return Spec(task, (s0, s1), (c0, c1))
    if task == "color_position":
        return Spec(task, (s0, s1), (c0, c1), relation=rng.choice(RELATIONS))
    raise ValueError(f"unknown task {task!r}")


def _overlaps(a: Obj, b: Obj, gap: int = GAP) -> bool:
    """Bounding boxes closer than `gap` pixels."""
    return (abs(a.cx - b.cx) < (a.side + b.side) / 2 + gap) and (abs(a.cy - b.cy) < (a.side + b.side) / 2 + gap)


def _place(rng: random.Random, shape: str, colour: str, others: list[Obj]) -> Obj | None:
    """A random object not overlapping `others`, or None after many tries."""
    for _ in range(200):
        side = rng.randint(MIN_SIDE, MAX_SIDE)
        lo, hi = side / 2 + 1, SIZE - side / 2 - 1
        o = Obj(shape, colour, round(rng.uniform(lo, hi) * 2) / 2, round(rng.uniform(lo, hi) * 2) / 2, side)
        if not any(_overlaps(o, p) for p in others):
            return o
    return None


def scene_for(rng: random.Random, spec: Spec) -> list[Obj]:
    """A random scene that satisfies `spec` exactly (unnamed colours drawn uniformly, no extra objects)."""
    colour = lambda c: c if c else rng.choice(list(COLOURS))  # noqa: E731
    for _ in range(1000):
        objs: list[Obj] = []
        if spec.task == "counting":
            wanted = [(spec.shapes[0], colour(None)) for _ in range(spec.count)]
        else:
            wanted = [(s, colour(c)) for s, c in zip(spec.shapes, spec.colours)]
        for shape, c in wanted:
            o = _place(rng, shape, c, objs)
            if o is None:
                break
            objs.append(o)
        else:
            if spec.relation is None or relation_holds(objs[0], objs[1], spec.relation, POSITION_MARGIN + 2):
                return objs
    raise RuntimeError(f"could not place a scene for {spec}")


def shape_coverage(shape: str, cx: float, cy: float, side: float, size: int = SIZE, ss: int = 4) -> np.ndarray:
    """(size, size) float32 fraction of each pixel covered by the shape (ss×ss supersampling); triangles point up."""
    y, x = (np.mgrid[0 : size * ss, 0 : size * ss].astype(np.float32) + 0.5) / ss
    h = side / 2
    if shape == "square":
        m = (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)
    elif shape == "circle":
        m = (x - cx) ** 2 + (y - cy) ** 2 <= h * h
    elif shape == "triangle":
        # apex (cx, cy − h), base from (cx − h, cy + h) to (cx + h, cy + h)
        t = (y - (cy - h)) / side  # 0 at the apex, 1 at the base
        m = (t >= 0) & (t <= 1) & (np.abs(x - cx) <= h * t)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return m.reshape(size, ss, size, ss).mean(axis=(1, 3), dtype=np.float32)


def shape_mask(shape: str, cx: float, cy: float, side: float, size: int = SIZE) -> np.ndarray:
    """Boolean (size, size) mask of the pixels at least half covered by the shape."""
    return shape_coverage(shape, cx, cy, side, size) >= 0.5


def render(objs: list[Obj], size: int = SIZE) -> np.ndarray:
    """(size, size, 3) uint8 image of the objects on the plain background, edges anti-aliased by coverage."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUND
    for o in objs:
        a = shape_coverage(o.shape, o.cx, o.cy, o.side, size)[:, :, None]
        img = img * (1 - a) + np.array(COLOURS[o.colour], np.float32) * a
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def sample(rng: random.Random, tasks: tuple[str, ...] = TASKS + TRAIN_ONLY_TASKS) -> tuple[Spec, list[Obj], np.ndarray]:
    """One training example: a spec of a uniformly drawn task type, a scene satisfying it, and its image."""
    spec = random_spec(rng, rng.choice(tasks))
    objs = scene_for(rng, spec)
    return spec, objs, render(objs)


# ----------------------------------------------------------------------------------------------------------
# Tokens: a closed vocabulary; index 0 pads, index 1 is a start token present in every caption (also the
# empty caption used as CFG's unconditional input), so every attention row has at least one key.
VOCAB = ["<pad>", "<s>", "a", "and", "two", "three", "of", "left", "right", "above", "below",
         *COLOURS, *SHAPES, *PLURAL.values()]
TOKEN = {w: i for i, w in enumerate(VOCAB)}
MAX_TOKENS = 9  # <s> + the longest caption, 'a red circle left of a blue square'


def tokenize(caption: str) -> list[int]:
    """Caption → [<s>, word ids..., <pad>...] of length MAX_TOKENS; '' is the unconditional caption."""
    words = caption.split()
    unknown = [w for w in words if w not in TOKEN]
    if unknown:
        raise ValueError(f"caption {caption!r} has words outside the vocabulary: {unknown}")
    ids = [TOKEN["<s>"]] + [TOKEN[w] for w in words]
    if len(ids) > MAX_TOKENS:
        raise ValueError(f"caption {caption!r} is longer than {MAX_TOKENS - 1} words")
    return ids + [TOKEN["<pad>"]] * (MAX_TOKENS - len(ids))


def all_specs(task: str) -> list[Spec]:
    """Every distinct caption spec of one task type, in a fixed order."""
    cs = list(COLOURS)
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    if task == "single_object":
        return [Spec(task, (s,), (None,)) for s in SHAPES]
    if task == "colors":
        return [Spec(task, (s,), (c,)) for c in cs for s in SHAPES]
    if task == "counting":
        return [Spec(task, (s,), (None,), count=n) for n in (2, 3) for s in SHAPES]
    if task == "two_object":
        return [Spec(task, p, (None, None)) for p in pairs]
    if task == "position":
        return [Spec(task, p, (None, None), relation=r) for r in RELATIONS for p in pairs]
    if task == "color_attr":
        return [Spec(task, p, (c0, c1)) for p in pairs for c0 in cs for c1 in cs if c0 != c1]
    raise ValueError(f"unknown task {task!r}")

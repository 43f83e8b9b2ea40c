"""Sample a fixed prompt × seed set under each guidance setting, score it, tabulate with confidence intervals."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from . import world
from .diffusion import sample
from .guidance import Guidance
from .scorer import score, wilson


@dataclass(frozen=True)
class Item:
    """One (prompt, seed) cell of the evaluation set."""

    task: str
    spec: world.Spec
    caption: str
    seed: int
    slot: int  # which of the task's prompt slots (a caption can fill several when the task has few captions)
    index: int  # position in the set


def prompt_set(prompts_per_task: int, seeds: int, tasks: tuple[str, ...] = world.TASKS, first_seed: int = 0) -> list[Item]:
    """A fixed set: per task type, `prompts_per_task` captions spread over all its captions, × `seeds` seeds."""
    items = []
    for task in tasks:
        specs = world.all_specs(task)
        random.Random(f"prompts-{task}").shuffle(specs)
        chosen = [specs[i % len(specs)] for i in range(prompts_per_task)]
        for seed in range(first_seed, first_seed + seeds):
            for slot, spec in enumerate(chosen):
                items.append(Item(task, spec, world.caption_of(spec), seed, slot, len(items)))
    return items


def initial_noise(items: list[Item], size: int = world.SIZE) -> torch.Tensor:
    """(len(items), 3, size, size) Gaussian noise, one generator per (task, slot, seed): the same for every method."""
    out = torch.empty(len(items), 3, size, size)
    for j, it in enumerate(items):
        g = torch.Generator().manual_seed(it.seed * 1_000_003 + world.TASKS.index(it.task) * 1009 + it.slot)
        out[j] = torch.randn(3, size, size, generator=g)
    return out


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [−1, 1], (B, 3, S, S) → uint8 (B, S, S, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def generate(model, items: list[Item], guidance: Guidance, *, steps: int, cfg_scale: float, batch: int,
             progress=None) -> np.ndarray:
    """Sample every item under one guidance setting; (len(items), S, S, 3) uint8."""
    noise = initial_noise(items)
    ids = torch.tensor([world.tokenize(it.caption) for it in items])
    out = []
    for a in range(0, len(items), batch):
        e = min(len(items), a + batch)
        tick = (lambda n=e - a: progress(n)) if progress is not None else None
        x = sample(model, ids[a:e], noise[a:e], steps=steps, cfg_scale=cfg_scale, guidance=guidance, progress=tick)
        out.append(to_uint8(x))
    return np.concatenate(out)


def score_all(items: list[Item], images: np.ndarray) -> np.ndarray:
    """Boolean per item: does the image satisfy its caption?"""
    return np.array([score(it.spec, img) for it, img in zip(items, images)])


def mcnemar_p(better: int, worse: int) -> float:
    """Exact two-sided McNemar test on the discordant pairs (binomial, p = 1/2)."""
    n = better + worse
    if n == 0:
        return 1.0
    k = min(better, worse)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def table(items: list[Item], results: dict[str, np.ndarray], baseline: str | None = "baseline") -> str:
    """Rows: guidance settings; columns: task types and overall, 'k/n p% [95% Wilson CI]'; paired test vs baseline."""
    tasks = [t for t in world.TASKS if any(it.task == t for it in items)]
    task_of = np.array([it.task for it in items])
    cols = [*tasks, "overall"]
    width = max(len(k) for k in results) + 2
    head = "setting".ljust(width) + "".join(c.ljust(19) for c in cols)
    if baseline in results:
        head += "vs baseline (better/worse, McNemar p)"
    lines = [head, "-" * len(head)]
    for label, ok in results.items():
        row = label.ljust(width)
        for c in cols:
            sel = ok if c == "overall" else ok[task_of == c]
            k, n = int(sel.sum()), len(sel)
            lo, hi = wilson(k, n)
            row += f"{100 * k / max(n, 1):3.0f}% [{100 * lo:2.0f}-{100 * hi:3.0f}]".ljust(19)
        if baseline in results and label != baseline:
            base = results[baseline]
            better, worse = int((ok & ~base).sum()), int((~ok & base).sum())
            row += f"+{better}/-{worse}, p={mcnemar_p(better, worse):.2g}"
        lines.append(row)
    n_task = {t: int((task_of == t).sum()) for t in tasks}
    lines.append(f"n per task: {n_task}; overall n = {len(items)}; 95% Wilson intervals in brackets")
    return "\n".join(lines)

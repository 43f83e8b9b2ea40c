"""python -m demo.effect: how far GAG moves each attention output, on both bundled models, per λ.

Two numbers per setting, both means over the guided (query token, head) rows of every guided call:
- telemetry: ‖λ·c·G‖/‖O_s‖, what gag_core's GuidanceStats and the node's live chart report. For joint attention
  O_s and G are those of the text sub-operator (O_s^t), before the row's text mass m mixes them back.
- moved: ‖out(λ) − out(0)‖/‖out(0)‖ over the image query rows, the push on the whole attention output. For
  cross-attention out(0) = O_s, so it equals the telemetry; for joint attention out(0) = O_d + m·(O_s^t − O_d^t),
  so it is the push after mixing back, the quantity comparable across the two architectures.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from . import world
from .__main__ import floats, positive
from .diffusion import sample
from .evaluate import initial_noise, prompt_set
from .guidance import Guidance
from .weights import DEFAULT_PATHS, load
from gag_core import GuidanceStats


@dataclasses.dataclass
class Moved:
    """A Guidance for diffusion.sample that also runs λ = 0 on every guided call and sums the relative push."""

    guidance: Guidance
    total: float = 0.0
    rows: int = 0

    def active(self, step: int, steps: int) -> bool:
        return self.guidance.active(step, steps)

    def attention(self, cond_rows: slice | None = None):
        guided = self.guidance.attention(cond_rows)
        at_zero = dataclasses.replace(self.guidance, scale=0.0, stats=None).attention(cond_rows)

        def attend(index, q, k, v, mask, **kw):
            out, ref = guided(index, q, k, v, mask, **kw), at_zero(index, q, k, v, mask, **kw)  # (B, H, N, D)
            img = slice(kw["text_range"][1], None) if kw.get("text_range") else slice(None)  # image query rows
            num = (out - ref)[:, :, img].double().norm(dim=-1)
            den = ref[:, :, img].double().norm(dim=-1)
            keep = den > 0
            self.total += float((num[keep] / den[keep]).sum())
            self.rows += int(keep.sum())
            return out

        return attend

    @property
    def mean(self) -> float:
        return self.total / max(self.rows, 1)


def measure(model, scales: list[float], *, steps: int, cfg: float, prompts_per_task: int, seeds: int,
            method: str = "gag") -> list[tuple[float, float, float]]:
    """[(λ, telemetry ‖λ·c·G‖/‖O_s‖, moved ‖out(λ) − out(0)‖/‖out(0)‖)] on a fixed prompt × seed set."""
    items = prompt_set(prompts_per_task, seeds)
    ids = torch.tensor([world.tokenize(it.caption) for it in items])
    noise = initial_noise(items)
    rows = []
    for lam in scales:
        g = Guidance(method, lam, stats=GuidanceStats())
        moved = Moved(g)
        sample(model, ids, noise, steps=steps, cfg_scale=cfg, guidance=moved)
        rows.append((lam, g.stats.summary()["rel_guidance"], moved.mean))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.effect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["unet", "mmdit", "both"], default="both")
    p.add_argument("--scale", type=floats, default=[1.0, 2.0, 5.0, 10.0, 20.0], help="GAG λ (list)")
    p.add_argument("--steps", type=positive, default=20)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--prompts-per-task", type=positive, default=2)
    p.add_argument("--seeds", type=positive, default=1)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"{args.steps} DDIM steps, CFG {args.cfg:g}, {args.prompts_per_task} prompts × {args.seeds} seeds per task "
          "type; GAG β = 0, τ = 15, α = 1.5, every layer, both CFG passes")
    print()
    print("| model | λ | telemetry ‖λ·c·G‖/‖O_s‖ | moved ‖out(λ) − out(0)‖/‖out(0)‖ |")
    print("|---|---|---|---|")
    for arch in (["unet", "mmdit"] if args.arch == "both" else [args.arch]):
        model = load(DEFAULT_PATHS[arch])
        for lam, tele, moved in measure(model, args.scale, steps=args.steps, cfg=args.cfg,
                                        prompts_per_task=args.prompts_per_task, seeds=args.seeds):
            print(f"| {arch} | {lam:g} | {tele:.3f} | {moved:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

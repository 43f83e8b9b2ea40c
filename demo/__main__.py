"""python -m demo: baseline vs PLADIS vs GAG on the bundled tiny text-to-image model, scored per GenEval task type.

Every sweep flag takes a comma-separated list; GAG runs for every combination, PLADIS for every s. Examples:
  python -m demo                                     # the default comparison (about a minute on 2 cores)
  python -m demo --scale 1,2,5,10 --tau 15,0.5 --tau-mode abs,rel --no-pladis
  python -m demo --passes both,cond --window 0:1,0:0.5,0.5:1 --layers all,down,mid,up --no-pladis
  python -m demo --inversion                         # DDIM inversion–reconstruction check
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gag_core import GuidanceStats, get_preset

from .evaluate import generate, prompt_set, score_all, table
from .grid import comparison_grid
from .guidance import Guidance
from .inversion import inversion_check
from .weights import DEFAULT_WEIGHTS, load, metadata

PRESET = get_preset("sd15")  # the demo's UNet is SD-1.5-like: cross-attention in every block


def floats(s: str) -> list[float]:
    """'1,2.5' → [1.0, 2.5]."""
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def names(s: str) -> list[str]:
    """'a,b' → ['a', 'b']."""
    return [x.strip() for x in s.split(",") if x.strip()]


def windows(s: str) -> list[tuple[float, float]]:
    """'0:1,0:0.5' → [(0, 1), (0, 0.5)]: fractions of the sampling steps, start inclusive, end exclusive."""
    out = []
    for part in names(s):
        try:
            a, b = (float(x) for x in part.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"a window is start:end in [0, 1], got {part!r}") from None
        out.append((a, b))
    return out


def layer_subset(name: str, n_layers: int, down: int) -> frozenset[int] | None:
    """'all' | 'down' | 'mid' | 'up' | indices joined by '+' (e.g. '0+4+8') → set of layer indices (None = all)."""
    if name == "all":
        return None
    if name == "down":
        return frozenset(range(down))
    if name == "mid":
        return frozenset([down])
    if name == "up":
        return frozenset(range(down + 1, n_layers))
    try:
        idx = frozenset(int(x) for x in name.split("+"))
    except ValueError:
        raise ValueError(f"layers must be all, down, mid, up or indices joined by '+', got {name!r}") from None
    bad = sorted(i for i in idx if not 0 <= i < n_layers)
    if bad:
        raise ValueError(f"layer indices {bad} out of range 0..{n_layers - 1}")
    return idx


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    p.add_argument("--out", default="out/demo", help="folder for grid.png and results.json")
    p.add_argument("--prompts-per-task", type=int, default=8)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed … first-seed + seeds − 1 (a fresh "
                   "set of seeds replicates a sweep's finding on images it was not chosen on)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--batch", type=int, default=72)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--scale", type=floats, default=[PRESET.scale], help="GAG λ (list)")
    p.add_argument("--beta", type=floats, default=[PRESET.beta], help="GAG β (list)")
    p.add_argument("--tau", type=floats, default=[PRESET.tau], help="GAG τ (list; 0 = no cap)")
    p.add_argument("--tau-mode", type=names, default=["abs"], help="abs: cap ‖G‖ at τ; rel: at τ·‖O_s‖ (list)")
    p.add_argument("--alpha", type=floats, default=[PRESET.alpha], help="α of α-entmax (list)")
    p.add_argument("--pladis-scale", type=floats, default=[PRESET.pladis_scale], help="PLADIS s (list)")
    p.add_argument("--passes", type=names, default=["both"], help="both CFG passes or cond only (list)")
    p.add_argument("--window", type=windows, default=[(0.0, 1.0)], help="start:end step fractions (list)")
    p.add_argument("--layers", type=names, default=["all"], help="all, down, mid, up or e.g. 0+4 (list)")
    p.add_argument("--no-pladis", action="store_true", help="leave PLADIS out")
    p.add_argument("--no-gag", action="store_true", help="leave GAG out")
    p.add_argument("--sparse", action="store_true", help="also run pure sparse attention (O_s)")
    p.add_argument("--inversion", action="store_true", help="run the DDIM inversion–reconstruction check instead")
    p.add_argument("--inversion-images", type=int, default=48)
    p.add_argument("--inversion-matched", action="store_true",
                   help="each operator inverts with itself (default: one dense inversion shared by all)")
    p.add_argument("--grid-columns", type=int, default=8, help="at most this many settings in the grid")
    return p.parse_args(argv)


def settings(args, n_layers: int, down: int, with_stats: bool) -> list[Guidance]:
    """Baseline, then PLADIS for each s, then GAG for every combination of the sweep flags."""
    out = [Guidance()]
    common = list(itertools.product(args.alpha, args.passes, args.window, args.layers))
    if args.sparse:
        out += [Guidance("sparse", 1.0, alpha=a, passes=p, window=w, layers=layer_subset(ly, n_layers, down),
                         layers_name=ly) for a, p, w, ly in common]
    if not args.no_pladis:
        out += [Guidance("pladis", s, alpha=a, passes=p, window=w, layers=layer_subset(ly, n_layers, down),
                         layers_name=ly) for s in args.pladis_scale for a, p, w, ly in common]
    if not args.no_gag:
        for lam, beta, tau, mode in itertools.product(args.scale, args.beta, args.tau, args.tau_mode):
            for a, p, w, ly in common:
                out.append(Guidance("gag", lam, beta, tau or None, mode, a, p, w, layer_subset(ly, n_layers, down), ly,
                                    stats=GuidanceStats() if with_stats else None))
    return out


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    model = load(args.weights)
    meta = metadata(args.weights)
    down = sum(model.cfg.blocks)  # cross-attention layers 0..down−1 on the way down, then mid, then up
    try:
        configs = settings(args, model.n_attn, down, with_stats=True)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {model.n_attn} "
          f"cross-attention layers, trained {meta.get('steps', '?')} steps ({meta.get('train_seconds', '?')} s)")

    if args.inversion:
        guid = [Guidance(), Guidance("sparse", 1.0, alpha=args.alpha[0]),
                *[c for c in configs if c.method in ("pladis", "gag")]]
        with tqdm(total=len(guid) + 1, desc="inversion", unit="run") as bar:
            report = inversion_check(model, guid, n=args.inversion_images, steps=args.steps,
                                     matched=args.inversion_matched, progress=bar.update)
        print(report)
        print(f"total {time.time() - t0:.1f}s")
        return 0

    items = prompt_set(args.prompts_per_task, args.seeds, first_seed=args.first_seed)
    results, images = {}, {}
    with tqdm(total=len(configs) * len(items) * args.steps, desc="sampling", unit="img·step",
              unit_scale=True, smoothing=0.1) as bar:
        for g in configs:
            bar.set_postfix_str(g.label[:40])
            imgs = generate(model, items, g, steps=args.steps, cfg_scale=args.cfg, batch=args.batch,
                            progress=bar.update)
            images[g.label] = imgs
            results[g.label] = score_all(items, imgs)
    t_sample = time.time() - t0
    print()
    print(f"alignment (fraction of images the scorer judges correct) — {args.prompts_per_task} prompts × "
          f"{args.seeds} seeds (from {args.first_seed}) per task type, {args.steps} DDIM steps, CFG {args.cfg:g}")
    print(table(items, results))
    print()
    for g in configs:
        if g.stats is not None and g.stats.calls:
            s = g.stats.summary()
            print(f"{g.label}: mean ‖λ·c·G‖/‖O_s‖ = {s['rel_guidance']:.3f}, capped {100 * s['capped_fraction']:.1f}% "
                  f"of (token, head) rows, ‖Δ∥‖² share of ‖Δ‖² = {s['parallel_share']:.2f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shown = configs[: args.grid_columns]
    rows = [it for it in items if it.seed == args.first_seed][:: max(1, args.prompts_per_task // 2)]
    grid = comparison_grid([f"{it.caption} (seed {it.seed})" for it in rows], [g.label for g in shown],
                           [[images[g.label][it.index] for g in shown] for it in rows],
                           [[bool(results[g.label][it.index]) for g in shown] for it in rows])
    grid.save(out / "grid.png")
    (out / "results.json").write_text(json.dumps({
        "settings": [g.label for g in configs],
        "items": [{"task": it.task, "caption": it.caption, "seed": it.seed,
                   **{g.label: bool(results[g.label][it.index]) for g in configs}} for it in items],
        "steps": args.steps, "cfg": args.cfg, "weights_meta": meta,
    }, indent=1))
    print(f"grid: {out / 'grid.png'}  results: {out / 'results.json'}  "
          f"(sampling {t_sample:.1f}s, total {time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

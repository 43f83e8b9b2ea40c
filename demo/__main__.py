"""python -m demo: baseline vs PLADIS vs GAG on the bundled tiny text-to-image models, scored per GenEval task type.

Two bundled models: a UNet with cross-attention and an MMDiT with joint attention (--arch unet|mmdit|both).
For the MMDiT every GAG setting also runs as the ablation "GAG whole-row" (the joint rule projected on the
whole joint row instead of the text retrieval; --no-row-ablation leaves it out). The default set is 6 task types
× 8 prompts × 3 seeds for the UNet and × 4 prompts × 3 seeds (its first half) for the MMDiT, which samples slower.
Every sweep flag takes a comma-separated list; GAG runs for every combination, PLADIS for every s. Examples:
  python -m demo                                     # the default comparison, both models
  python -m demo --steps 4 --cfg 1 --scale 1,2,5     # the few-step regime without CFG, a λ sweep
  python -m demo --scale 1,2,5,10 --tau 15,0.5 --tau-mode abs,rel --no-pladis
  python -m demo --passes both,cond --window 0:1,0:0.5,0.5:1 --layers all,down,mid,up --no-pladis
  python -m demo --inversion                         # DDIM inversion–reconstruction check
  python -m demo.report out/demo/mmdit/results.json  # the saved results as a Markdown table
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
from .weights import DEFAULT_PATHS, load, metadata

# The UNet is SD-1.5-like (cross-attention in every block); the MMDiT is FLUX.1-like (double-stream blocks).
PRESETS = {"unet": get_preset("sd15"), "mmdit": get_preset("flux1")}
ARCH_CHOICES = {"unet": ("unet",), "mmdit": ("mmdit",), "both": ("unet", "mmdit")}
# The default prompt × seed set per architecture (prompts per task type, seeds): the MMDiT samples 1.5× slower
# per image and runs one setting more (the whole-row ablation), so its default set is the first half of the
# UNet's prompts (the same seeds) to keep `python -m demo` short.
DEFAULT_SET = {"unet": (8, 3), "mmdit": (4, 3)}


def floats(s: str) -> list[float]:
    """'1,2.5' → [1.0, 2.5]."""
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def positive(s: str) -> int:
    """'3' → 3; an integer ≥ 1."""
    try:
        n = int(s)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {s[:40]!r}")
    return n


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


def layer_subset(name: str, n_layers: int, down: int | None) -> frozenset[int] | None:
    """'all' | 'down' | 'mid' | 'up' | indices joined by '+' (e.g. '0+4+8') → set of layer indices (None = all).

    down: the number of down-path layers of a UNet; None for the MMDiT, whose blocks have no down/mid/up.
    """
    if name == "all":
        return None
    if down is None and name in ("down", "mid", "up"):
        raise ValueError(f"layers {name!r} names a UNet path; the MMDiT's blocks are 'all' or indices joined by '+'")
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
        raise ValueError(f"layers {name!r}: indices {bad} out of range 0..{n_layers - 1}")
    return idx


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCH_CHOICES), default="both", help="which bundled model(s)")
    p.add_argument("--weights", default=str(DEFAULT_PATHS["unet"]), help="the UNet's weights")
    p.add_argument("--mmdit-weights", default=str(DEFAULT_PATHS["mmdit"]), help="the MMDiT's weights")
    p.add_argument("--out", default="out/demo", help="folder for <arch>/grid.png and <arch>/results.json")
    p.add_argument("--prompts-per-task", type=positive, default=None,
                   help="default: 8 for the UNet, 4 for the MMDiT (the first 4 of the UNet's)")
    p.add_argument("--seeds", type=positive, default=None, help="default: 3")
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed … first-seed + seeds − 1 (a fresh "
                   "set of seeds replicates a sweep's finding on images it was not chosen on)")
    p.add_argument("--steps", type=positive, default=20, help="DDIM steps")
    p.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--batch", type=positive, default=72)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--scale", type=floats, default=None, help="GAG λ (list; default: the preset)")
    p.add_argument("--beta", type=floats, default=None, help="GAG β (list)")
    p.add_argument("--tau", type=floats, default=None, help="GAG τ (list; 0 = no cap)")
    p.add_argument("--tau-mode", type=names, default=["abs"], help="abs: cap ‖G‖ at τ; rel: at τ·‖O_s‖ (list)")
    p.add_argument("--alpha", type=floats, default=None, help="α of α-entmax (list)")
    p.add_argument("--pladis-scale", type=floats, default=None, help="PLADIS s (list)")
    p.add_argument("--passes", type=names, default=["both"], help="both CFG passes or cond only (list)")
    p.add_argument("--window", type=windows, default=[(0.0, 1.0)], help="start:end step fractions (list)")
    p.add_argument("--layers", type=names, default=["all"], help="all, down, mid, up or e.g. 0+4 (list)")
    p.add_argument("--no-pladis", action="store_true", help="leave PLADIS out")
    p.add_argument("--no-gag", action="store_true", help="leave GAG out")
    p.add_argument("--no-row-ablation", action="store_true", help="MMDiT: leave the GAG whole-row ablation out")
    p.add_argument("--sparse", action="store_true", help="also run pure sparse attention (O_s)")
    p.add_argument("--inversion", action="store_true", help="run the DDIM inversion–reconstruction check instead")
    p.add_argument("--inversion-images", type=positive, default=48)
    p.add_argument("--inversion-matched", action="store_true",
                   help="each operator inverts with itself (default: one dense inversion shared by all)")
    p.add_argument("--grid-columns", type=int, default=8, help="at most this many settings in the grid")
    return p.parse_args(argv)


def with_preset(args, arch: str) -> argparse.Namespace:
    """args with the sweep lists left unset filled from the architecture's preset row, the set from DEFAULT_SET."""
    preset, out = PRESETS[arch], argparse.Namespace(**vars(args))
    for name, default in zip(("prompts_per_task", "seeds"), DEFAULT_SET[arch]):
        if getattr(out, name) is None:
            setattr(out, name, default)
    for name in ("scale", "beta", "tau", "alpha", "pladis_scale"):
        if getattr(out, name) is None:
            setattr(out, name, [getattr(preset, name)])
    return out


def settings(args, n_layers: int, down: int | None, with_stats: bool, joint: bool = False) -> list[Guidance]:
    """Baseline, then PLADIS for each s, then GAG for every combination of the sweep flags.

    joint (the MMDiT): each GAG setting is followed by its whole-row ablation unless args.no_row_ablation.
    """
    if joint and "rel" in args.tau_mode:
        raise ValueError("--tau-mode rel is implemented for cross-attention only; use --arch unet")
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
                if joint and not args.no_row_ablation:
                    out.append(Guidance("gag_row", lam, beta, tau or None, mode, a, p, w,
                                        layer_subset(ly, n_layers, down), ly,
                                        stats=GuidanceStats() if with_stats else None))
    return out


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    archs = ARCH_CHOICES[args.arch]
    runs = []
    for arch in archs:  # load and validate everything before sampling anything
        path = args.weights if arch == "unet" else args.mmdit_weights
        try:
            model = load(path)
            if model.arch != arch:
                raise ValueError(f"{str(path)!r} holds a {model.arch} model, expected {arch}")
            a = with_preset(args, arch)
            down = sum(model.cfg.blocks) if arch == "unet" else None  # UNet: layers 0..down−1, mid, up
            configs = settings(a, model.n_attn, down, with_stats=True, joint=arch == "mmdit")
        except (ValueError, FileNotFoundError) as e:
            print(f"error ({arch}): {e}", file=sys.stderr)
            return 2
        runs.append((a, arch, model, metadata(path), configs))
    for a, arch, model, meta, configs in runs:
        t_arch = time.time()
        run_one(a, arch, model, meta, configs)
        print(f"{arch}: {time.time() - t_arch:.1f}s")
        print()
    print(f"total {time.time() - t0:.1f}s")
    return 0


def run_one(args, arch: str, model, meta: dict, configs: list[Guidance]) -> None:
    """Sample, score, print and save one architecture's comparison (or its inversion check)."""
    kind = "joint-attention blocks (double-stream)" if arch == "mmdit" else "cross-attention layers"
    print(f"== {arch}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {model.n_attn} {kind}, "
          f"trained {meta.get('steps', '?')} steps ({meta.get('train_seconds', '?')} s)")

    if args.inversion:
        guid = [Guidance(), Guidance("sparse", 1.0, alpha=args.alpha[0]),
                *[c for c in configs if c.method in ("pladis", "gag", "gag_row")]]
        with tqdm(total=len(guid) + 1, desc=f"inversion {arch}", unit="run") as bar:
            report = inversion_check(model, guid, n=args.inversion_images, steps=args.steps,
                                     matched=args.inversion_matched, progress=bar.update)
        print(report)
        return

    t0 = time.time()
    items = prompt_set(args.prompts_per_task, args.seeds, first_seed=args.first_seed)
    results, images = {}, {}
    with tqdm(total=len(configs) * len(items) * args.steps, desc=f"sampling {arch}", unit="img·step",
              unit_scale=True, smoothing=0.1) as bar:
        for g in configs:
            bar.set_postfix_str(g.label[:40])
            imgs = generate(model, items, g, steps=args.steps, cfg_scale=args.cfg, batch=args.batch,
                            progress=bar.update)
            images[g.label] = imgs
            results[g.label] = score_all(items, imgs)
    t_sample = time.time() - t0
    print()
    print(f"{arch}: alignment (fraction of images the scorer judges correct) — {args.prompts_per_task} prompts × "
          f"{args.seeds} seeds (from {args.first_seed}) per task type, {args.steps} DDIM steps, CFG {args.cfg:g}")
    print(table(items, results))
    print()
    for g in configs:
        if g.stats is not None and g.stats.calls:
            s = g.stats.summary()
            print(f"{g.label}: mean ‖λ·c·G‖/‖O_s‖ = {s['rel_guidance']:.3f}, capped {100 * s['capped_fraction']:.1f}% "
                  f"of (token, head) rows, ‖Δ∥‖² share of ‖Δ‖² = {s['parallel_share']:.2f}")

    out = Path(args.out) / arch
    out.mkdir(parents=True, exist_ok=True)
    shown = configs[: args.grid_columns]
    rows = [it for it in items if it.seed == args.first_seed][:: max(1, args.prompts_per_task // 2)]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    side = images[shown[0].label][0].shape[0]
    note = (f"These are {side}-pixel images from a {params:.1f}M-parameter {arch.upper()} trained here on coloured "
            f"shapes ({args.steps} DDIM steps, CFG {args.cfg:g}); the score under each setting is over all "
            f"{len(items)} images, a measuring harness, not how GAG looks on SDXL or FLUX.")
    scores = [f"score {100 * np.mean(results[g.label]):.0f}% of {len(items)}" for g in shown]
    grid = comparison_grid([f"{it.caption} (seed {it.seed})" for it in rows], [g.label for g in shown],
                           [[images[g.label][it.index] for g in shown] for it in rows],
                           [[bool(results[g.label][it.index]) for g in shown] for it in rows], scores, note)
    grid.save(out / "grid.png")
    (out / "results.json").write_text(json.dumps({
        "arch": arch,
        "settings": [g.label for g in configs],
        "items": [{"task": it.task, "caption": it.caption, "seed": it.seed,
                   **{g.label: bool(results[g.label][it.index]) for g in configs}} for it in items],
        "steps": args.steps, "cfg": args.cfg, "weights_meta": meta,
        "stats": {g.label: g.stats.summary() for g in configs if g.stats is not None and g.stats.calls},
    }, indent=1))
    print(f"grid: {out / 'grid.png'}  results: {out / 'results.json'}  (sampling {t_sample:.1f}s)")


if __name__ == "__main__":
    sys.exit(main())

"""Train the bundled model on the synthetic world on a CPU (the README gives the two commands that made the weights)."""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from . import world
from .diffusion import v_loss
from .weights import ARCHS, DEFAULT_PATHS, load, metadata, save


def batch(rng: random.Random, n: int, drop: float) -> tuple[torch.Tensor, torch.Tensor]:
    """n fresh examples: images (n, 3, S, S) in [−1, 1] and token ids (n, M); captions dropped with prob. drop."""
    imgs, ids = [], []
    for _ in range(n):
        spec, _, img = world.sample(rng)
        imgs.append(img)
        ids.append(world.tokenize("" if rng.random() < drop else world.caption_of(spec)))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, torch.tensor(ids)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", choices=sorted(ARCHS), default="unet", help="UNet (cross-attention) or MMDiT "
                   "(joint attention)")
    p.add_argument("--steps", type=int, default=4000, help="at most this many steps")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="wall-clock budget; when > 0 the learning-rate schedule follows elapsed time and training "
                        "stops when it is spent (the step count reached is stored with the weights)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="1 is fastest on a busy shared CPU")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--out", default="", help="default: the bundled weights' path for --arch")
    p.add_argument("--config", default="", help="architecture settings over the defaults, as JSON, e.g. "
                   "'{\"depth\": 8}' (a new model only)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from <out>.state.pt (its "
                   "settings, step, elapsed time, optimiser and random streams): the same schedule to the same end")
    p.add_argument("--init", default="", help="start from these weights (model and EMA) instead of from scratch")
    args = p.parse_args(argv)
    args.out = args.out or str(DEFAULT_PATHS[args.arch])
    state_path = Path(args.out).with_suffix(".state.pt")
    resumed = None
    if args.resume:
        if not state_path.is_file():
            raise SystemExit(f"--resume: no training state at {str(state_path)!r}")
        resumed = torch.load(state_path, weights_only=False)
        args = argparse.Namespace(**{**resumed["args"], "resume": True})

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if args.init:
        model = load(args.init).train().requires_grad_(True)
        if model.arch != args.arch:
            raise SystemExit(f"--init {args.init!r} holds a {model.arch} model, not --arch {args.arch!r}")
        prior = metadata(args.init)
        prior_steps, prior_seconds = int(prior.get("steps", 0)), float(prior.get("train_seconds", 0))
        print(f"continuing from {args.init} ({prior_steps} steps, {prior_seconds:.0f}s)", flush=True)
    else:
        model_cls, cfg_cls = ARCHS[args.arch]
        model = model_cls(cfg_cls(**json.loads(args.config or "{}")))
        prior_steps, prior_seconds = 0, 0.0
    cfg = model.cfg
    ema = copy.deepcopy(model).requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    kind = "joint" if model.arch == "mmdit" else "cross"
    print(f"{model.arch}: params {n_params / 1e6:.2f}M, {kind}-attention layers {model.n_attn}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    t0 = time.time()
    i = 0
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        ema.load_state_dict(resumed["ema"])
        opt.load_state_dict(resumed["opt"])
        rng.setstate(resumed["rng"])
        gen.set_state(resumed["gen"])
        torch.set_rng_state(resumed["torch_rng"])
        i, t0 = resumed["step"], t0 - resumed["elapsed"]
        print(f"resuming {args.out} at step {i} ({resumed['elapsed']:.0f}s in)", flush=True)

    def progress(i: int) -> float:
        """Fraction of training done: by steps, or by wall-clock time when a budget is set."""
        frac = i / args.steps
        if args.minutes > 0:
            frac = max(frac, (time.time() - t0) / (60 * args.minutes))
        return min(frac, 1.0)

    def lr_at(i: int, frac: float) -> float:
        """Linear warm-up, then cosine decay to a tenth of the peak."""
        return args.lr * min(1.0, (i + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    running = None

    def checkpoint(step: int) -> None:
        meta = {"config": json.dumps(cfg.as_dict()), "steps": str(prior_steps + step), "batch": str(args.batch),
                "seed": str(args.seed), "lr": str(args.lr), "minutes": str(args.minutes),
                "train_seconds": f"{prior_seconds + time.time() - t0:.0f}"}
        if args.init:
            meta["continued_from_steps"] = str(prior_steps)
        save(ema, args.out, meta)
        torch.save({"args": {k: v for k, v in vars(args).items() if k != "resume"}, "model": model.state_dict(),
                    "ema": ema.state_dict(), "opt": opt.state_dict(), "rng": rng.getstate(), "gen": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "step": step, "elapsed": time.time() - t0},
                   state_path.with_suffix(".tmp"))
        state_path.with_suffix(".tmp").replace(state_path)

    while True:
        frac = progress(i)
        if frac >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(i, frac)
        x, ids = batch(rng, args.batch, args.caption_dropout)
        loss = v_loss(model, x, ids, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + i) / (10 + i))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        loss_value = loss.item()
        running = loss_value if running is None else 0.98 * running + 0.02 * loss_value
        i += 1
        if i % 50 == 0:
            el = time.time() - t0
            print(f"step {i} loss {running:.4f} lr {lr_at(i - 1, frac):.2e} {el:.0f}s ({el / i:.2f}s/step)",
                  flush=True)
        if i % args.save_every == 0:
            checkpoint(i)
    checkpoint(i)
    print(f"done: {i} steps in {time.time() - t0:.0f}s (total {prior_steps + i} steps, "
          f"{prior_seconds + time.time() - t0:.0f}s) -> {args.out}", flush=True)


if __name__ == "__main__":
    main()

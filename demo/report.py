"""python -m demo.report RESULTS.json ...: the README's Markdown table rows from saved results, no re-sampling.

Several files (e.g. one run per sweep) merge into one table when they hold the same items; a setting present in
more than one file must have the same judgements in each (sampling is deterministic). With --pool the files are
runs on different prompt × seed sets (e.g. --first-seed 0, 100, 200; several files of one set merge first): their
items are concatenated over the settings every set holds, so every statistic, the paired test included, is over
the pooled images.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import world
from .evaluate import mcnemar_p
from .scorer import wilson

TASK_NAMES = {"single_object": "single object", "colors": "colours", "counting": "counting",
              "two_object": "two objects", "position": "position", "color_attr": "colour attr."}


def load_results(paths: list[str], pool: bool = False) -> tuple[list[dict], dict[str, np.ndarray], dict]:
    """Items (task, caption, seed), {setting: bool per item} and the first file's run info, merged over paths.

    pool: the files hold the same settings on disjoint item sets; items and judgements are concatenated.
    """
    if pool:
        return _pooled(paths)
    items, merged, info = None, {}, {}
    for path in paths:
        res = json.loads(Path(path).read_text())
        keys = [(it["task"], it["caption"], it["seed"]) for it in res["items"]]
        if items is None:
            items, info = keys, {k: res.get(k) for k in ("arch", "steps", "cfg")}
        elif keys != items:
            raise ValueError(f"{str(path)!r} holds a different prompt × seed set from {paths[0]!r}")
        elif any(res.get(k) != info[k] for k in ("arch", "steps", "cfg")):
            raise ValueError(f"{str(path)!r} is a different run (arch/steps/cfg) from {paths[0]!r}")
        for label in res["settings"]:
            ok = np.array([bool(it[label]) for it in res["items"]])
            if label in merged and not np.array_equal(merged[label], ok):
                raise ValueError(f"setting {label!r} differs between {paths[0]!r} and {str(path)!r}")
            merged[label] = ok
    if items is None:
        raise ValueError("no results files given")
    return [dict(task=t, caption=c, seed=s) for t, c, s in items], merged, info


def _pooled(paths: list[str]) -> tuple[list[dict], dict[str, np.ndarray], dict]:
    """load_results(pool=True): files of one prompt × seed set merge; the sets, disjoint, are concatenated over the
    settings every set holds (each set's settings may come from several files, e.g. a sweep split in two)."""
    groups, info = [], None
    for path in paths:
        res = json.loads(Path(path).read_text())
        run = {k: res.get(k) for k in ("arch", "steps", "cfg")}
        if info is None:
            info = run
        elif run != info:
            raise ValueError(f"{str(path)!r} is a different run (arch/steps/cfg) from {paths[0]!r}")
        keys = [(it["task"], it["caption"], it["seed"]) for it in res["items"]]
        group = next((g for g in groups if g["keys"] == keys), None)
        if group is None:
            if any(set(keys) & set(g["keys"]) for g in groups):
                raise ValueError(f"{str(path)!r} repeats images of an earlier file; --pool needs disjoint prompt × "
                                 "seed sets (e.g. different --first-seed), or the very same set to merge")
            group = {"keys": keys, "ok": {}}
            groups.append(group)
        elif set(res["settings"]) <= set(group["ok"]):
            raise ValueError(f"{str(path)!r} adds nothing to an earlier file of the same images")
        for label in res["settings"]:
            ok = np.array([bool(it[label]) for it in res["items"]])
            if label in group["ok"] and not np.array_equal(group["ok"][label], ok):
                raise ValueError(f"setting {label!r} differs between two files of the same images ({str(path)!r})")
            group["ok"][label] = ok
    if not groups:
        raise ValueError("no results files given")
    common = [label for label in groups[0]["ok"] if all(label in g["ok"] for g in groups)]
    if not common:
        raise ValueError("the files' seed sets share no setting; --pool needs the same ones")
    items = [dict(task=t, caption=c, seed=s) for g in groups for t, c, s in g["keys"]]
    return items, {label: np.concatenate([g["ok"][label] for g in groups]) for label in common}, info


def load_effects(paths: list[str]) -> dict[str, float]:
    """{setting: mean ‖λ·c·G‖/‖O_s‖ per (token, head)} from the files' guidance telemetry, token-weighted."""
    sums: dict[str, list[float]] = {}
    for path in paths:
        for label, st in json.loads(Path(path).read_text()).get("stats", {}).items():
            acc = sums.setdefault(label, [0.0, 0.0])
            acc[0] += st["rel_guidance"] * st["tokens"]
            acc[1] += st["tokens"]
    return {label: total / n for label, (total, n) in sums.items() if n}


def cell(ok: np.ndarray) -> str:
    """'64 % [59–68]': the share judged correct and its 95 % Wilson interval, in percent."""
    k, n = int(ok.sum()), len(ok)
    lo, hi = wilson(k, n)
    return f"{100 * k / max(n, 1):.0f} % [{100 * lo:.0f}–{100 * hi:.0f}]"


def markdown(items: list[dict], results: dict[str, np.ndarray], baseline: str = "baseline",
             effects: dict[str, float] | None = None) -> str:
    """README-style table: per task type and overall (bold), and the exact McNemar test against the baseline.

    effects: {setting: mean ‖λ·c·G‖/‖O_s‖}, shown in a last column when given.
    """
    tasks = [t for t in world.TASKS if any(it["task"] == t for it in items)]
    task_of = np.array([it["task"] for it in items])
    head = ["setting", *(TASK_NAMES.get(t, t) for t in tasks), "overall", "vs baseline (better/worse, McNemar p)"]
    if effects:
        head.append("‖λ·c·G‖/‖O_s‖")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, ok in results.items():
        row = [label, *(cell(ok[task_of == t]) for t in tasks), f"**{cell(ok)}**"]
        if baseline in results and label != baseline:
            base = results[baseline]
            b, w = int((ok & ~base).sum()), int((~ok & base).sum())
            row.append(f"+{b}/−{w}, p = {mcnemar_p(b, w):.2g}")
        else:
            row.append("")
        if effects:
            row.append(f"{effects[label]:.2f}" if label in effects else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.report", description=__doc__)
    p.add_argument("results", nargs="+", help="results.json files written by python -m demo")
    p.add_argument("--pool", action="store_true", help="the files are the same settings on different seed sets: "
                   "pool their images")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        items, results, info = load_results(args.results, pool=args.pool)
    except (ValueError, FileNotFoundError, KeyError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_task = len(items) // max(1, len({it["task"] for it in items}))
    print(f"{info['arch']}: {info['steps']} DDIM steps, CFG {info['cfg']:g}, {n_task} images per task type, "
          f"{len(items)} per setting")
    print()
    print(markdown(items, results, effects=load_effects(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

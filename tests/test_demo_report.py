"""The demo's default sets per architecture, its integer options, and python -m demo.report's Markdown tables."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from demo import world
from demo.__main__ import DEFAULT_SET, main, parse, with_preset
from demo.evaluate import prompt_set
from demo.report import main as report_main
from demo.report import load_results, markdown


def test_default_sets_per_architecture_and_explicit_sizes_win():
    args = parse([])
    unet, mmdit = with_preset(args, "unet"), with_preset(args, "mmdit")
    assert (unet.prompts_per_task, unet.seeds) == DEFAULT_SET["unet"]
    assert (mmdit.prompts_per_task, mmdit.seeds) == DEFAULT_SET["mmdit"]
    n, s = random.randint(1, 20), random.randint(1, 9)
    for arch in DEFAULT_SET:
        a = with_preset(parse(["--prompts-per-task", str(n), "--seeds", str(s)]), arch)
        assert (a.prompts_per_task, a.seeds) == (n, s)


def test_the_mmdit_default_set_is_part_of_the_unets():
    small, big = prompt_set(*DEFAULT_SET["mmdit"]), prompt_set(*DEFAULT_SET["unet"])
    key = lambda it: (it.task, it.caption, it.seed, it.slot)  # noqa: E731
    assert {key(it) for it in small} <= {key(it) for it in big}
    assert len(small) < len(big)


@pytest.mark.parametrize("flag", ["--seeds", "--prompts-per-task", "--steps", "--batch", "--inversion-images"])
@pytest.mark.parametrize("bad", ["0", "-3", "two"])
def test_integer_options_must_be_positive_and_the_message_quotes_the_value(capsys, flag, bad):
    with pytest.raises(SystemExit) as e:
        parse([flag, bad])
    assert e.value.code == 2
    assert repr(bad) in capsys.readouterr().err


def _run(tmp_path, name, *flags):
    out = tmp_path / name
    assert main(["--arch", "unet", "--prompts-per-task", "1", "--seeds", "1", "--steps", "2", "--out", str(out),
                 *flags]) == 0
    return out / "unet" / "results.json"


def test_report_merges_runs_of_one_set_into_one_markdown_table(tmp_path, capsys):
    a = _run(tmp_path, "a", "--scale", "2")
    b = _run(tmp_path, "b", "--scale", "7", "--no-pladis")
    capsys.readouterr()
    assert report_main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| setting")]
    assert [r.split(" | ")[0][2:] for r in rows] == ["baseline", "PLADIS s=2", "GAG λ=2 β=0 τ=15", "GAG λ=7 β=0 τ=15"]
    n_cols = len(world.TASKS) + 4  # setting, tasks, overall, McNemar, ‖λ·c·G‖/‖O_s‖
    assert all(r.count(" | ") == n_cols - 1 for r in rows)
    assert "McNemar" in out and "p = " in rows[1] and rows[0].endswith("|  |  |") and rows[1].endswith("|  |")
    effects = [float(r.split(" | ")[-1].rstrip(" |")) for r in rows[2:]]  # GAG λ = 2 and 7 carry telemetry
    assert 0 < effects[0] < effects[1]
    assert "2 DDIM steps" in out and f"{len(world.TASKS)} per setting" in out


def test_report_cells_are_the_share_and_its_wilson_interval():
    items = [dict(task="counting", caption="two circles", seed=s) for s in range(4)]
    res = {"baseline": np.array([True, False, False, False]), "x": np.array([True, True, True, False])}
    table = markdown(items, res)
    assert "| baseline | 25 % [5–70] | **25 % [5–70]** |  |" in table
    assert "| x | 75 % [30–95] | **75 % [30–95]** | +2/−0, p = 0.5 |" in table


def test_report_rejects_results_of_different_sets(tmp_path, capsys):
    a = _run(tmp_path, "a")
    c = tmp_path / "c.json"
    res = json.loads(a.read_text())
    res["items"] = res["items"][:-1]
    c.write_text(json.dumps(res))
    capsys.readouterr()
    assert report_main([str(a), str(c)]) == 2
    assert "different prompt" in capsys.readouterr().err
    res = json.loads(a.read_text())
    res["items"][0]["baseline"] = not res["items"][0]["baseline"]
    c.write_text(json.dumps(res))
    assert report_main([str(a), str(c)]) == 2
    assert "'baseline' differs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no results"):
        load_results([])


def test_the_docs_show_existing_demo_grids_and_the_readme_the_paths_the_demo_writes():
    root = Path(__file__).resolve().parents[1]
    evidence = (root / "docs" / "evidence.md").read_text(encoding="utf-8")
    shown = re.findall(r"\]\(\.\./(demo/assets/[^)]+\.png)\)", evidence)  # relative to docs/
    assert {"demo/assets/grid.png", "demo/assets/grid_mmdit.png"} <= set(shown)
    assert all((root / p).is_file() for p in shown)
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "out/demo/grid.png" not in readme  # the demo writes out/demo/<arch>/grid.png
    assert all(f"out/demo/{arch}/grid.png" in readme for arch in DEFAULT_SET)


def test_report_pools_runs_of_the_same_settings_on_disjoint_seed_sets(tmp_path, capsys):
    a = _run(tmp_path, "a", "--scale", "3")
    b = _run(tmp_path, "b", "--scale", "3", "--first-seed", "7")
    items, res, info = load_results([str(a), str(b)], pool=True)
    one = json.loads(a.read_text())
    assert len(items) == 2 * len(one["items"]) and info["arch"] == "unet"
    assert list(res) == one["settings"] and all(len(v) == len(items) for v in res.values())
    assert np.array_equal(res["baseline"][: len(one["items"])], [it["baseline"] for it in one["items"]])
    capsys.readouterr()
    assert report_main(["--pool", str(a), str(b)]) == 0
    assert f"{2 * len(world.TASKS)} per setting" in capsys.readouterr().out
    assert report_main(["--pool", str(a), str(a)]) == 2  # the same file twice
    assert "adds nothing" in capsys.readouterr().err
    part = json.loads(a.read_text())
    part["items"] = part["items"][1:]  # some of a's images, not all: neither the same set nor a disjoint one
    (tmp_path / "part.json").write_text(json.dumps(part))
    assert report_main(["--pool", str(a), str(tmp_path / "part.json")]) == 2
    assert "disjoint" in capsys.readouterr().err
    c = _run(tmp_path, "c", "--scale", "4", "--first-seed", "9", "--no-pladis")  # shares only the baseline
    items, res, _ = load_results([str(a), str(c)], pool=True)
    assert list(res) == ["baseline"] and len(res["baseline"]) == len(items)
    e = _run(tmp_path, "e", "--scale", "4", "--no-pladis")  # a's images, one more setting: merged, then pooled
    items, res, _ = load_results([str(a), str(e), str(c)], pool=True)
    assert list(res) == ["baseline", "GAG λ=4 β=0 τ=15"] and len(items) == 2 * len(one["items"])

"""python -m demo end to end on a reduced prompt set: table, grid and results file."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from demo import world
from demo.__main__ import layer_subset, main
from demo.evaluate import initial_noise, prompt_set
from gag_core import get_preset


def test_demo_runs_end_to_end_on_a_reduced_set(tmp_path, capsys):
    rc = main(["--arch", "unet", "--prompts-per-task", "1", "--seeds", "1", "--steps", "2", "--out", str(tmp_path),
               "--scale", "2,5", "--tau-mode", "abs,rel", "--tau", "15"])
    assert rc == 0
    out = capsys.readouterr().out
    for task in world.TASKS:
        assert task in out
    for label in ("baseline", "PLADIS s=2", "GAG λ=2 β=0 τ=15", "GAG λ=5 β=0 τ=15·‖Os‖"):
        assert label in out
    assert "whole-row" not in out and not (tmp_path / "mmdit").exists()
    res = json.loads((tmp_path / "unet" / "results.json").read_text())
    assert res["arch"] == "unet" and len(res["items"]) == len(world.TASKS) and len(res["settings"]) == 6
    grid = Image.open(tmp_path / "unet" / "grid.png")
    assert grid.width > 6 * 96 and grid.height > 96


def test_both_architectures_by_default_with_the_whole_row_ablation(tmp_path, capsys):
    rc = main(["--prompts-per-task", "1", "--seeds", "1", "--steps", "2", "--cfg", "1", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "== unet" in out and "== mmdit" in out and "total" in out
    unet = json.loads((tmp_path / "unet" / "results.json").read_text())
    mmdit = json.loads((tmp_path / "mmdit" / "results.json").read_text())
    sd15 = get_preset("sd15")  # the UNet runs GAG at the SD 1.5 preset
    assert unet["settings"] == ["baseline", "PLADIS s=2", f"GAG λ={sd15.scale:g} β={sd15.beta:g} τ={sd15.tau:g}"]
    assert mmdit["settings"] == ["baseline", "PLADIS s=2", "GAG λ=5 β=0 τ=15", "GAG whole-row λ=5 β=0 τ=15"]
    assert [it["caption"] for it in unet["items"]] == [it["caption"] for it in mmdit["items"]]
    assert Image.open(tmp_path / "mmdit" / "grid.png").width > 4 * 96


@pytest.mark.parametrize("flags", [["--tau-mode", "rel"], ["--layers", "down"], ["--layers", "0+6"]])
def test_mmdit_rejects_unet_only_settings_before_sampling(capsys, flags):
    assert main(["--arch", "mmdit", "--prompts-per-task", "1", "--seeds", "1", *flags]) == 2
    err = capsys.readouterr().err
    assert "mmdit" in err and flags[1] in err


@pytest.mark.parametrize("arch,mode", [("unet", []), ("unet", ["--inversion-matched"]), ("mmdit", [])])
def test_inversion_check_runs(capsys, arch, mode):
    rc = main(["--arch", arch, "--inversion", "--inversion-images", "3", "--steps", "2", "--no-pladis", *mode])
    assert rc == 0
    out = capsys.readouterr().out
    lam = get_preset("sd15" if arch == "unet" else "flux1").scale  # the family preset's λ
    assert "PSNR" in out and "dense" in out and "sparse α=1.5" in out and f"GAG λ={lam:g}" in out
    assert ("inverts and rebuilds with itself" in out) == bool(mode)
    assert ("GAG whole-row λ=5" in out) == (arch == "mmdit")


def test_bad_layer_subset_is_reported(capsys):
    assert main(["--arch", "unet", "--layers", "0+99", "--prompts-per-task", "1", "--seeds", "1"]) == 2
    assert "99" in capsys.readouterr().err


def test_layer_subsets_partition_the_layers():
    n, down = 9, 4
    parts = [layer_subset(x, n, down) for x in ("down", "mid", "up")]
    assert set().union(*parts) == set(range(n)) and sum(len(p) for p in parts) == n
    assert layer_subset("all", n, down) is None and layer_subset("0+8", n, down) == {0, 8}
    with pytest.raises(ValueError, match="'x'"):
        layer_subset("x", n, down)
    assert layer_subset("0+5", 6, None) == {0, 5}  # the MMDiT: indices only
    with pytest.raises(ValueError, match="'mid'"):
        layer_subset("mid", 6, None)


def test_prompt_set_is_fixed_and_noise_is_shared():
    a, b = prompt_set(3, 2), prompt_set(3, 2)
    assert a == b and len(a) == 3 * 2 * len(world.TASKS)
    noise = initial_noise(a)
    assert torch.equal(noise, initial_noise(b))
    flat = noise.flatten(1)
    assert len({tuple(row[:4].tolist()) for row in flat}) == len(a)  # every item, repeated captions too, differs

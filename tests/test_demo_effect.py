"""python -m demo.effect: the push GAG gives each attention output, measured two ways."""
from __future__ import annotations

import pytest

from demo.effect import main, measure
from demo.weights import DEFAULT_PATHS, load


def test_cross_attention_push_equals_the_telemetry_and_grows_with_lambda():
    """UNet: out(0) = O_s, so ‖out(λ) − out(0)‖/‖out(0)‖ is the telemetry's ‖λ·c·G‖/‖O_s‖ itself."""
    rows = measure(load(DEFAULT_PATHS["unet"]), [0.0, 1.0, 3.0], steps=2, cfg=2.0, prompts_per_task=1, seeds=1)
    assert rows[0][1:] == (0.0, 0.0)
    for _, tele, moved in rows[1:]:
        assert moved == pytest.approx(tele, rel=1e-3)
    assert 0 < rows[1][2] < rows[2][2]


def test_joint_attention_push_is_measured_after_mixing_back(capsys):
    rows = measure(load(DEFAULT_PATHS["mmdit"]), [0.0, 5.0], steps=2, cfg=2.0, prompts_per_task=1, seeds=1)
    assert rows[0][1:] == (0.0, 0.0)
    assert rows[1][1] > 0 and rows[1][2] > 0 and rows[1][2] != pytest.approx(rows[1][1], rel=1e-2)
    assert main(["--arch", "mmdit", "--scale", "5", "--steps", "1", "--prompts-per-task", "1"]) == 0
    assert "| mmdit | 5 |" in capsys.readouterr().out

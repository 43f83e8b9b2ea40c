"""web/docs/<node id>.md: the help page ComfyUI's front end shows in a node's help panel, one per node."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from gag_core.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]
SOURCE = (ROOT / "nodes" / "gag_nodes.py").read_text(encoding="utf-8")


def node_inputs() -> dict[str, list[str]]:
    """node id → its input names, read from the schema source (no ComfyUI import needed)."""
    parts = re.split(r'node_id="(\w+)"', SOURCE)[1:]
    return {nid: ["model", *re.findall(r'\.Input\("(\w+)"', body)] for nid, body in zip(parts[::2], parts[1::2])}


NODES = node_inputs()


def test_the_three_nodes_are_found():
    assert set(NODES) == {"GeometryAwareAttentionGuidance", "GeometryAwareAttentionGuidanceAdvanced",
                          "PLADISGuidance"}


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_each_node_has_a_help_page_naming_every_input(node_id):
    # the front end asks /extensions/<pack>/docs/<node id>/<locale>.md, then /extensions/<pack>/docs/<node id>.md,
    # and WEB_DIRECTORY = ./web is served under /extensions/<pack>/
    text = (ROOT / "web" / "docs" / f"{node_id}.md").read_text(encoding="utf-8")
    assert text.startswith("# ")
    for name in NODES[node_id]:
        assert f"**{name}**" in text, name


@pytest.mark.parametrize("node_id", ["GeometryAwareAttentionGuidance", "GeometryAwareAttentionGuidanceAdvanced"])
def test_gag_help_pages_give_each_presets_starting_lambda(node_id):
    text = (ROOT / "web" / "docs" / f"{node_id}.md").read_text(encoding="utf-8")
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "---" not in ln]
    for p in PRESETS.values():
        short = p.label.split(" / ")[0].split(" (")[0]  # "SD 1.5", "Wan 2.1", "MiniMax H3", ...
        row = next((r for r in rows if short in r), None) or next((r for r in rows if short.split()[0] in r), None)
        assert row is not None, p.label
        assert f"| {p.scale:g} ({p.scale_range[0]:g}–{p.scale_range[1]:g}) |" in row, (p.label, row)

"""The README is the user's page: short, settings that match the presets, every link resolving."""
from __future__ import annotations

import re
from pathlib import Path

from gag_core.presets import PRESETS, PROVENANCE

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
LINES = README.splitlines()
# pages other helpers write; the README links them before they land
PENDING: set[str] = set()


def section(title: str) -> list[str]:
    start = LINES.index(f"## {title}")
    end = next((i for i in range(start + 1, len(LINES)) if LINES[i].startswith("## ")), len(LINES))
    return LINES[start + 1:end]


def test_short_and_what_a_user_needs_comes_first():
    assert len(LINES) <= 220
    first = "\n".join(LINES[:80])
    for title in ("## Install", "## Quick start", "## Settings per model"):
        assert title in first, title
    table_end = next(i for i, ln in enumerate(LINES) if ln.startswith("| MiniMax H3"))
    assert table_end < 80  # the whole settings table, not only its heading
    for title in ("Supported models", "Using it with other nodes", "Troubleshooting", "Changelog", "Citation",
                  "Licence"):
        assert section(title), title
    assert "comfy node install" in first and "git clone" in first
    assert README.count("@inproceedings") + README.count("@article") == 2


def test_settings_table_matches_the_presets_and_names_each_source():
    rows = {}
    for ln in section("Settings per model"):
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        if ln.startswith("| ") and len(cells) == 7 and cells[0] not in ("model", "---"):
            rows[cells[0]] = cells
    assert set(rows) == {p.label for p in PRESETS.values()}
    for p in PRESETS.values():
        _, lam, beta, window, blocks, source, _ = rows[p.label]
        assert lam == f"{p.scale:g} ({p.scale_range[0]:g}–{p.scale_range[1]:g})", p.family
        assert beta == f"{p.beta:g} ({p.beta_range[0]:g}–{p.beta_range[1]:g})", p.family
        assert window == f"{p.start_percent:g}–{p.end_percent:g}", p.family
        assert blocks.replace(" ", "") == p.blocks, p.family
        assert source.rstrip(" ¹²³") == p.source_of("scale") and source.rstrip(" ¹²³") in PROVENANCE, p.family


def test_links_resolve_and_no_measured_table_is_left():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if target.startswith("http") or target in PENDING:
            continue
        assert (ROOT / target).exists(), target
    # measured tables live in docs/: no table row with a confidence interval or a p-value here
    assert not re.search(r"^\|.*(\[\d+–\d+\]|p = \d)", README, re.M)
    for page in ("method", "evidence", "performance", "hosts", "web", "workflows"):
        assert f"docs/{page}.md" in README, page

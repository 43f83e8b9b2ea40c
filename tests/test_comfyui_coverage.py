"""tools/coverage.py on the installed host (COMFYUI_PATH) and its own template index: the pack guides at least 95 %
of the host's local text-conditioned template use (docs/coverage.md), and the family table's variants and
pass-through entries name classes of this host's lineage correctly."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from test_coverage import REPO, cov  # noqa: F401  (fixture)

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def host() -> Path:
    return Path(os.environ["COMFYUI_PATH"])


def test_the_pack_guides_at_least_95_percent_of_the_hosts_template_use(cov, host):
    if importlib.util.find_spec("comfyui_workflow_templates_core") is None:
        pytest.skip("no comfyui-workflow-templates in this Python")
    index, folders = cov.find_index(None)
    result = cov.measure(index, host, REPO, folders=folders)
    assert result["total"] > 10_000 and not result["unknown"], result["unknown"]
    unguided = sorted((r for r in result["rows"] if not r["guided"]), key=lambda r: -r["usage"])
    assert result["share"] >= 0.95, [(r["template"], r["cls"], r["reason"]) for r in unguided[:10]]


def test_variants_derive_from_their_rows_classes_on_this_host(cov, host):
    lineage = cov.host_lineage(host)
    families = cov.load_families(REPO)
    for family in families.FAMILY_ROWS:
        for name, note in family.variants:
            assert note, name
            if name in lineage:  # a class of a newer host is skipped on an older one
                assert set(lineage[name][1:]) & set(family.classes), (name, lineage[name], family.classes)
    for name in families.PASS_THROUGH:
        assert name not in families.MODEL_CLASSES and name not in families.VARIANT_CLASSES

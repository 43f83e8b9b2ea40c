"""The pack in the host's real front end: its Templates dialog shows the workflows with their thumbnails, the
help pages load where the front end looks for them, and the preset menu's tooltip names each value's source.

Uses the server and browser of tests/test_web_e2e.py (a ComfyUI server with this pack, Debian's Chromium through
Playwright). Saves the Templates dialog's screenshot in the test's temp dir, and at $GAG_TEMPLATES_SCREENSHOT
when set (docs/templates.png is made that way).
"""
from __future__ import annotations

import os
import shutil

import pytest
from test_web_e2e import PACK_DIR, Page, browser, playwright_api, server  # noqa: F401  (fixtures)

import workflow_utils as wu
from gag_core.presets import PRESETS

pytestmark = [pytest.mark.comfyui, pytest.mark.browser, pytest.mark.slow]
NODE_IDS = ("GeometryAwareAttentionGuidance", "GeometryAwareAttentionGuidanceAdvanced", "PLADISGuidance")

OPEN_TEMPLATES = """async () => {
  const app = window.comfyAPI.app.app;
  await app.extensionManager.command.execute('Comfy.BrowseTemplates');
}"""

# Scroll every scrollable part of the open dialog half a screen further down, back to the top at the bottom.
SCROLL_DIALOG = """() => { for (const el of document.querySelectorAll('[role=dialog], [role=dialog] *'))
  if (el.scrollHeight > el.clientHeight + 1) {
    if (el.scrollTop + el.clientHeight >= el.scrollHeight - 1) el.scrollTop = 0;
    else el.scrollTop += el.clientHeight / 2; } }"""
SCROLL_TOP = """() => { for (const el of document.querySelectorAll('[role=dialog] *')) el.scrollTop = 0; }"""

# Images in the open dialog that finished loading (the front end shows fetched thumbnails as blob: URLs).
LOADED_IMAGES = """() => [...document.querySelectorAll('[role=dialog] img')]
  .filter((i) => i.complete && i.naturalWidth > 0).length"""


def test_templates_dialog_shows_the_workflows_with_thumbnails(server, browser, tmp_path):  # noqa: F811
    page = Page(browser, server["url"])
    fetched: dict[str, int] = {}  # thumbnail file -> HTTP status, as the page fetched it
    prefix = f"/workflow_templates/{PACK_DIR}/"
    page.page.on("response", lambda r: fetched.__setitem__(r.url.split(prefix)[-1], r.status)
                 if prefix in r.url and r.url.endswith(".jpg") else None)
    expected = sorted(p.stem + ".jpg" for p in wu.workflow_paths())
    try:
        page.js(OPEN_TEMPLATES)
        # the dialog lists custom node packs under "Extensions", each by its folder name
        page.page.get_by_text(PACK_DIR, exact=True).first.click()
        try:  # the first screen of cards, then half a screen at a time: cards load their images when shown
            page.page.wait_for_function(f"() => ({LOADED_IMAGES})() >= {min(len(expected), 4)}", timeout=60_000)
            for _ in range(60):
                if set(expected) <= set(fetched):
                    break
                page.js(SCROLL_DIALOG)
                page.page.wait_for_timeout(1000)
            assert set(expected) <= set(fetched)
            page.js(SCROLL_TOP)
        except Exception:
            page.page.screenshot(path=str(tmp_path / "templates-timeout.png"))
            pytest.fail(f"the dialog's images did not load: {page.js(LOADED_IMAGES)} loaded; fetched {fetched}")
        assert sorted(fetched) == expected and set(fetched.values()) == {200}, fetched
        page.page.wait_for_timeout(500)  # let the card images paint
        shot = tmp_path / "templates.png"
        dialog = page.page.locator("[role=dialog]").first
        (dialog if dialog.count() else page.page).screenshot(path=str(shot))
        if os.environ.get("GAG_TEMPLATES_SCREENSHOT"):
            shutil.copy(shot, os.environ["GAG_TEMPLATES_SCREENSHOT"])
        assert not page.errors, page.errors
    finally:
        page.close()


def test_help_pages_load_where_the_front_end_looks(server, browser):  # noqa: F811
    page = Page(browser, server["url"])
    try:
        for node_id in NODE_IDS:
            # the front end tries docs/<id>/<locale>.md first, then docs/<id>.md under the pack's web directory
            resp = page.page.request.get(f"{server['url']}/extensions/{PACK_DIR}/docs/{node_id}.md")
            assert resp.status == 200, node_id
            assert resp.text().startswith("# "), node_id
    finally:
        page.close()


def test_preset_tooltip_names_each_values_source(server, browser):  # noqa: F811
    page = Page(browser, server["url"])
    try:
        tips = page.js("""(label) => {
          const app = window.comfyAPI.app.app, node = window.LiteGraph.createNode('GeometryAwareAttentionGuidance');
          app.graph.add(node);
          const w = node.widgets.find((w) => w.name === 'gag_preset');
          const before = w.tooltip;
          w.value = label; w.callback(label);
          return [before, w.tooltip];
        }""", PRESETS["sdxl"].label)
        assert "paper" in tips[0] and "extrapolated" in tips[0]
        sdxl = PRESETS["sdxl"]
        assert tips[1].startswith(sdxl.label + ":")
        assert f"λ {sdxl.scale:g} ({sdxl.source_of('scale')})" in tips[1]
        assert f"β {sdxl.beta:g} ({sdxl.source_of('beta')})" in tips[1]
    finally:
        page.close()

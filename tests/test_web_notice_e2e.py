"""End to end: a run that guides nothing shows its cause in the browser as a toast (and the server logs it).

A real ComfyUI server with this pack and its front end in headless Chromium (the fixtures of test_web_e2e.py):
tiny SD1.5 model -> GAG (advanced) whose step window [0.25, 0.26] holds no step of a 2-step run -> KSampler.
The page must get the pack's notice once and show it as a toast naming the cause; a guided run afterwards adds
none. Skipped without COMFYUI_PATH, Chromium or Playwright.
"""
from __future__ import annotations

import pytest

from test_web_e2e import GRAPH_BUILDER, Page, browser, playwright_api, server  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.comfyui, pytest.mark.browser, pytest.mark.slow]

# tiny model -> GAG advanced (window without a step, or the default) -> KSampler (2 steps) -> SaveLatent
BUILD = """([start, end]) => {""" + GRAPH_BUILDER + """
  const model = add("GAGTestTinySD15", 20, 20);
  const pos = add("GAGTestTinyText", 20, 170, {seed: 1, tokens: 7});
  const neg = add("GAGTestTinyText", 20, 330, {seed: 2, tokens: 7});
  const latent = add("EmptyLatentImage", 20, 490, {width: 64, height: 64, batch_size: 1});
  const gag = add("GeometryAwareAttentionGuidanceAdvanced", 420, 20, {scale: 5, start_percent: start,
                                                                      end_percent: end});
  const ks = add("KSampler", 420, 520, {seed: 0, steps: 2, cfg: 2, sampler_name: "euler", scheduler: "normal"});
  ks.widgets.find((w) => w.name === "control_after_generate").value = "fixed";
  const save = add("SaveLatent", 800, 520, {filename_prefix: "gag_notice"});
  model.connect(0, gag, 0); gag.connect(0, ks, 0); pos.connect(0, ks, 1); neg.connect(0, ks, 2);
  latent.connect(0, ks, 3); ks.connect(0, save, 0);
  g.setDirtyCanvas(true, true);
  return String(gag.id);
}"""


def _queue(page: Page, start: float, end: float) -> None:
    for _ in range(4):  # rebuilt if a late default-workflow load of the front end replaced it
        node_id = page.js(BUILD, [start, end])
        page.page.wait_for_timeout(800)
        if page.js("(id) => window.comfyAPI.app.app.graph.getNodeById(Number(id))?.type", node_id):
            break
    page.js("() => window.comfyAPI.app.app.queuePrompt(0, 1)")


def test_a_run_that_guides_nothing_shows_its_cause_as_a_toast(server, browser, tmp_path):  # noqa: F811
    page = Page(browser, server["url"])
    try:
        _queue(page, 0.25, 0.26)
        page.page.wait_for_function("() => window.comfyuiGag.notices.length > 0", timeout=240_000)
        notices = page.js("() => window.comfyuiGag.notices.slice()")
        assert len(notices) == 1
        assert "not guided at all" in notices[0] and "step window" in notices[0]
        toast = page.page.locator(".p-toast-message", has_text="not guided at all")
        toast.first.wait_for(state="visible", timeout=10_000)
        assert "Attention guidance (GAG)" in toast.first.inner_text()
        page.page.screenshot(path=str(tmp_path / "notice-toast.png"))
        # the server log has it too
        assert "no step fell inside the step window" in server["log"].read_text()
        # a guided run afterwards: no new notice
        _queue(page, 0.0, 1.0)
        page.page.wait_for_function("() => fetch('/api/queue').then((r) => r.json())"
                                    ".then((q) => q.queue_running.length + q.queue_pending.length === 0)",
                                    timeout=240_000)
        page.page.wait_for_timeout(1000)
        assert page.js("() => window.comfyuiGag.notices.length") == 1
        assert page.errors == []
    finally:
        page.close()

"""End to end: a real ComfyUI server with this pack, its real front end in headless Chromium, the web extension.

Starts `main.py --cpu` on a free localhost port with a temporary base directory (custom_nodes holds a link to
this repository and a test-only node file that builds a tiny seeded SD1.5 UNet, so a prompt really samples;
ComfyUI's checkpoint detection does not accept tiny sizes, hence the node). Drives Debian's chromium through
Playwright (no browser download). Checks: the bundled SDXL workflow loads, its GAG node shows its sliders, the
preset menu and the chart; a preset picked from the menu (a real click on the canvas) sets the widgets to the
back end's table; a tiny two-branch prompt (GAG and GAG advanced) fills both nodes' charts with one point per
step; malformed messages and a missing /gag/presets route (an older back end) leave the page working; every
bundled workflow loads in the host's own front end (and passes its exported validator, front end 1.4x). Saves
screenshots in the test's temp dir (and, with GAG_WEB_SCREENSHOT=<path>, the chart screenshot there too).

Needs COMFYUI_PATH (marker `comfyui`), /usr/bin/chromium (or $CHROMIUM) and `playwright` in the test's Python
(which must be ComfyUI's, as it runs the server); otherwise skipped.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-dev-shm-usage"]
PACK_DIR = "ComfyUI-GAG"
STEPS = 8
SERVER_START_S = 180
PAGE_S = 90  # front end load and each wait in the page (seconds)

pytestmark = [pytest.mark.comfyui, pytest.mark.browser, pytest.mark.slow]

# A test-only custom node file: a tiny seeded SD1.5 UNet (ComfyUI's own classes) and random text conditioning.
TINY_NODES = '''
import torch
import comfy.model_patcher
import comfy.supported_models

UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
            in_channels=4, model_channels=64, num_res_blocks=[1, 1], transformer_depth=[1, 1], channel_mult=[1, 2],
            transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1], context_dim=64,
            use_temporal_attention=False, use_temporal_resblock=False, adm_in_channels=None,
            use_linear_in_transformer=False)


class GAGTestTinySD15:
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 1000})}}

    def build(self, seed):
        config = comfy.supported_models.SD15(dict(UNET))
        config.set_inference_dtype(torch.float32, None)
        base = config.get_model({})
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in base.diffusion_model.named_parameters():
                if p.ndim >= 2:
                    p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02 + (1.0 if "norm" in name else 0.0))
        base.diffusion_model.eval()
        cpu = torch.device("cpu")
        return (comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu),)


class GAGTestTinyText:
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 1, "min": 0, "max": 1000}),
                             "tokens": ("INT", {"default": 7, "min": 1, "max": 77})}}

    def encode(self, seed, tokens):
        gen = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, tokens, 64, generator=gen), {}]],)


NODE_CLASS_MAPPINGS = {"GAGTestTinySD15": GAGTestTinySD15, "GAGTestTinyText": GAGTestTinyText}
'''

# Opens a page-side graph builder: clears the graph and defines add(type, x, y, {widget: value}) -> node.
GRAPH_BUILDER = """
  const app = window.comfyAPI.app.app, LG = window.LiteGraph, g = app.graph;
  g.clear();
  const add = (type, x, y, values = {}) => {
    const n = LG.createNode(type); n.pos = [x, y]; g.add(n);
    for (const [k, v] of Object.entries(values)) n.widgets.find((w) => w.name === k).value = v;
    return n;
  };
"""

# Builds, in the page, tiny model -> {GAG, GAG advanced} -> KSampler -> SaveLatent; returns the two GAG node ids.
BUILD_TINY_GRAPH = """([steps]) => {""" + GRAPH_BUILDER + """
  const model = add("GAGTestTinySD15", 20, 20);
  const pos = add("GAGTestTinyText", 20, 170, {seed: 1, tokens: 7});
  const neg = add("GAGTestTinyText", 20, 330, {seed: 2, tokens: 9});
  const latent = add("EmptyLatentImage", 20, 490, {width: 64, height: 64, batch_size: 1});
  const x1 = 40 + Math.max(...[model, pos, neg, latent].map((n) => n.size[0]));
  const gag = add("GeometryAwareAttentionGuidance", x1, 20, {scale: 5, beta: 0});
  const adv = add("GeometryAwareAttentionGuidanceAdvanced", x1 + gag.size[0] + 40, 20, {scale: 8, beta: 0.2, tau: 0.5});
  const y2 = 100 + Math.max(gag.size[1], adv.size[1]);
  const branch = (guided) => {
    const ks = add("KSampler", guided.pos[0], y2, {seed: 0, steps, cfg: 2, sampler_name: "euler", scheduler: "normal"});
    ks.widgets.find((w) => w.name === "control_after_generate").value = "fixed";
    const save = add("SaveLatent", guided.pos[0], y2 + ks.size[1] + 60, {filename_prefix: "gag_e2e"});
    guided.connect(0, ks, 0); pos.connect(0, ks, 1); neg.connect(0, ks, 2); latent.connect(0, ks, 3);
    ks.connect(0, save, 0);
  };
  model.connect(0, gag, 0); model.connect(0, adv, 0);
  branch(gag); branch(adv);
  app.canvas.ds.scale = 1; app.canvas.ds.offset = [320 - x1, 120]; g.setDirtyCanvas(true, true);
  return [String(gag.id), String(adv.id)];
}"""


# Screen rectangle around the given nodes (title bars included), for a screenshot clip.
CLIP_NODES = """(ids) => {
  const app = window.comfyAPI.app.app, ds = app.canvas.ds, rect = app.canvas.canvas.getBoundingClientRect();
  const title = window.LiteGraph.NODE_TITLE_HEIGHT, nodes = ids.map((id) => app.graph.getNodeById(Number(id)));
  const x0 = Math.min(...nodes.map((n) => n.pos[0])) - 10, y0 = Math.min(...nodes.map((n) => n.pos[1])) - title - 10;
  const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])) + 10;
  const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1])) + 10;
  const sx = (x) => rect.left + (x + ds.offset[0]) * ds.scale, sy = (y) => rect.top + (y + ds.offset[1]) * ds.scale;
  return {x: Math.max(0, sx(x0)), y: Math.max(0, sy(y0)), width: (x1 - x0) * ds.scale, height: (y1 - y0) * ds.scale};
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, data=None, timeout: float = 10.0):
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


@pytest.fixture(scope="module")
def playwright_api():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed in this Python")
    return sync_api


@pytest.fixture(scope="module")
def server(playwright_api, comfyui_path, tmp_path_factory):
    """A ComfyUI server on a free localhost port with this pack and the tiny test nodes; killed afterwards."""
    base = tmp_path_factory.mktemp("comfy_base")
    custom = base / "custom_nodes"
    custom.mkdir()
    (custom / PACK_DIR).symlink_to(REPO_ROOT, target_is_directory=True)
    (custom / "gag_e2e_tiny_nodes.py").write_text(TINY_NODES)
    port = _free_port()
    log_path = base / "server.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COMFYUI_GAG_STRICT="1", GAG_COMPILE="0")
    cmd = [sys.executable, str(comfyui_path / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--base-directory", str(base), "--database-url", "sqlite:///:memory:",
           "--preview-method", "none"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=str(base), env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
            try:
                _http(url + "/api/system_stats", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not answer within {SERVER_START_S}s:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.5)
        # No first-run or missing-model dialogs over the canvas.
        for key, value in {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False,
                           "Comfy.Workflow.ShowMissingNodesWarning": False}.items():
            _http(f"{url}/api/settings/{key}", value)
        yield {"url": url, "base": base, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(playwright_api):
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Page:
    """One browser page on the server, collecting uncaught page errors and the extension's console warnings."""

    def __init__(self, browser, url: str, block_presets: bool = False):
        self.context = browser.new_context(viewport={"width": 1500, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(PAGE_S * 1000)
        self.errors: list[str] = []
        self.gag_console: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.gag_console.append(m.text) if "[GAG]" in m.text else None)
        if block_presets:  # an older back end: the route does not exist
            self.page.route("**/gag/presets*", lambda route: route.fulfill(status=404, body="404: Not Found"))
        self.page.goto(url + "/", wait_until="domcontentloaded")
        self.page.wait_for_function("() => window.comfyAPI?.app?.app?.graph && window.LiteGraph"
                                    " && window.LiteGraph.registered_node_types['GeometryAwareAttentionGuidance']"
                                    " && window.comfyAPI.api.api.clientId")
        # Front end 1.4x loads its default workflow (or restores the last one) asynchronously after the app is
        # up; a graph loaded or built before that is replaced. Wait for that first graph before touching it.
        try:
            self.page.wait_for_function("() => window.comfyAPI.app.app.graph.nodes.length > 0", timeout=15_000)
        except Exception:  # an empty first graph (nothing to wait for)
            pass
        self.page.wait_for_timeout(500)

    def js(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def load_workflow(self, workflow: dict, node_id: str, tries: int = 4) -> None:
        """loadGraphData(workflow) until node `node_id` of the workflow is on the canvas (a late default-workflow
        load of the front end can replace the first attempt)."""
        wanted = next(n["type"] for n in workflow["nodes"] if str(n["id"]) == node_id)
        for attempt in range(tries):
            self.js("async (w) => { await window.comfyAPI.app.app.loadGraphData(w); }", workflow)
            try:
                self.page.wait_for_function("([id, type]) => window.comfyAPI.app.app.graph.getNodeById(Number(id))"
                                            "?.type === type", arg=[node_id, wanted], timeout=10_000)
                return
            except Exception:
                if attempt == tries - 1:
                    raise

    def close(self):
        self.context.close()


def _gag_widgets(page: Page, node_id: str) -> dict:
    return page.js("""(id) => {
      const n = window.comfyAPI.app.app.graph.getNodeById(Number(id));
      return Object.fromEntries(n.widgets.map((w) => [w.name, {value: w.value, label: w.label ?? null,
        hidden: !!w.hidden, type: w.type, values: w.options?.values ?? null}]));
    }""", node_id)


def _click_preset(page: Page, node_id: str, label: str) -> None:
    """Open the node's preset combo on the canvas with a real click and pick `label` from the menu."""
    point = page.js("""(id) => {
      const app = window.comfyAPI.app.app, n = app.graph.getNodeById(Number(id));
      const w = n.widgets.find((w) => w.name === 'gag_preset');
      const ds = app.canvas.ds, rect = app.canvas.canvas.getBoundingClientRect();
      const gx = n.pos[0] + n.size[0] / 2, gy = n.pos[1] + w.y + window.LiteGraph.NODE_WIDGET_HEIGHT / 2;
      return [rect.left + (gx + ds.offset[0]) * ds.scale, rect.top + (gy + ds.offset[1]) * ds.scale];
    }""", node_id)
    page.page.mouse.click(point[0], point[1])
    page.page.locator(".litecontextmenu .litemenu-entry", has_text=label).first.click()


def test_bundled_workflow_shows_sliders_preset_menu_and_chart(server, browser, tmp_path):
    from gag_core.presets import PRESETS as presets

    page = Page(browser, server["url"])
    try:
        workflow = json.loads((REPO_ROOT / "workflows" / "gag_sdxl.json").read_text())
        node_id = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == "GeometryAwareAttentionGuidance")
        page.load_workflow(workflow, node_id)
        page.page.wait_for_function("(id) => window.comfyAPI.app.app.graph.getNodeById(Number(id))?.__gag", arg=node_id)
        widgets = _gag_widgets(page, node_id)
        # the node's own sliders keep the workflow's values; the extension adds menu, toggle and chart after them
        assert list(widgets)[:2] == ["scale", "beta"]
        assert widgets["scale"]["value"] == pytest.approx(5.0) and widgets["beta"]["value"] == pytest.approx(0.0)
        assert widgets["gag_preset"]["values"] == ["custom"] + [p.label for p in presets.values()]
        assert widgets["gag_chart_toggle"]["value"] is True and not widgets["gag_chart"]["hidden"]
        page.page.screenshot(path=str(tmp_path / "workflow-loaded.png"))

        # a real click on the canvas opens the menu; picking DMD2 sets λ and β from the back end's table
        page.js("(id) => { const app = window.comfyAPI.app.app, n = app.graph.getNodeById(Number(id));"
                " app.canvas.ds.scale = 1; app.canvas.ds.offset = [40 - n.pos[0], 80 - n.pos[1]];"
                " app.graph.setDirtyCanvas(true, true); }", node_id)
        page.page.wait_for_timeout(300)
        _click_preset(page, node_id, presets["dmd2"].label)
        widgets = _gag_widgets(page, node_id)
        assert widgets["gag_preset"]["value"] == presets["dmd2"].label
        assert widgets["scale"]["value"] == pytest.approx(presets["dmd2"].scale)
        assert widgets["beta"]["value"] == pytest.approx(presets["dmd2"].beta)
        page.page.screenshot(path=str(tmp_path / "preset-applied.png"))

        # the extension's widgets never reach the prompt or the saved workflow
        prompt = page.js("async () => (await window.comfyAPI.app.app.graphToPrompt()).output")
        assert set(prompt[node_id]["inputs"]) == {"model", "scale", "beta"}
        assert prompt[node_id]["inputs"]["scale"] == pytest.approx(presets["dmd2"].scale)
        saved = page.js("(id) => window.comfyAPI.app.app.graph.serialize().nodes.find((n) => String(n.id) === id)",
                        node_id)
        assert [v for v in saved["widgets_values"] if v is not None] == [pytest.approx(presets["dmd2"].scale),
                                                                       pytest.approx(presets["dmd2"].beta)]
        # hiding the chart unsubscribes the node on the server
        page.page.wait_for_function("(id) => fetch('/api/gag/telemetry').then((r) => r.json())"
                                    ".then((j) => j.nodes.includes(id))", arg=node_id)
        page.js("(id) => { const n = window.comfyAPI.app.app.graph.getNodeById(Number(id));"
                " const t = n.widgets.find((w) => w.name === 'gag_chart_toggle'); t.value = false;"
                " t.callback(false); }", node_id)
        page.page.wait_for_function("(id) => fetch('/api/gag/telemetry').then((r) => r.json())"
                                    ".then((j) => !j.nodes.includes(id))", arg=node_id)
        assert _gag_widgets(page, node_id)["gag_chart"]["hidden"] is True
        assert page.errors == []
    finally:
        page.close()


def test_tiny_prompt_fills_both_charts(server, browser, tmp_path):
    page = Page(browser, server["url"])
    try:
        for _ in range(4):  # rebuilt if a late default-workflow load of the front end replaced it
            ids = page.js(BUILD_TINY_GRAPH, [STEPS])
            page.page.wait_for_timeout(1000)
            if page.js("(ids) => ids.every((id) => window.comfyAPI.app.app.graph.getNodeById(Number(id))"
                       "?.type?.startsWith('GeometryAwareAttentionGuidance'))", ids):
                break
        # both charts are subscribed before the prompt is queued
        page.page.wait_for_function("(ids) => fetch('/api/gag/telemetry').then((r) => r.json())"
                                    ".then((j) => ids.every((id) => j.nodes.includes(id)))", arg=ids)
        page.js("() => window.comfyAPI.app.app.queuePrompt(0, 1)")
        page.page.wait_for_function(
            "([ids, steps]) => ids.every((id) => window.comfyuiGag.chartData("
            "window.comfyAPI.app.app.graph.getNodeById(Number(id)))?.count === steps)",
            arg=[ids, STEPS], timeout=240_000)
        page.page.wait_for_timeout(300)
        page.page.screenshot(path=str(tmp_path / "page.png"))
        shot = tmp_path / "gag-chart.png"  # the two GAG nodes with their charts
        page.page.screenshot(path=str(shot), clip=page.js(CLIP_NODES, ids))
        if os.environ.get("GAG_WEB_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["GAG_WEB_SCREENSHOT"])
        data = page.js("""(ids) => ids.map((id) => {
          const d = window.comfyuiGag.chartData(window.comfyAPI.app.app.graph.getNodeById(Number(id)));
          return {steps: d.steps, messages: d.messages, points: d.points};
        })""", ids)
        for d in data:
            assert d["steps"] == STEPS and d["messages"] == STEPS  # one message per step, per node
            for p in d["points"]:
                assert p["relGuidance"] > 0 and 0 <= p["cappedFraction"] <= 1 and 0 <= p["parallelShare"] <= 1
                assert p["calls"] > 0 and p["calls"] % 6 == 0  # 6 guided cross-attentions per pass of the tiny UNet
        # the advanced node caps hard (τ = 0.5): most tokens are capped; the simple one (τ = 15) less so
        capped = [sum(p["cappedFraction"] for p in d["points"]) / STEPS for d in data]
        assert capped[1] > 0.5 and capped[1] > capped[0]

        # malformed messages are dropped without errors and without touching the charts
        before = page.js("(id) => window.comfyuiGag.chartData("
                         "window.comfyAPI.app.app.graph.getNodeById(Number(id))).messages", ids[0])
        page.js("""(id) => {
          const api = window.comfyAPI.api.api, ev = window.comfyuiGag.table.event;
          for (const detail of [null, 42, "x", [], {}, {node: id}, {node: id, rel_guidance: "1"},
                                {node: id, rel_guidance: NaN}, {node: id, rel_guidance: 1, step: -1},
                                {node: id, rel_guidance: 1, step: 9, steps: 4}, {node: "<img>", rel_guidance: 1},
                                {node: "99999", rel_guidance: 1, step: 0, steps: 4}])
            api.dispatchEvent(new CustomEvent(ev, {detail}));
        }""", ids[0])
        after = page.js("(id) => window.comfyuiGag.chartData("
                        "window.comfyAPI.app.app.graph.getNodeById(Number(id))).messages", ids[0])
        assert after == before
        assert page.errors == []
    finally:
        page.close()


def test_older_back_end_without_routes_leaves_the_page_working(server, browser):
    page = Page(browser, server["url"], block_presets=True)
    try:
        workflow = json.loads((REPO_ROOT / "workflows" / "gag_sdxl.json").read_text())
        node_id = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == "GeometryAwareAttentionGuidance")
        page.load_workflow(workflow, node_id)
        page.page.wait_for_function("(id) => window.comfyAPI.app.app.graph.getNodeById(Number(id))", arg=node_id)
        widgets = _gag_widgets(page, node_id)
        assert list(widgets) == ["scale", "beta"]  # the node as the back end defines it, nothing added
        assert page.js("() => window.comfyuiGag.table") is None
        assert page.errors == []
        assert any("older back end" in m for m in page.gag_console)
    finally:
        page.close()



def _exported_validator() -> tuple[str, str] | None:
    """(asset file, export name) of the front end's validateComfyWorkflow where a bundle exports it (1.4x does,
    minified); None where it stays module-private (1.35: tests/test_workflows_comfyui.py cuts it out instead)."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec is None:
        return None
    for f in sorted((Path(spec.submodule_search_locations[0]) / "static" / "assets").glob("*.js")):
        m = re.search(r"export\s*\{[^}]*\bvalidateComfyWorkflow as (\w+)", f.read_text(errors="ignore"))
        if m:
            return f.name, m.group(1)
    return None


def _prompt_differences(ours: dict, theirs: dict, object_info: dict) -> list[str]:
    """Where the front end's queued prompt differs from workflow_utils.to_api_prompt: other nodes, other values, or
    an extra input that is not an optional one at its default (a widget a newer host appended, e.g. 0.3x
    CreateVideo's bit_depth, or SaveVideo's hidden top-level codec)."""
    import workflow_utils as wu

    problems = []
    if sorted(ours) != sorted(theirs):
        return [f"nodes {sorted(ours)} vs the front end's {sorted(theirs)}"]
    for node_id, entry in ours.items():
        got = theirs[node_id]
        if got["class_type"] != entry["class_type"]:
            problems.append(f"{node_id}: {entry['class_type']} vs {got['class_type']}")
            continue
        optional = {s.name: s for s in wu.input_specs(object_info[entry["class_type"]]) if s.category == "optional"}
        for name in sorted(set(entry["inputs"]) | set(got["inputs"])):
            if name not in got["inputs"]:
                problems.append(f"{node_id} {entry['class_type']}.{name}: not sent by the front end")
            elif name not in entry["inputs"]:
                spec = optional.get(name)  # a combo's default is its first choice
                default = None if spec is None else spec.options.get("default", (spec.combo or [None])[0])
                if spec is None or got["inputs"][name] != default:
                    problems.append(f"{node_id} {entry['class_type']}.{name}={got['inputs'][name]!r} only sent by "
                                    "the front end")
            elif got["inputs"][name] != entry["inputs"][name]:
                problems.append(f"{node_id} {entry['class_type']}.{name}: {entry['inputs'][name]!r} vs the front "
                                f"end's {got['inputs'][name]!r}")
    return problems


def test_front_end_loads_every_bundled_workflow(server, browser):
    """The host's own front end loads each bundled workflow with every node created as its type and queues the
    prompt tests/workflow_utils.py derives from it (so the parse-level workflow tests read widgets as the front end
    does: seeds, dynamic combos, widgets a newer host appended); where it exports its workflow validator, that
    validator (the real zod schema of this front end) accepts each of them and rejects one without its `version`,
    so the check is not vacuous."""
    import workflow_utils as wu

    object_info = _http(server["url"] + "/api/object_info", timeout=60)
    paths = [p for p in sorted((REPO_ROOT / "workflows").glob("*.json"))  # those for a newer host: left out
             if not wu.missing_node_types(json.loads(p.read_text()), object_info)]
    page = Page(browser, server["url"])
    try:
        for path in paths:
            workflow = json.loads(path.read_text())
            page.load_workflow(workflow, str(workflow["nodes"][0]["id"]))
            types = page.js("() => window.comfyAPI.app.app.graph.nodes.map((n) => [String(n.id), n.type])")
            assert sorted(types) == sorted([str(n["id"]), n["type"]] for n in workflow["nodes"]), path.name
            queued = page.js("async () => (await window.comfyAPI.app.app.graphToPrompt()).output")
            ours = wu.to_api_prompt(workflow, object_info)
            assert _prompt_differences(ours, queued, object_info) == [], path.name
        validator = _exported_validator()
        if validator is not None:
            broken = json.loads(paths[0].read_text())
            broken.pop("version")
            workflows = [json.loads(p.read_text()) for p in paths] + [broken]
            results = page.js("""async ([file, name, workflows]) => {
              const validate = (await import('/assets/' + file))[name];
              const out = [];
              for (const w of workflows) {
                let warned = null;
                const ok = await validate(w, (m) => { warned = String(m); });
                out.push(ok ? null : (warned || 'rejected'));
              }
              return out;
            }""", [validator[0], validator[1], workflows])
            assert dict(zip([p.name for p in paths], results)) == {p.name: None for p in paths}
            assert "valid version" in (results[-1] or ""), "the validator must reject a workflow without a version"
        assert page.errors == []
    finally:
        page.close()

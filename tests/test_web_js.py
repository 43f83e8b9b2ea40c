"""The web extension's pure modules (web/gag_model.js, web/gag_chart.js) under Node.js, fed the back end's real
preset payload: table parsing, preset application per node type, message validation, chart series, graph walks,
and drawing on a recording canvas. Skipped when `node` is not installed (no npm package needed).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from test_nodes_glue import REPO_ROOT, glue

web_routes = glue("web_routes")
presets = __import__("gag_glue.gag_core.presets", fromlist=["x"])

NODE = shutil.which("node")

SCRIPT = r"""
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as m from "./gag_model.mjs";
import { drawChart, SERIES, CHART_HEIGHT, LEGEND_NOTE } from "./gag_chart.mjs";

const { payload, expected } = JSON.parse(readFileSync("./input.json", "utf8"));
let checks = 0;
const check = (fn) => { fn(); checks += 1; };

// --- the preset table
const table = m.parsePresetPayload(payload);
check(() => {
  assert.ok(table);
  assert.equal(table.event, payload.event);
  assert.deepEqual(table.presets.map((p) => p.label), payload.presets.map((p) => p.label));
  assert.deepEqual(Object.keys(table.nodes).sort(), Object.keys(payload.nodes).sort());
});
for (const bad of [null, undefined, 3, "x", [], {}, { version: 1 }, { version: "1", presets: payload.presets, nodes: payload.nodes },
                   { version: 1, presets: [], nodes: payload.nodes }, { version: 1, presets: payload.presets, nodes: {} },
                   { version: 1, presets: [{ label: 7 }, null, "x"], nodes: payload.nodes }]) {
  check(() => assert.equal(m.parsePresetPayload(bad), null, JSON.stringify(bad)?.slice(0, 80)));
}
check(() => {  // junk entries are skipped, good ones kept; a "custom" preset cannot shadow the menu's own entry
  const t = m.parsePresetPayload({ ...payload, event: 5, presets: [null, { label: "custom" }, ...payload.presets, payload.presets[0]],
                                   nodes: { ...payload.nodes, Broken: { widgets: 3 }, Odd: { widgets: { scale: 5, beta: "beta" } } } });
  assert.equal(t.event, m.DEFAULT_EVENT);
  assert.equal(t.presets.length, payload.presets.length);
  assert.ok(!("Broken" in t.nodes));
  assert.deepEqual(t.nodes.Odd.widgets, { beta: "beta" });
});

// --- what a preset sets, per node type and method (expected values computed in Python)
for (const e of expected) {
  check(() => {
    const preset = table.presets.find((p) => p.family === e.family);
    assert.deepEqual(m.presetWidgetValues(table.nodes[e.node], preset, e.method), e.values, `${e.node} ${e.family} ${e.method}`);
  });
}
check(() => {
  assert.equal(m.fitToWidget(25, { min: 0, max: 20 }), 20);
  assert.equal(m.fitToWidget(-1, { min: 0, max: 20 }), 0);
  assert.equal(m.fitToWidget(0.30000000000000004, { round: 0.01 }), 0.3);
  assert.equal(m.fitToWidget(2.5, {}), 2.5);
});

// --- statistics messages
const good = { node: "12", prompt_id: "p1", step: 2, steps: 8, sigma: 3.5, calls: 6, tokens: 100, rel_guidance: 0.4,
               capped_fraction: 0.25, parallel_energy: 1, orthogonal_energy: 3, parallel_share: 0.25 };
check(() => assert.deepEqual(m.parseStatsMessage(good), { node: "12", promptId: "p1", step: 2, steps: 8, sigma: 3.5,
  relGuidance: 0.4, cappedFraction: 0.25, parallelShare: 0.25, calls: 6 }));
check(() => {
  const p = m.parseStatsMessage({ node: 5, rel_guidance: 1.5, capped_fraction: 1.7, parallel_share: -0.2, sigma: null,
                                  prompt_id: 3, calls: -1 });
  assert.deepEqual(p, { node: "5", promptId: null, step: null, steps: null, sigma: null, relGuidance: 1.5,
                        cappedFraction: 1, parallelShare: 0, calls: null });
  assert.equal(m.parseStatsMessage({ node: "3:7", rel_guidance: 0 }).node, "3:7");
});
for (const bad of [null, undefined, 1, "x", [], [good], { ...good, node: undefined }, { ...good, node: "<img>" },
                   { ...good, node: "1".repeat(200) }, { ...good, node: 1.5 }, { ...good, node: {} },
                   { ...good, rel_guidance: undefined }, { ...good, rel_guidance: "0.4" }, { ...good, rel_guidance: -1 },
                   { ...good, rel_guidance: Infinity }, { ...good, rel_guidance: NaN }, { ...good, step: -1 },
                   { ...good, step: 8 }, { ...good, step: 1.5 }, { ...good, steps: 0 }, { ...good, steps: 1e9 },
                   { ...good, steps: "8" }]) {
  check(() => assert.equal(m.parseStatsMessage(bad), null, String(JSON.stringify(bad)).slice(0, 80)));
}

// --- chart series
check(() => {
  const d = new m.ChartData();
  assert.equal(d.count, 0);
  assert.equal(d.last, null);
  for (const step of [0, 1, 3]) d.add(m.parseStatsMessage({ ...good, step }));
  d.add(m.parseStatsMessage({ ...good, step: 1, rel_guidance: 0.9 }));  // a second evaluation of step 1
  assert.equal(d.count, 3);
  assert.equal(d.messages, 4);
  assert.equal(d.points[2], undefined);
  assert.equal(d.points[1].relGuidance, 0.9);
  d.add(m.parseStatsMessage({ ...good, prompt_id: "p2", step: 0 }));  // a new prompt starts a new series
  assert.equal(d.count, 1);
  assert.equal(d.promptId, "p2");
  d.add(m.parseStatsMessage({ ...good, prompt_id: "p2", steps: 4, step: 3 }));  // a new schedule too
  assert.equal(d.count, 1);
  assert.equal(d.steps, 4);
  const s = new m.ChartData();  // no step numbers: appended in order
  s.add(m.parseStatsMessage({ node: "1", rel_guidance: 1 }));
  s.add(m.parseStatsMessage({ node: "1", rel_guidance: 2 }));
  assert.deepEqual(s.points.map((p) => p.relGuidance), [1, 2]);
});

// --- node ids inside subgraphs
check(() => {
  const graph = (nodes) => ({ _nodes: nodes, getNodeById: (id) => nodes.find((n) => n.id === id) ?? null });
  const inner = { id: 3, wanted: true };
  const sub = { id: 5, subgraph: graph([inner, { id: 4 }]) };
  const root = graph([{ id: 1, wanted: true }, sub, { id: 2 }]);
  assert.deepEqual(m.collectNodePaths(root, (n) => !!n.wanted), ["1", "5:3"]);
  assert.equal(m.findNodeByPath(root, "5:3"), inner);
  assert.equal(m.findNodeByPath(root, 1).id, 1);
  assert.equal(m.findNodeByPath(root, "5:9"), null);
  assert.equal(m.findNodeByPath(root, "1:3"), null);
  assert.equal(m.findNodeByPath(null, "1"), null);
});

// --- drawing on a recording canvas context
function recorder() {
  const calls = [];
  const texts = [];
  return new Proxy({ calls, texts, measureText: (t) => ({ width: 6 * t.length }) }, {
    get(target, key) {
      if (key in target) return target[key];
      return (...args) => { calls.push(key); if (key === "fillText") texts.push(args[0]); };
    },
    set(target, key, value) { target[key] = value; return true; },
  });
}
check(() => {
  const d = new m.ChartData();
  for (const step of [0, 1, 2, 5]) d.add(m.parseStatsMessage({ ...good, step, capped_fraction: step === 2 ? null : 0.25 }));
  const ctx = recorder();
  drawChart(ctx, d, 10, 0, 300, CHART_HEIGHT);
  assert.equal(ctx.calls.filter((c) => c === "arc").length, SERIES.length * 4 - 1);  // a dot per value
  assert.equal(ctx.calls.filter((c) => c === "save").length, ctx.calls.filter((c) => c === "restore").length);
  assert.ok(ctx.texts.includes(LEGEND_NOTE) && LEGEND_NOTE.includes("joint"));  // what Oₛ means on each path
  const empty = recorder();
  drawChart(empty, new m.ChartData(), 10, 0, 300, CHART_HEIGHT);
  drawChart(empty, null, 10, 0, 300, CHART_HEIGHT, "note");
  assert.equal(empty.calls.filter((c) => c === "arc").length, 0);
  const tiny = recorder();
  drawChart(tiny, d, 0, 0, 20, 20);
  assert.deepEqual(tiny.calls, []);
});

console.log(JSON.stringify({ checks }));
"""


def expected_values() -> list[dict]:
    """What each node type's widgets become for each preset, from the gag_core table (independent of the JS)."""
    out = []
    for p in presets.PRESETS.values():
        out.append({"node": "GeometryAwareAttentionGuidance", "family": p.family, "method": None,
                    "values": {"scale": p.scale, "beta": p.beta}})
        adv = {"scale": p.scale, "beta": p.beta, "tau": p.tau, "alpha": p.alpha, "start_percent": p.start_percent,
               "end_percent": p.end_percent}
        out.append({"node": "GeometryAwareAttentionGuidanceAdvanced", "family": p.family, "method": "gag",
                     "values": adv})
        out.append({"node": "GeometryAwareAttentionGuidanceAdvanced", "family": p.family, "method": "pladis",
                     "values": dict(adv, scale=p.pladis_scale)})
        out.append({"node": "PLADISGuidance", "family": p.family, "method": None,
                    "values": {"scale": p.pladis_scale}})
    return out


@pytest.mark.skipif(NODE is None, reason="node (Node.js) is not installed")
def test_web_modules_under_node(tmp_path):
    for name in ("gag_model", "gag_chart"):
        shutil.copyfile(REPO_ROOT / "web" / f"{name}.js", tmp_path / f"{name}.mjs")
    (tmp_path / "input.json").write_text(json.dumps({"payload": web_routes.presets_payload(),
                                                     "expected": expected_values()}))
    (tmp_path / "run.mjs").write_text(SCRIPT)
    run = subprocess.run([NODE, "run.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-4000:]
    checks = json.loads(run.stdout.strip().splitlines()[-1])["checks"]
    assert checks >= 40


def test_web_modules_are_plain_es_modules_without_a_build_step():
    """The files ComfyUI serves: ES modules importing only ComfyUI's documented shims and each other."""
    files = sorted((REPO_ROOT / "web").glob("*.js"))
    assert [f.name for f in files] == ["gag.js", "gag_chart.js", "gag_model.js"]
    allowed = {"../../scripts/app.js", "../../scripts/api.js", "./gag_model.js", "./gag_chart.js"}
    for f in files:
        text = f.read_text()
        imports = re.findall(r"""(?:^import\s[^;]*?\sfrom|^import)\s+["']([^"']+)["']""", text, re.M | re.S)
        assert "import(" not in text  # no dynamic imports either
        assert set(imports) <= allowed, (f.name, imports)
        assert "require(" not in text
    assert "app.registerExtension(" in (REPO_ROOT / "web" / "gag.js").read_text()

// ComfyUI-GAG front-end extension: a preset menu and a live guidance chart on the GAG / PLADIS nodes.
//
// The preset table and which widget each preset field sets come from the back end (GET /gag/presets, built
// from gag_core.presets.PRESETS); nothing is duplicated here. The chart shows, per sampler step, what the back
// end sends over ComfyUI's websocket (nodes/telemetry.py). The page tells the back end which nodes show a chart
// (POST /gag/telemetry); hidden charts cost nothing there. With an older back end (no route) the extension
// adds nothing; malformed messages are dropped; every GAG node in the graph has its own chart.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  ChartData,
  CUSTOM,
  collectNodePaths,
  findNodeByPath,
  fitToWidget,
  parsePresetPayload,
  parseStatsMessage,
  presetWidgetValues,
} from "./gag_model.js";
import { CHART_HEIGHT, drawChart } from "./gag_chart.js";

const PRESET_WIDGET = "gag_preset";
const TOGGLE_WIDGET = "gag_chart_toggle";
const CHART_WIDGET = "gag_chart";
const CHART_PROPERTY = "GAG chart";
const PRESETS_TIMEOUT_MS = 5000;
const NOTICE_EVENT = "comfyui_gag.notice"; // nodes/run_check.py: why a run was not (fully) guided
const NOTICE_LIFE_MS = 20000;
const NOTICE_MAX_CHARS = 2000;
const notices = []; // the notices this page showed (for tests), newest last

let table = null; // parsed /gag/presets, null with an older back end
let syncTimer = null;
let lastSync = null;

function warn(what, e) {
  console.warn(`[GAG] ${what}:`, e);
}

function guard(what, fn) {
  return function (...args) {
    try {
      return fn.apply(this, args);
    } catch (e) {
      warn(what, e);
    }
  };
}

function chain(proto, name, fn) {
  const previous = proto[name];
  proto[name] = function (...args) {
    const r = previous?.apply(this, args);
    guard(name, fn).apply(this, args);
    return r;
  };
}

const findWidget = (node, name) => node.widgets?.find((w) => w.name === name);

async function loadTable() {
  try {
    // a server that never answers must not hold up the page: give up after a few seconds
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), PRESETS_TIMEOUT_MS);
    const res = await api.fetchApi("/gag/presets", { cache: "no-store", signal: abort.signal })
      .finally(() => clearTimeout(timer));
    if (!res.ok) {
      console.info(`[GAG] /gag/presets answered ${res.status} (older back end?): no preset menu or chart`);
      return null;
    }
    const parsed = parsePresetPayload(await res.json());
    if (!parsed) console.warn("[GAG] /gag/presets sent an unexpected table: no preset menu or chart");
    return parsed;
  } catch (e) {
    warn("could not read /gag/presets", e);
    return null;
  }
}

// ------------------------------------------------------------------------------------------- presets

function setWidgetValue(node, widget, value) {
  const v = fitToWidget(value, widget.options);
  if (typeof widget.setValue === "function") widget.setValue(v, { node, canvas: app.canvas });
  else {
    widget.value = v;
    widget.callback?.(v, app.canvas, node);
  }
}

const PRESET_TIP =
  "Starting points per model (gag_core/presets.py). Each value names its source: paper, public port, " +
  "measured here (this project's demo) or extrapolated (carried over from another model, untested on this one).";

/** The preset menu's tooltip: every value the preset sets, with its source (Preset.source from the back end). */
function presetTooltip(preset) {
  if (!preset) return PRESET_TIP;
  const sources = Object.fromEntries(Array.isArray(preset.source) ? preset.source.filter(Array.isArray) : []);
  const of = (field) => sources[field] ?? sources.all ?? "extrapolated";
  const values = [
    ["λ", "scale"], ["β", "beta"], ["τ", "tau"], ["α", "alpha"], ["PLADIS s", "pladis_scale"],
  ].map(([sym, field]) => `${sym} ${preset[field]} (${of(field)})`);
  values.push(`steps ${preset.start_percent}–${preset.end_percent} (${of("start_percent")})`);
  values.push(`blocks ${preset.blocks} (${of("blocks")})`);
  return `${preset.label}: ${values.join(", ")}. ${preset.note ?? ""}`.trim();
}

function applyPreset(node, label) {
  const state = node.__gag;
  const preset = table?.presets.find((p) => p.label === label);
  if (state?.preset) state.preset.tooltip = presetTooltip(preset);
  if (!state || !preset) return;
  const values = presetWidgetValues(state.spec, preset, findWidget(node, "method")?.value);
  state.applying = true;
  try {
    for (const [name, value] of Object.entries(values)) {
      const widget = findWidget(node, name);
      if (widget) setWidgetValue(node, widget, value);
    }
  } finally {
    state.applying = false;
  }
  node.setDirtyCanvas?.(true, true);
}

// ------------------------------------------------------------------------------------------- chart

function chartShown(node) {
  return !!node.__gag?.spec.chart && node.properties?.[CHART_PROPERTY] !== false;
}

function setChartShown(node, shown) {
  const state = node.__gag;
  if (!state?.chart) return;
  node.properties = node.properties ?? {};
  node.properties[CHART_PROPERTY] = !!shown;
  state.chart.hidden = !shown;
  if (state.toggle) state.toggle.value = !!shown;
  if (!shown && typeof node.computeSize === "function" && node.size) {
    node.setSize?.([node.size[0], node.computeSize()[1]]);
  }
  node.setDirtyCanvas?.(true, true);
  scheduleSync();
}

function chartWidget() {
  return {
    name: CHART_WIDGET,
    type: "gag_chart",
    value: null,
    serialize: false,
    options: { serialize: false },
    computeSize(width) {
      return [width ?? 0, CHART_HEIGHT];
    },
    draw(ctx, node, width, y) {
      try {
        const state = node.__gag;
        const method = findWidget(node, "method")?.value;
        const note = method === "pladis" ? "PLADIS sends no statistics" : null;
        drawChart(ctx, state?.data, 10, y + 2, width - 20, CHART_HEIGHT - 6, note);
      } catch (e) {
        warn("chart drawing failed", e);
      }
    },
  };
}

function setupNode(node, spec) {
  const state = { spec, data: new ChartData(), applying: false, chart: null, toggle: null };
  node.__gag = state;

  const labels = table.presets.map((p) => p.label);
  const preset = node.addWidget("combo", PRESET_WIDGET, CUSTOM, (v) => applyPreset(node, v), {
    values: [CUSTOM, ...labels],
    serialize: false,
  });
  preset.label = "preset";
  preset.serialize = false;
  preset.tooltip = PRESET_TIP;
  state.preset = preset;
  // a hand-made change makes the menu say "custom" again
  for (const name of Object.keys(spec.widgets)) {
    const w = findWidget(node, name);
    if (!w) continue;
    const previous = w.callback;
    w.callback = function (...args) {
      const r = previous?.apply(this, args);
      if (!state.applying) {
        preset.value = CUSTOM;
        preset.tooltip = PRESET_TIP;
      }
      return r;
    };
  }

  if (spec.chart) {
    const toggle = node.addWidget("toggle", TOGGLE_WIDGET, true, (v) => setChartShown(node, v), {
      on: "shown",
      off: "hidden",
      serialize: false,
    });
    toggle.label = "guidance chart";
    toggle.serialize = false;
    state.toggle = toggle;
    state.chart = node.addCustomWidget(chartWidget());
    state.chart.hidden = !chartShown(node);
    toggle.value = chartShown(node);
  }
  if (typeof node.computeSize === "function" && node.size) {  // room for the new widgets
    node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
  }
  scheduleSync();
}

function onStats(event) {
  const msg = parseStatsMessage(event?.detail);
  if (!msg) return;
  const node = findNodeByPath(app.graph, msg.node);
  if (!node?.__gag?.chart) return;
  node.__gag.data.add(msg);
  node.setDirtyCanvas?.(true, false);
}

// ------------------------------------------------------------------------------------------- notices

// A back-end notice (sent once per sampling run that guided nothing, or only part) as a toast; the server log has
// it too. Front ends without the toast API get it in the console.
function onNotice(event) {
  const d = event?.detail;
  if (!d || typeof d.message !== "string" || !d.message) return;
  const message = d.message.slice(0, NOTICE_MAX_CHARS);
  notices.push(message);
  if (notices.length > 20) notices.shift();
  const toast = app.extensionManager?.toast;
  if (typeof toast?.add === "function") {
    toast.add({ severity: d.level === "info" ? "info" : "warn", summary: "Attention guidance (GAG)",
                detail: message, life: NOTICE_LIFE_MS });
  } else {
    console.warn(message);
  }
}

// ------------------------------------------------------------------------------------------- subscription

function scheduleSync(force = false) {
  if (force) lastSync = null;
  clearTimeout(syncTimer);
  syncTimer = setTimeout(() => sync().catch((e) => warn("subscription failed", e)), 50);
}

async function sync() {
  if (!table || table.noTelemetry || !api.clientId || !app.graph) return;
  const nodes = collectNodePaths(app.graph, (n) => !!n.__gag?.chart && chartShown(n)).sort();
  const key = `${api.clientId}|${nodes.join(",")}`;
  if (key === lastSync) return;
  const res = await api.fetchApi("/gag/telemetry", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ client_id: api.clientId, nodes }),
  });
  if (res.ok) lastSync = key;
  else if (res.status === 404) table.noTelemetry = true; // a server without the route: stop asking
}

// ------------------------------------------------------------------------------------------- extension

app.registerExtension({
  name: "comfyui_gag.guidance",

  async init() {
    api.addEventListener(NOTICE_EVENT, guard("notice", onNotice));
    table = await loadTable();
    if (!table) return;
    api.addEventListener(table.event, guard("statistics message", onStats));
    api.addEventListener("status", () => scheduleSync());
    api.addEventListener("reconnected", () => scheduleSync(true));
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    const spec = table?.nodes[nodeData?.name];
    if (!spec) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      setupNode(this, spec);
    });
    chain(nodeType.prototype, "onConfigure", function () {
      if (this.__gag?.chart) setChartShown(this, chartShown(this));
    });
    chain(nodeType.prototype, "onRemoved", function () {
      scheduleSync();
    });
  },

  afterConfigureGraph() {
    scheduleSync();
  },
});

// For tests and for other extensions: the parsed table and a node's chart data.
window.comfyuiGag = {
  get table() {
    return table;
  },
  chartData: (node) => node?.__gag?.data ?? null,
  applyPreset: (node, label) => applyPreset(node, label),
  sync: () => sync(),
  notices,
};

// Pure data logic of the GAG web extension (no DOM, no ComfyUI import): it validates what the back end sends
// (the preset table of /gag/presets, the per-step statistics messages) and holds one node's chart series.
// Anything malformed is dropped here, so the page never sees it.

export const CUSTOM = "custom";
export const DEFAULT_EVENT = "comfyui_gag.stats";
export const MAX_STEPS = 10000;
const NODE_ID = /^[0-9A-Za-z:_-]{1,128}$/;

const isObject = (x) => x !== null && typeof x === "object" && !Array.isArray(x);
const isNumber = (x) => typeof x === "number" && Number.isFinite(x);
const isIndex = (x, max) => Number.isInteger(x) && x >= 0 && x < max;

/** The /gag/presets JSON as {version, event, presets: [...], nodes: {type: {widgets, byMethod, chart}}}, or null. */
export function parsePresetPayload(json) {
  if (!isObject(json) || !isNumber(json.version) || json.version < 1) return null;
  const presets = [];
  for (const p of Array.isArray(json.presets) ? json.presets : []) {
    if (!isObject(p) || typeof p.label !== "string" || !p.label || p.label === CUSTOM) continue;
    if (presets.some((q) => q.label === p.label)) continue;
    presets.push(p);
  }
  const nodes = {};
  for (const [type, spec] of Object.entries(isObject(json.nodes) ? json.nodes : {})) {
    if (!isObject(spec) || !isObject(spec.widgets)) continue;
    const widgets = stringMap(spec.widgets);
    const byMethod = {};
    for (const [method, over] of Object.entries(isObject(spec.by_method) ? spec.by_method : {})) {
      if (isObject(over)) byMethod[method] = stringMap(over);
    }
    nodes[type] = { widgets, byMethod, chart: spec.chart === true };
  }
  if (!presets.length || !Object.keys(nodes).length) return null;
  const event = typeof json.event === "string" && json.event ? json.event : DEFAULT_EVENT;
  return { version: json.version, event, presets, nodes };
}

function stringMap(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (typeof v === "string") out[k] = v;
  return out;
}

/** {widget name: value} a preset sets on a node of this spec (method: the node's "method" widget, if any). */
export function presetWidgetValues(spec, preset, method) {
  const fields = { ...spec.widgets, ...((method != null && spec.byMethod[method]) || {}) };
  const out = {};
  for (const [widget, field] of Object.entries(fields)) {
    if (isNumber(preset[field])) out[widget] = preset[field];
  }
  return out;
}

/** Clamp a number into a widget's [min, max] and round it to its `round` step, as the widget itself would. */
export function fitToWidget(value, options = {}) {
  let v = value;
  if (isNumber(options.min)) v = Math.max(options.min, v);
  if (isNumber(options.max)) v = Math.min(options.max, v);
  if (isNumber(options.round) && options.round > 0) v = Math.round(v / options.round) * options.round;
  return Number(v.toFixed(6));
}

/** A statistics message normalised to {node, promptId, step, steps, sigma, relGuidance, ...}, or null. */
export function parseStatsMessage(detail) {
  if (!isObject(detail)) return null;
  let node = detail.node;
  if (Number.isInteger(node)) node = String(node);
  if (typeof node !== "string" || !NODE_ID.test(node)) return null;
  const steps = detail.steps == null ? null : detail.steps;
  if (steps !== null && !(Number.isInteger(steps) && steps >= 1 && steps <= MAX_STEPS)) return null;
  const step = detail.step == null ? null : detail.step;
  if (step !== null && !isIndex(step, steps ?? MAX_STEPS)) return null;
  if (!isNumber(detail.rel_guidance) || detail.rel_guidance < 0) return null;
  const fraction = (x) => (isNumber(x) ? Math.min(1, Math.max(0, x)) : null);
  return {
    node,
    promptId: typeof detail.prompt_id === "string" ? detail.prompt_id : null,
    step,
    steps,
    sigma: isNumber(detail.sigma) ? detail.sigma : null,
    relGuidance: detail.rel_guidance,
    cappedFraction: fraction(detail.capped_fraction),
    parallelShare: fraction(detail.parallel_share),
    calls: Number.isInteger(detail.calls) && detail.calls >= 0 ? detail.calls : null,
  };
}

/** The series of one node's chart: one point per sampler step of the latest run. */
export class ChartData {
  constructor() {
    this.reset();
  }

  reset() {
    this.promptId = null;
    this.steps = null;
    this.points = []; // sparse: index = step
    this.lastStep = null;
    this.messages = 0;
  }

  /** Add a parsed message; a new prompt or a different step count starts a new series. */
  add(msg) {
    const newPrompt = msg.promptId !== null && msg.promptId !== this.promptId;
    const newSchedule = msg.steps !== null && msg.steps !== this.steps;
    if (newPrompt || newSchedule) {
      this.reset();
      this.promptId = msg.promptId;
      this.steps = msg.steps;
    }
    const step = msg.step ?? Math.min(this.points.length, MAX_STEPS - 1);
    this.points[step] = {
      relGuidance: msg.relGuidance,
      cappedFraction: msg.cappedFraction,
      parallelShare: msg.parallelShare,
      sigma: msg.sigma,
      calls: msg.calls,
    };
    this.lastStep = step;
    this.messages += 1;
  }

  /** Number of steps that have a point. */
  get count() {
    return this.points.reduce((n, p) => n + (p ? 1 : 0), 0);
  }

  get last() {
    return this.lastStep === null ? null : this.points[this.lastStep];
  }
}

/** Walk a node id path ("12", or "5:3" for node 3 inside subgraph node 5) from the root graph. */
export function findNodeByPath(graph, path) {
  let node = null;
  let current = graph;
  for (const part of String(path).split(":")) {
    if (!current || typeof current.getNodeById !== "function") return null;
    node = current.getNodeById(/^\d+$/.test(part) ? Number(part) : part);
    if (!node) return null;
    current = node.subgraph;
  }
  return node;
}

/** Id paths of every node for which `wanted(node)` holds, in the root graph and inside subgraphs. */
export function collectNodePaths(graph, wanted, prefix = "", depth = 0) {
  const out = [];
  if (!graph || depth > 16) return out;
  const nodes = graph._nodes ?? graph.nodes ?? [];
  for (const node of nodes) {
    const path = prefix + String(node.id);
    if (wanted(node)) out.push(path);
    if (node.subgraph && node.subgraph !== graph) out.push(...collectNodePaths(node.subgraph, wanted, path + ":", depth + 1));
  }
  return out;
}

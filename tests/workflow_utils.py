"""Helpers for the bundled UI-format workflows: node schemas, widget values, links, API conversion, front-end schema.

Node schemas are ComfyUI's /object_info entries. With COMFYUI_PATH set they come from the host's live node registry
plus this pack; without it from `workflow_object_info.json`, a snapshot of exactly the node types the workflows use
(refresh it with `COMFYUI_PATH=... python tests/workflow_utils.py --write-snapshot`; a `comfyui` test checks it).
"""
from __future__ import annotations

import asyncio
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
SNAPSHOT_PATH = Path(__file__).with_name("workflow_object_info.json")

# Workflow file -> gag_core.presets family whose values its guidance node must carry.
WORKFLOW_FAMILY = {
    "gag_sdxl.json": "sdxl",
    "gag_dmd2.json": "dmd2",
    "gag_flux1_schnell.json": "flux1",
    "gag_flux1_dev.json": "flux1",
    "gag_qwen_image.json": "qwen_image",
    "gag_zimage_turbo.json": "zimage",
    "gag_flux2_klein.json": "flux2",
    "gag_wan22_t2v.json": "wan",
    "gag_minimax_h3_i2v.json": "minimax_h3",
}
GUIDANCE_NODES = ("GeometryAwareAttentionGuidance", "GeometryAwareAttentionGuidanceAdvanced", "PLADISGuidance")
# Node types that exist only in the front end (never sent to the server).
FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
# A V3 dynamic combo (0.3x SaveVideo's `format`): a combo of option keys; the chosen option's inputs follow it
# as widgets named "<parent>.<input>" (ComfyUI's finalize_prefix), recursively.
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
# Output nodes whose files are the two results compared (image or video workflows).
SAVE_NODES = ("SaveImage", "SaveVideo")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
# (node type, widget) -> models folder of the file it names (ComfyUI's folder_paths names).
MODEL_INPUT_FOLDERS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("LoraLoader", "lora_name"): "loras",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
}
# (node type, widget) naming a file of the host's input folder (the user's own image): any file name fits.
INPUT_FILE_WIDGETS = frozenset({("LoadImage", "image")})


# ----------------------------------------------------------------------------------------------------------------
# Workflows


def workflow_paths() -> list[Path]:
    """The bundled workflow files, sorted."""
    return sorted(WORKFLOWS_DIR.glob("*.json"))


def load_workflow(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def nodes_by_id(workflow: dict) -> dict:
    return {node["id"]: node for node in workflow["nodes"]}


def links_by_id(workflow: dict) -> dict:
    return {link[0]: link for link in workflow["links"]}


# ----------------------------------------------------------------------------------------------------------------
# Node schemas (/object_info entries)


@dataclass(frozen=True)
class InputSpec:
    """One input of a node as /object_info describes it: name, type (a str, or a list = combo), options."""

    name: str
    type: object
    options: dict
    category: str  # "required" or "optional"

    @property
    def combo(self) -> list | None:
        """The choices of a combo input (old list form or V3 "COMBO" form), else None."""
        if isinstance(self.type, list):
            return self.type
        if self.type == "COMBO":
            return list(self.options.get("options", []))
        if self.type == DYNAMIC_COMBO:
            return [o["key"] for o in self.options.get("options", [])]
        return None

    def option_inputs(self, key) -> dict:
        """A dynamic combo's inputs for option `key` ({} for any other input or an unknown key)."""
        if self.type != DYNAMIC_COMBO:
            return {}
        return next((o.get("inputs", {}) for o in self.options.get("options", []) if o.get("key") == key), {})

    @property
    def socket_type(self) -> str:
        return "COMBO" if self.combo is not None else str(self.type)

    @property
    def is_widget(self) -> bool:
        """True when the front end draws a widget (and stores a value in widgets_values) for this input."""
        if self.options.get("hidden"):  # kept for old API prompts; the front end draws nothing for it
            return False
        if self.combo is not None:
            return True
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def has_control(self) -> bool:
        """True when the front end adds a 'control after generate' widget after this one (one more value)."""
        if not self.is_widget:
            return False
        flag = self.options.get("control_after_generate")
        if self.type == "INT" and flag is None:  # the front end's legacy rule for seeds
            return self.name in ("seed", "noise_seed")
        return bool(flag)


def input_specs(info: dict, prefix: str = "") -> list[InputSpec]:
    """Inputs of a node in the order the front end builds its slots and widgets (required, then optional).
    `info` may also be a dynamic combo option's {"inputs": ...}; `prefix` names its inputs "<parent>.<name>"."""
    specs = []
    order = info.get("input_order") or {}
    for category in ("required", "optional"):
        section = info.get("input", info.get("inputs", {})).get(category) or {}
        for name in order.get(category) or list(section):
            raw = section[name]
            options = raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else {}
            specs.append(InputSpec(prefix + name, raw[0], options, category))
    return specs


def _layout(specs, values, pos: int, layout: list) -> int:
    """Append the widget slots of `specs` to `layout`, expanding dynamic combos by the saved value at their slot
    (their default, or first option, past the end of `values`); returns the next slot."""
    for spec in specs:
        if not spec.is_widget:
            continue
        layout.append((spec, "value"))
        value = values[pos] if pos < len(values) else spec.options.get("default", (spec.combo or [None])[0])
        pos += 1
        if spec.has_control:
            layout.append((spec, "control"))
            pos += 1
        if spec.options.get("image_upload"):  # LoadImage: the front end's upload button stores a value too
            layout.append((spec, "upload"))
            pos += 1
        nested = spec.option_inputs(value)
        if nested:
            pos = _layout(input_specs({"inputs": nested}, spec.name + "."), values, pos, layout)
    return pos


def widget_layout(info: dict, values=()) -> list[tuple[InputSpec, str]]:
    """One entry per widgets_values slot: (input, "value"), (input, "control") or (input, "upload"); `values` (the saved
    widgets_values) picks the inputs of dynamic combos."""
    layout = []
    _layout(input_specs(info), list(values or ()), 0, layout)
    return layout


def widget_values(node: dict, info: dict) -> dict:
    """Map widget name -> value for a saved node; ValueError when the count does not fit the schema.
    Optional widgets a newer host added at the end (0.3x CreateVideo's bit_depth) may be missing: the front end
    loads such a workflow with their defaults, and the prompt leaves them out."""
    values = node.get("widgets_values", [])
    layout = widget_layout(info, values)
    missing = layout[len(values):]
    if len(values) > len(layout) or any(spec.category != "optional" for spec, _ in missing):
        names = [s.name + (" (control)" if k == "control" else "") for s, k in layout]
        raise ValueError(f"node {node['id']} {node['type']}: {len(values)} widget values {values!r} "
                         f"for {len(layout)} widgets {names}")
    return {spec.name: value for (spec, kind), value in zip(layout, values) if kind == "value"}


def output_types(info: dict) -> list[str]:
    return [t if isinstance(t, str) else "COMBO" for t in info.get("output", [])]


def types_compatible(out_type: str, in_type: str) -> bool:
    """LiteGraph's rule: equal, a wildcard, or overlapping comma-separated type lists."""
    if out_type == in_type or "*" in (out_type, in_type) or "" in (out_type, in_type):
        return True
    return bool(set(out_type.split(",")) & set(in_type.split(",")))


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def value_problem(spec: InputSpec, value, model_names: set[str] = frozenset()) -> str | None:
    """Why `value` does not fit input `spec` (None when it fits). `model_names`: files the node offers to download."""
    combo = spec.combo
    if combo is not None:
        if value in combo or value in model_names:
            return None
        return f"{spec.name}={value!r} is not one of {combo[:12]!r}"
    t, o = spec.type, spec.options
    if t == "INT" and not (isinstance(value, int) and not isinstance(value, bool)):
        return f"{spec.name}={value!r} is not an int"
    if t == "FLOAT" and not _is_number(value):
        return f"{spec.name}={value!r} is not a number"
    if t in ("INT", "FLOAT"):
        if "min" in o and value < o["min"]:
            return f"{spec.name}={value!r} < min {o['min']}"
        if "max" in o and value > o["max"]:
            return f"{spec.name}={value!r} > max {o['max']}"
    if t == "STRING" and not isinstance(value, str):
        return f"{spec.name}={value!r} is not a string"
    if t == "BOOLEAN" and not isinstance(value, bool):
        return f"{spec.name}={value!r} is not a boolean"
    return None


def node_model_names(node: dict) -> set[str]:
    return {m.get("name") for m in node.get("properties", {}).get("models", []) or []}


def widget_problems(node: dict, info: dict) -> list[str]:
    """Every widget value of `node` that does not fit its input, and control values that are not valid."""
    try:
        layout = widget_layout(info, node.get("widgets_values", []))
        widget_values(node, info)
    except ValueError as e:
        return [str(e)]
    problems = []
    names = node_model_names(node)
    for (spec, kind), value in zip(layout, node.get("widgets_values", [])):
        if kind == "control":
            if value not in CONTROL_VALUES:
                problems.append(f"{spec.name} control={value!r} not in {CONTROL_VALUES}")
            continue
        if kind == "upload" or (node["type"], spec.name) in INPUT_FILE_WIDGETS:
            if not isinstance(value, str) or not value:
                problems.append(f"{spec.name}={value!r} is not a file name")
            continue
        allowed = names if (node["type"], spec.name) in MODEL_INPUT_FOLDERS else frozenset()
        problem = value_problem(spec, value, allowed)
        if problem:
            problems.append(problem)
    return problems


# ----------------------------------------------------------------------------------------------------------------
# Links and graph structure


def link_problems(workflow: dict, object_info: dict) -> list[str]:
    """Links that do not join an existing output to an existing input of a compatible type, both ways recorded."""
    problems = []
    nodes = nodes_by_id(workflow)
    ids = [link[0] for link in workflow["links"]]
    if len(ids) != len(set(ids)):
        problems.append(f"duplicate link ids in {ids}")
    for link in workflow["links"]:
        if len(link) != 6:
            problems.append(f"link {link!r} is not [id, origin, slot, target, slot, type]")
            continue
        lid, o_id, o_slot, t_id, t_slot, ltype = link
        origin, target = nodes.get(o_id), nodes.get(t_id)
        if origin is None or target is None:
            problems.append(f"link {lid} joins missing node {o_id if origin is None else t_id}")
            continue
        outs, ins = origin.get("outputs", []), target.get("inputs", [])
        if o_slot >= len(outs) or t_slot >= len(ins):
            problems.append(f"link {lid} uses a missing slot ({o_slot} of {o_id}, {t_slot} of {t_id})")
            continue
        out, inp = outs[o_slot], ins[t_slot]
        if lid not in (out.get("links") or []):
            problems.append(f"link {lid} not listed on output {o_slot} of node {o_id}")
        if inp.get("link") != lid:
            problems.append(f"link {lid} not recorded on input {inp['name']} of node {t_id}")
        if out["type"] != ltype:
            problems.append(f"link {lid} type {ltype} != output type {out['type']} of node {o_id}")
        if not types_compatible(ltype, inp["type"]):
            problems.append(f"link {lid} joins {ltype} to input {inp['name']} of type {inp['type']}")
        o_info, t_info = object_info.get(origin["type"]), object_info.get(target["type"])
        if o_info is not None:
            real = output_types(o_info)
            if o_slot >= len(real) or real[o_slot] != out["type"]:
                problems.append(f"node {o_id} {origin['type']} output {o_slot} is {real[o_slot:o_slot + 1]}, "
                                f"the workflow says {out['type']}")
        if t_info is not None:
            spec = {s.name: s for s in input_specs(t_info)}.get(inp["name"])
            if spec is None:
                problems.append(f"node {t_id} {target['type']} has no input {inp['name']!r}")
            elif not types_compatible(ltype, spec.socket_type):
                problems.append(f"link {lid} joins {ltype} to {target['type']}.{inp['name']} of type "
                                f"{spec.socket_type}")
    for node in workflow["nodes"]:
        for inp in node.get("inputs", []):
            if inp.get("link") is not None and inp["link"] not in ids:
                problems.append(f"node {node['id']} input {inp['name']} names missing link {inp['link']}")
        for slot, out in enumerate(node.get("outputs", [])):
            for lid in out.get("links") or []:
                link = next((l for l in workflow["links"] if l[0] == lid), None)
                if link is None or link[1] != node["id"] or link[2] != slot:
                    problems.append(f"node {node['id']} output {slot} lists link {lid} it does not start")
    return problems


def slot_problems(node: dict, info: dict) -> list[str]:
    """Input and output slots of a saved node that disagree with its schema."""
    problems = []
    specs = {s.name: s for s in input_specs(info)}
    for inp in node.get("inputs", []):
        spec = specs.get(inp["name"])
        if spec is None:
            problems.append(f"input slot {inp['name']!r} is not an input of {node['type']}")
            continue
        if not types_compatible(inp["type"], spec.socket_type):
            problems.append(f"input slot {inp['name']} type {inp['type']} != {spec.socket_type}")
        if spec.is_widget and inp.get("widget", {}).get("name") != inp["name"]:
            problems.append(f"input slot {inp['name']} is a widget input without 'widget': {{'name': ...}}")
    for spec in specs.values():
        if not spec.is_widget and spec.category == "required" and spec.name not in {i["name"] for i in
                                                                                   node.get("inputs", [])}:
            problems.append(f"required input {spec.name!r} has no slot")
    # Saved outputs must be the schema's, in order; an output a newer host added at the end (SaveImage's IMAGE
    # on 0.3x) is not in a workflow saved before it, and the front end loads that workflow unchanged.
    outs = [o["type"] for o in node.get("outputs", [])]
    if outs != output_types(info)[:len(outs)]:
        problems.append(f"outputs {outs} != schema outputs {output_types(info)}")
    return problems


def upstream(workflow: dict, node_id, input_name: str):
    """(origin node, origin slot) linked into `input_name` of node `node_id`, or None."""
    nodes, links = nodes_by_id(workflow), links_by_id(workflow)
    for inp in nodes[node_id].get("inputs", []):
        if inp["name"] == input_name and inp.get("link") is not None:
            link = links[inp["link"]]
            return nodes[link[1]], link[2]
    return None


# ----------------------------------------------------------------------------------------------------------------
# API format (what the front end's Queue button sends)


def to_api_prompt(workflow: dict, object_info: dict) -> dict:
    """Convert a UI workflow to the API prompt format: {id: {class_type, inputs, _meta}}."""
    nodes, links = nodes_by_id(workflow), links_by_id(workflow)
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']} {node['type']} is muted or bypassed (mode {node['mode']})")
        info = object_info[node["type"]]
        values = widget_values(node, info)
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        inputs = {}
        for spec in input_specs(info):
            if spec.name in linked:
                link = links[linked[spec.name]]
                if nodes[link[1]]["type"] in FRONTEND_ONLY:
                    raise ValueError(f"node {node['id']} input {spec.name} comes from front-end-only node {link[1]}")
                inputs[spec.name] = [str(link[1]), link[2]]
            elif spec.name in values:
                inputs[spec.name] = values[spec.name]
        for name, value in values.items():  # a dynamic combo's chosen inputs, sent as "<parent>.<name>"
            inputs.setdefault(name, value)
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title", node["type"])}}
    return prompt


# ----------------------------------------------------------------------------------------------------------------
# The front end's Zod schema for a saved workflow (ComfyUI_frontend, src/platform/workflow/validation/schemas/
# workflowSchema.ts: validateComfyWorkflow -> zComfyWorkflow for any version but 1), ported check by check.

_REPO_LIKE = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9._-]*[a-zA-Z0-9])?$")
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([\da-z-]+(?:\.[\da-z-]+)*))?"
                     r"(?:\+([\da-z-]+(?:\.[\da-z-]+)*))?$")
_GIT_HASH = re.compile(r"^[0-9a-f]{4,40}$", re.I)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def _num(x) -> bool:
    return _is_number(x)


def _node_id(x) -> bool:
    return (isinstance(x, int) and not isinstance(x, bool)) or isinstance(x, str)


def _slot(x) -> bool:
    return (isinstance(x, int) and not isinstance(x, bool)) or (isinstance(x, str) and x.lstrip("-").isdigit())


def _vector2(x) -> bool:
    if isinstance(x, list):
        return len(x) == 2 and all(_num(v) for v in x)
    return isinstance(x, dict) and _num(x.get("0")) and _num(x.get("1"))


def _data_type(x) -> bool:
    return isinstance(x, str) or _num(x) or (isinstance(x, list) and all(isinstance(v, str) for v in x))


def _url(x) -> bool:
    if not isinstance(x, str):
        return False
    parsed = urlparse(x)
    return bool(parsed.scheme) and bool(parsed.netloc or parsed.path)


def model_file_problems(m, where: str) -> list[str]:
    """zModelFile: {name, url (a URL), hash?, hash_type?, directory}."""
    if not isinstance(m, dict):
        return [f"{where}: model entry {m!r} is not an object"]
    p = []
    for key in ("name", "directory"):
        if not isinstance(m.get(key), str):
            p.append(f"{where}: model {key} {m.get(key)!r} is not a string")
    if not _url(m.get("url")):
        p.append(f"{where}: model url {m.get('url')!r} is not a URL")
    for key in ("hash", "hash_type"):
        if key in m and not isinstance(m[key], str):
            p.append(f"{where}: model {key} is not a string")
    return p


def _properties_problems(props, where: str) -> list[str]:
    if not isinstance(props, dict):
        return [f"{where}: properties is not an object"]
    p = []
    if "Node name for S&R" in props and not isinstance(props["Node name for S&R"], str):
        p.append(f"{where}: 'Node name for S&R' is not a string")
    if "cnr_id" in props:
        c = props["cnr_id"]
        if not (isinstance(c, str) and 1 <= len(c) <= 100 and _REPO_LIKE.match(c)):
            p.append(f"{where}: cnr_id {c!r} is not a registry id")
    if "ver" in props:
        v = props["ver"]
        ok = v == "unknown" or (isinstance(v, str) and (_SEMVER.match(v.removeprefix("v")) or
                                                         _GIT_HASH.match(v.removeprefix("v"))))
        if not ok:
            p.append(f"{where}: ver {v!r} is neither semver, a git hash nor 'unknown'")
    if "models" in props:
        if not isinstance(props["models"], list):
            p.append(f"{where}: properties.models is not a list")
        else:
            for m in props["models"]:
                p += model_file_problems(m, where)
    return p


def zod_problems(workflow) -> list[str]:
    """What the front end's validateComfyWorkflow would reject (empty list: it loads without a Zod alert)."""
    if not isinstance(workflow, dict):
        return ["workflow is not an object"]
    if not _num(workflow.get("version")):
        return [f"Workflow does not contain a valid version: {workflow.get('version')!r}"]
    if workflow["version"] == 1:
        return ["version 1 (the LiteGraph state schema) is not what these workflows use; save as 0.4"]
    p = []
    if "id" in workflow and not (isinstance(workflow["id"], str) and _UUID.match(workflow["id"])):
        p.append(f"id {workflow['id']!r} is not a UUID")
    if "revision" in workflow and not _num(workflow["revision"]):
        p.append("revision is not a number")
    if not _node_id(workflow.get("last_node_id")):
        p.append(f"last_node_id {workflow.get('last_node_id')!r} is not a node id")
    if not _num(workflow.get("last_link_id")):
        p.append(f"last_link_id {workflow.get('last_link_id')!r} is not a number")
    if not isinstance(workflow.get("nodes"), list):
        return p + ["nodes is not a list"]
    if not isinstance(workflow.get("links"), list):
        return p + ["links is not a list"]
    for i, node in enumerate(workflow["nodes"]):
        where = f"nodes[{i}]"
        if not isinstance(node, dict):
            p.append(f"{where} is not an object")
            continue
        where = f"node {node.get('id')!r} ({node.get('type')})"
        if not _node_id(node.get("id")):
            p.append(f"{where}: id is not a node id")
        if not isinstance(node.get("type"), str):
            p.append(f"{where}: type is not a string")
        for key in ("pos", "size"):
            if not _vector2(node.get(key)):
                p.append(f"{where}: {key} {node.get(key)!r} is not a 2-vector")
        flags = node.get("flags")
        if not isinstance(flags, dict):
            p.append(f"{where}: flags is not an object")
        else:
            for key in ("collapsed", "pinned", "allow_interaction", "horizontal", "skip_repeated_outputs"):
                if key in flags and not isinstance(flags[key], bool):
                    p.append(f"{where}: flags.{key} is not a boolean")
        for key in ("order", "mode"):
            if not _num(node.get(key)):
                p.append(f"{where}: {key} {node.get(key)!r} is not a number")
        for inp in node.get("inputs", []) if isinstance(node.get("inputs", []), list) else [None]:
            if not (isinstance(inp, dict) and isinstance(inp.get("name"), str) and _data_type(inp.get("type"))
                    and (inp.get("link") is None or _num(inp.get("link")))
                    and ("slot_index" not in inp or _slot(inp["slot_index"]))):
                p.append(f"{where}: bad input slot {inp!r}")
        for out in node.get("outputs", []) if isinstance(node.get("outputs", []), list) else [None]:
            if not (isinstance(out, dict) and isinstance(out.get("name"), str) and _data_type(out.get("type"))
                    and (out.get("links") is None or (isinstance(out["links"], list)
                                                      and all(_num(x) for x in out["links"])))
                    and ("slot_index" not in out or _slot(out["slot_index"]))):
                p.append(f"{where}: bad output slot {out!r}")
        p += _properties_problems(node.get("properties"), where)
        if "widgets_values" in node and not isinstance(node["widgets_values"], (list, dict)):
            p.append(f"{where}: widgets_values is neither a list nor an object")
        for key in ("color", "bgcolor", "title"):
            if key in node and not isinstance(node[key], str):
                p.append(f"{where}: {key} is not a string")
    for link in workflow["links"]:
        if not (isinstance(link, list) and len(link) == 6 and _num(link[0]) and _node_id(link[1])
                and _slot(link[2]) and _node_id(link[3]) and _slot(link[4]) and _data_type(link[5])):
            p.append(f"link {link!r} is not [number, node id, slot, node id, slot, type]")
    for g in workflow.get("groups", []) or []:
        if not (isinstance(g, dict) and isinstance(g.get("title"), str) and isinstance(g.get("bounding"), list)
                and len(g["bounding"]) == 4 and all(_num(x) for x in g["bounding"])):
            p.append(f"group {g!r} needs a title and a 4-number bounding box")
    config = workflow.get("config")
    if config is not None and not isinstance(config, dict):
        p.append("config is not an object")
    extra = workflow.get("extra")
    if extra is not None:
        if not isinstance(extra, dict):
            p.append("extra is not an object")
        else:
            ds = extra.get("ds")
            if ds is not None and not (isinstance(ds, dict) and _num(ds.get("scale")) and _vector2(ds.get("offset"))):
                p.append(f"extra.ds {ds!r} needs a scale and an offset")
            if "frontendVersion" in extra and not isinstance(extra["frontendVersion"], str):
                p.append("extra.frontendVersion is not a string")
            if "workflowRendererVersion" in extra and extra["workflowRendererVersion"] not in ("LG", "Vue"):
                p.append("extra.workflowRendererVersion is not LG or Vue")
    for m in workflow.get("models", []) or []:
        p += model_file_problems(m, "workflow models")
    return p


# ----------------------------------------------------------------------------------------------------------------
# Node registry: the host's (COMFYUI_PATH) plus this pack's, or the checked-in snapshot


def _pack_node_classes(pack) -> dict:
    """node id -> class for this pack, from NODE_CLASS_MAPPINGS and (V3) comfy_entrypoint."""
    classes = dict(getattr(pack, "NODE_CLASS_MAPPINGS", {}) or {})
    entry = getattr(pack, "comfy_entrypoint", None)
    if entry is not None:
        async def _collect():
            extension = await entry()
            return await extension.get_node_list()

        for cls in asyncio.run(_collect()):
            classes.setdefault(cls.GET_SCHEMA().node_id, cls)
    return classes


def init_host_nodes():
    """Import ComfyUI (COMFYUI_PATH first on sys.path), load its built-in extra nodes and register this pack."""
    from conftest import add_comfyui_to_path, load_pack

    add_comfyui_to_path()
    if "comfy.model_management" not in sys.modules:
        import torch
        from comfy.cli_args import args

        if not torch.cuda.is_available():  # ComfyUI picks its device at import; without CUDA say CPU
            args.cpu = True
    import nodes  # ComfyUI's

    if "EmptySD3LatentImage" not in nodes.NODE_CLASS_MAPPINGS:  # comfy_extras not loaded yet
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    pack = load_pack()
    for node_id, cls in _pack_node_classes(pack).items():
        nodes.NODE_CLASS_MAPPINGS.setdefault(node_id, cls)
    return nodes


def node_info(cls, node_id: str) -> dict:
    """The /object_info entry of a node class (V3 classes describe themselves; V1 from INPUT_TYPES)."""
    if hasattr(cls, "GET_NODE_INFO_V1"):
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    return {
        "input": inputs,
        "input_order": {k: list(v) for k, v in inputs.items()},
        "output": list(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        "name": node_id,
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }


def host_object_info(types=None) -> dict:
    """/object_info of the host registry (all node types, or only `types`)."""
    nodes = init_host_nodes()
    wanted = nodes.NODE_CLASS_MAPPINGS if types is None else [t for t in types if t in nodes.NODE_CLASS_MAPPINGS]
    return {t: node_info(nodes.NODE_CLASS_MAPPINGS[t], t) for t in wanted}


def snapshot_entry(node_type: str, info: dict) -> dict:
    """The part of an /object_info entry the tests use, JSON-normalised: tooltips dropped, model file lists
    emptied (they list whatever files the host has; the workflows name theirs in properties.models)."""
    def clean(section):
        out = {}
        for name, raw in (section or {}).items():
            opts = raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else None
            kind = raw[0]
            if opts is not None:
                opts = {k: v for k, v in opts.items() if k != "tooltip"}
            if (node_type, name) in MODEL_INPUT_FOLDERS or (node_type, name) in INPUT_FILE_WIDGETS:
                if isinstance(kind, list):
                    kind = []
                elif opts is not None and "options" in opts:
                    opts["options"] = []
            out[name] = [kind] if opts is None else [kind, opts]
        return out

    inputs = info.get("input", {})
    entry = {
        "input": {cat: clean(inputs.get(cat)) for cat in ("required", "optional") if inputs.get(cat)},
        "input_order": {cat: list(v) for cat, v in (info.get("input_order") or {}).items()
                        if cat in ("required", "optional")},
        "output": list(info.get("output", [])),
        "output_node": bool(info.get("output_node", False)),
    }
    return json.loads(json.dumps(entry))


def used_node_types() -> list[str]:
    """Every node type the bundled workflows use, plus this pack's guidance nodes."""
    types = set(GUIDANCE_NODES)
    for path in workflow_paths():
        types.update(n["type"] for n in load_workflow(path)["nodes"])
    return sorted(types - FRONTEND_ONLY)


def snapshot_object_info() -> dict:
    with open(SNAPSHOT_PATH, encoding="utf-8") as f:
        return json.load(f)["nodes"]


def write_snapshot(add_missing: bool = False) -> None:
    """Regenerate workflow_object_info.json from the host at COMFYUI_PATH (model file lists left empty). With
    `add_missing`, keep the snapshot and add only what a workflow for a newer host needs (MiniMax H3's on 0.33):
    the node types the snapshot lacks, and those whose entry rejects that workflow's values (CLIPLoader's
    "minimax"), noting in `added_from` which host each came from."""
    info = host_object_info(used_node_types())
    import comfyui_version  # ComfyUI's (on sys.path now)

    version = comfyui_version.__version__
    nodes, added, base = {t: snapshot_entry(t, i) for t, i in info.items()}, {}, version
    if add_missing and SNAPSHOT_PATH.exists():
        with open(SNAPSHOT_PATH, encoding="utf-8") as f:
            old = json.load(f)
        base, added = old["comfyui_version"], dict(old.get("added_from", {}))
        newer = {t: e for t, e in nodes.items() if t not in old["nodes"]}
        for path in workflow_paths():  # a newer host's workflow: types whose old entry rejects its values too
            wf = load_workflow(path)
            if not missing_node_types(wf, old["nodes"]):
                continue
            for node in wf["nodes"]:
                t = node["type"]
                if t in old["nodes"] and t in nodes and widget_problems(node, old["nodes"][t]) \
                        and not widget_problems(node, nodes[t]):
                    newer[t] = nodes[t]
        nodes = dict(old["nodes"], **newer)
        added.update({t: version for t in newer})
    data = {"comment": "Node schemas (/object_info) of the node types the bundled workflows use, from ComfyUI "
                       f"{base} and this pack (types in added_from: from that newer host). Regenerate: "
                       "COMFYUI_PATH=... python tests/workflow_utils.py --write-snapshot [--add-missing]",
            "comfyui_version": base,
            "nodes": {t: e for t, e in sorted(nodes.items())}}
    if added:
        data["added_from"] = dict(sorted(added.items()))
    with open(SNAPSHOT_PATH, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")


def newer_host_types() -> dict:
    """Node types of the snapshot that come from a newer host than its base (type -> that host's version)."""
    with open(SNAPSHOT_PATH, encoding="utf-8") as f:
        return json.load(f).get("added_from", {})


def missing_node_types(workflow: dict, available) -> list[str]:
    """Node types of `workflow` that a host with node types `available` lacks (a workflow for a newer host)."""
    return sorted({n["type"] for n in workflow["nodes"]} - set(available) - FRONTEND_ONLY)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--write-snapshot"] or sys.argv[2:] not in ([], ["--add-missing"]):
        sys.exit("usage: COMFYUI_PATH=/path/to/ComfyUI python tests/workflow_utils.py --write-snapshot "
                 "[--add-missing]")
    sys.path.insert(0, str(Path(__file__).parent))
    write_snapshot(add_missing=sys.argv[2:] == ["--add-missing"])
    print(f"wrote {SNAPSHOT_PATH}")


def serve_templates(comfyui_path: Path, tmp_path: Path, monkeypatch, pack_folder: str, suffix: str):
    """The host's /workflow_templates listing for a custom_nodes folder that links this repository as
    `pack_folder`, and each listed template's `suffix` file as the host serves it: {name: (status, type, body)}."""
    import folder_paths
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    # ComfyUI's nodes.py puts comfy/ first on sys.path, so `utils` there is comfy/utils.py; the server imports
    # the top-level utils package before that. Import it from the checkout root.
    monkeypatch.delitem(sys.modules, "utils", raising=False)
    monkeypatch.syspath_prepend(str(comfyui_path))
    from app.custom_node_manager import CustomNodeManager

    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    (custom_nodes / pack_folder).symlink_to(REPO_ROOT, target_is_directory=True)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "custom_nodes", ([str(custom_nodes)], set()))

    async def run():
        app = web.Application()
        routes = web.RouteTableDef()
        CustomNodeManager().add_routes(routes, app, [(pack_folder, str(custom_nodes / pack_folder))])
        app.add_routes(routes)
        async with TestClient(TestServer(app)) as client:
            listing = await (await client.get("/workflow_templates")).json()
            served = {}
            for name in listing.get(pack_folder, []):
                resp = await client.get(f"/api/workflow_templates/{pack_folder}/{name}{suffix}")
                served[name] = (resp.status, resp.content_type, await resp.read())
            return listing, served

    return asyncio.run(run())

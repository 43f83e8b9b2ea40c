"""The bundled workflows against a real ComfyUI (COMFYUI_PATH): prompt validation, template serving, official files."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest

import workflow_utils as wu

pytestmark = pytest.mark.comfyui

PATHS = wu.workflow_paths()
IDS = [p.name for p in PATHS]
PACK_FOLDER = "ComfyUI-GAG"
# Same file name as in the installed official templates but a newer official URL: name -> why.
NEWER_OFFICIAL_URLS = {
    "qwen_3_4b.safetensors": "the FLUX.2 Klein templates (newer than ComfyUI 0.8.0's) ship it from Comfy-Org/flux2-klein",
}


@pytest.fixture(scope="module")
def host(comfyui_path):
    """ComfyUI's `nodes` module with its extra nodes and this pack registered."""
    return wu.init_host_nodes()


@pytest.fixture
def placeholder_models(host, tmp_path, monkeypatch):
    """Point ComfyUI's model folders at a temporary tree; returns a function creating empty model files."""
    import folder_paths

    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    folders = {}

    def create(directory: str, name: str) -> None:
        if directory not in folders:
            folders[directory] = tmp_path / "models" / directory
            folders[directory].mkdir(parents=True)
            _, extensions = folder_paths.folder_names_and_paths[directory]
            monkeypatch.setitem(folder_paths.folder_names_and_paths, directory, ([str(folders[directory])],
                                                                                  extensions))
        (folders[directory] / name).write_bytes(b"")
        folder_paths.filename_list_cache.clear()

    return create


@pytest.fixture
def placeholder_inputs(host, tmp_path, monkeypatch):
    """Point ComfyUI's input folder at a temporary one; returns a function writing a small PNG there."""
    import folder_paths
    from PIL import Image

    folder = tmp_path / "input"
    folder.mkdir()
    monkeypatch.setattr(folder_paths, "input_directory", str(folder))

    def create(name: str) -> None:
        Image.new("RGB", (64, 64), (128, 64, 32)).save(folder / name)

    return create


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_comfyui_validates_the_prompt(path, host, placeholder_models, placeholder_inputs):
    import execution

    wf = wu.load_workflow(path)
    missing = wu.missing_node_types(wf, host.NODE_CLASS_MAPPINGS)
    if missing:
        pytest.skip(f"{path.name} needs a newer ComfyUI (this one lacks {missing})")
    for node in wf["nodes"]:
        for m in node.get("properties", {}).get("models", []):
            placeholder_models(m["directory"], m["name"])
        if node["type"] == "LoadImage":  # the user's own image: a placeholder of the saved name
            placeholder_inputs(node["widgets_values"][0])
    object_info = wu.host_object_info([n["type"] for n in wf["nodes"]])
    # With the files present every combo, model files included, must hold its value strictly.
    for node in wf["nodes"]:
        if node["type"] in wu.FRONTEND_ONLY:
            continue
        layout = wu.widget_layout(object_info[node["type"]], node["widgets_values"])
        for (spec, kind), value in zip(layout, node["widgets_values"]):
            if kind == "value":
                assert wu.value_problem(spec, value) is None, f"{node['type']}: {wu.value_problem(spec, value)}"
    prompt = wu.to_api_prompt(wf, object_info)
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("gag-test", prompt, None))
    assert valid is True, (error, node_errors)
    assert node_errors == {}
    saves = {str(n["id"]) for n in wf["nodes"] if n["type"] in wu.SAVE_NODES}
    assert set(outputs) == saves


def test_comfyui_rejects_a_prompt_with_a_missing_model(host, placeholder_models):
    """The validation above is not vacuous: without the placeholder file the same prompt fails."""
    import execution

    wf = wu.load_workflow(PATHS[0])
    first = True
    for node in wf["nodes"]:
        for m in node.get("properties", {}).get("models", []):
            if first:  # leave the first model file out
                first = False
                continue
            placeholder_models(m["directory"], m["name"])
    prompt = wu.to_api_prompt(wf, wu.host_object_info([n["type"] for n in wf["nodes"]]))
    valid, _, _, node_errors = asyncio.run(execution.validate_prompt("gag-test", prompt, None))
    assert valid is False and node_errors


def test_snapshot_reads_the_workflows_as_the_host_does(host):
    """The checked-in snapshot (used without ComfyUI) agrees with the live host wherever the workflows use it: the
    pack's own nodes are identical; for core nodes every saved widget value maps to the same input name and is
    accepted by the live schema (a nested dynamic-combo input counts by its own name), every link joins slots the live host has with compatible types, and every
    required socket is linked. Host changes the workflows do not touch (new combo choices, an added output, an
    `advanced` flag) do not matter."""
    snapshot = wu.snapshot_object_info()
    live = wu.host_object_info(list(snapshot))
    newer = wu.newer_host_types()  # types added from a newer host (MiniMax H3's on 0.33): absent on older hosts
    assert sorted(set(snapshot) - set(live) - set(newer)) == [], "node types of the snapshot the host does not have"
    for node_type in wu.GUIDANCE_NODES:
        assert wu.snapshot_entry(node_type, live[node_type]) == snapshot[node_type], (
            f"{node_type} changed; run COMFYUI_PATH=... python tests/workflow_utils.py --write-snapshot")
    problems = []
    for path in PATHS:
        wf = wu.load_workflow(path)
        if wu.missing_node_types(wf, live):
            continue  # a workflow for a newer host
        problems += [f"{path.name}: {p}" for p in wu.link_problems(wf, live)]
        for node in wf["nodes"]:
            if node["type"] in wu.FRONTEND_ONLY:
                continue
            where = f"{path.name} node {node['id']} {node['type']}"
            try:
                ours, theirs = wu.widget_values(node, snapshot[node["type"]]), wu.widget_values(node, live[node["type"]])
            except ValueError as e:
                problems.append(f"{where}: {e}")
                continue
            if _leaf_names(ours) != _leaf_names(theirs):
                problems.append(f"{where}: widgets read as {ours} by the snapshot, {theirs} by the host")
            problems += [f"{where}: {p}" for p in wu.widget_problems(node, live[node["type"]])]
            problems += [f"{where}: {p}" for p in wu.slot_problems(node, live[node["type"]])]
    assert problems == [], "the workflows read differently on this host; if the host is right, run " \
        "COMFYUI_PATH=... python tests/workflow_utils.py --write-snapshot\n" + "\n".join(problems)


def _leaf_names(values: dict) -> dict:
    """Widget values keyed by input name, a dynamic combo's nested "<parent>.<name>" read as <name> (0.8.0's
    SaveVideo has `format` and `codec` side by side; 0.3x nests `codec` under `format`: same values, same order)."""
    return {name.rsplit(".", 1)[-1]: value for name, value in values.items()}


def _official_templates() -> list[Path]:
    files = []
    for name in ("comfyui_workflow_templates", "comfyui_workflow_templates_media_image",
                 "comfyui_workflow_templates_media_video", "comfyui_workflow_templates_core",
                 "comfyui_workflow_templates_json"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                files += Path(loc).glob("templates/*.json")
    return files


def test_model_files_match_comfyuis_official_templates():
    files = _official_templates()
    if not files:
        pytest.skip("no comfyui-workflow-templates package with JSON templates installed")
    official: dict[str, set] = {}
    for f in files:
        data = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(data, dict):  # index.json and other listings are JSON arrays, not workflows
            continue
        graphs = [data] + list(data.get("definitions", {}).get("subgraphs", []))
        for graph in graphs:
            for node in graph.get("nodes", []):
                for m in (node.get("properties") or {}).get("models") or []:
                    url = urlparse(m.get("url", ""))
                    official.setdefault(m.get("name"), set()).add((url.netloc + url.path, m.get("directory")))
    matched = 0
    for path in PATHS:
        for node in wu.load_workflow(path)["nodes"]:
            for m in node.get("properties", {}).get("models", []):
                if m["name"] not in official:
                    continue
                url = urlparse(m["url"])
                ours = (url.netloc + url.path, m["directory"])
                if ours not in official[m["name"]]:
                    assert m["name"] in NEWER_OFFICIAL_URLS, f"{path.name}: {m} vs official {official[m['name']]}"
                    assert m["directory"] in {d for _, d in official[m["name"]]}
                matched += 1
    assert matched >= 8, "the SDXL, FLUX.1 and Qwen-Image files should all be official ones"


# Workflows that mirror one official template node for node (plus the guided branch): file -> template name.
MIRRORS = {"gag_wan22_t2v.json": "video_wan2_2_5B_ti2v", "gag_minimax_h3_i2v.json": "video_minimax_h3_i2v"}
# Widget values a mirror may change: the seed (one seed node feeds both samplers), the output file prefix.
OWN_VALUES = {"KSampler": ("seed",), "RandomNoise": ("noise_seed",), "SaveVideo": ("filename_prefix",),
              "SaveImage": ("filename_prefix",)}
# Template nodes a mirror leaves out, and why: the MiniMax template's turbo switch (off by default: its LoRA and
# step count never reach the sampler), the duration -> frame count expression (the mirror sets the 124 frames it
# gives for 5 s), and two unconnected helper nodes.
LEFT_OUT = {"gag_minimax_h3_i2v.json": frozenset({
    "LoraLoaderModelOnly", "ComfySwitchNode", "PrimitiveInt", "PrimitiveBoolean", "PrimitiveFloat",
    "ComfyMathExpression", "ImageScaleToTotalPixels", "GetImageSize"})}


def _effective_nodes(template: dict) -> list[dict]:
    """A template's nodes with each subgraph instance replaced by the subgraph's nodes, the instance's promoted
    widget values (`widgets_values_named`, where that input is not linked) written into the widgets they feed,
    and every widget the template fills by a link marked as such (`linked_widgets`)."""
    graphs = {g["id"]: g for g in (template.get("definitions") or {}).get("subgraphs", [])}
    out = []
    for node in template["nodes"]:
        graph = graphs.get(node["type"])
        if graph is None:
            out.append(dict(node, linked_widgets={i["widget"]["name"] for i in node.get("inputs", [])
                                                  if i.get("widget") and i.get("link") is not None}))
            continue
        named = node.get("widgets_values_named", {})
        inner = {n["id"]: json.loads(json.dumps(n)) for n in graph["nodes"]}
        links = {}
        for link in graph["links"]:
            link = link if isinstance(link, dict) else dict(zip(
                ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
            links[link["id"]] = link
        promoted = {}
        for sub_input in graph["inputs"]:
            outer = next((i for i in node.get("inputs", []) if i["name"] == sub_input["name"]), None)
            for link_id in sub_input.get("linkIds", []):
                promoted[link_id] = (sub_input["name"], outer is not None and outer.get("link") is not None)
        for n in inner.values():
            n["linked_widgets"] = set()
            widgets = [i["widget"]["name"] for i in n.get("inputs", []) if i.get("widget")]
            for i in n.get("inputs", []):
                if not i.get("widget") or i.get("link") is None:
                    continue
                name, outer_linked = promoted.get(i["link"], (None, True))
                if name is None or outer_linked or name not in named:
                    n["linked_widgets"].add(i["widget"]["name"])  # filled by a link inside or outside the subgraph
                else:
                    n["widgets_values"][widgets.index(i["widget"]["name"])] = named[name]
        out += inner.values()
    return out


def _with_defaults(values: dict, info: dict) -> dict:
    """Widget values as the front end loads them: an optional widget left out (0.33's CreateVideo bit_depth in a
    workflow that also opens on 0.8.0) takes its default."""
    for spec in wu.input_specs(info):
        if spec.is_widget and spec.category == "optional" and spec.name not in values:
            values[spec.name] = spec.options.get("default")
    return values


@pytest.mark.parametrize("name", sorted(MIRRORS))
def test_workflow_mirrors_its_official_template(name, host):
    """Same model files (name, URL, folder), same node types, and each of the template's active nodes has its
    values in a node of that type here (prompts, sampler, size, length, shift, fps, video format); a template
    packed in a subgraph is read with the values its subgraph node sets."""
    template = next((f for f in _official_templates() if f.stem == MIRRORS[name]), None)
    if template is None:
        pytest.skip(f"ComfyUI's template {MIRRORS[name]}.json is not installed")
    official = json.loads(template.read_text(encoding="utf-8"))
    ours = wu.load_workflow(wu.WORKFLOWS_DIR / name)
    missing = wu.missing_node_types(ours, host.NODE_CLASS_MAPPINGS)
    if missing:
        pytest.skip(f"{name} needs a newer ComfyUI (this one lacks {missing})")
    left_out = LEFT_OUT.get(name, frozenset())
    nodes = [n for n in _effective_nodes(official) if n["type"] not in left_out]
    object_info = wu.host_object_info([n["type"] for n in nodes + ours["nodes"]])

    def models(node_list):
        return {(m["name"], m["url"], m["directory"]) for n in node_list for m in n.get("properties", {}).get(
            "models", [])}

    assert models(ours["nodes"]) == models(nodes)
    active = [n for n in nodes if n.get("mode", 0) == 0 and n["type"] not in wu.FRONTEND_ONLY]
    assert {n["type"] for n in active} <= {n["type"] for n in ours["nodes"]}
    for node in active:
        mine = [n for n in ours["nodes"] if n["type"] == node["type"]]
        if node["type"] == "CLIPTextEncode":  # positive and negative: each template prompt is one of ours
            assert any(n["widgets_values"] == node["widgets_values"] for n in mine), node.get("title")
            continue
        info = object_info[node["type"]]
        skip = set(OWN_VALUES.get(node["type"], ())) | node.get("linked_widgets", set())
        theirs = {k: v for k, v in wu.widget_values(node, info).items() if k not in skip}
        matches = [{k: _with_defaults(wu.widget_values(n, info), info).get(k) for k in theirs} == theirs
                   for n in mine]
        # one template node of a type: every node of it here (both samplers); several (two VAE loaders): one each
        several = sum(a["type"] == node["type"] for a in active) > 1
        assert (any(matches) if several else matches and all(matches)), (node["type"], theirs)


def test_front_end_bundle_has_the_ported_schema():
    """The installed front end still validates workflows with the rules workflow_utils.zod_problems ports."""
    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec is None:
        pytest.skip("comfyui-frontend-package is not installed")
    assets = Path(spec.submodule_search_locations[0]) / "static" / "assets"
    bundle = next((f for f in assets.glob("*.js") if "validateComfyWorkflow" in f.read_text(errors="ignore")), None)
    assert bundle is not None, "no front-end bundle defines validateComfyWorkflow"
    text = bundle.read_text(errors="ignore")
    if "zComfyWorkflow=" not in text:
        pytest.skip(f"{bundle.name} is minified; the port follows the readable 1.35 bundle")
    # validateComfyWorkflow: a numeric version is required; version 1 has its own schema, anything else zComfyWorkflow.
    assert "const zWorkflowVersion=z.object({version:z.number()})" in text
    assert re.search(r"version===1\?\w+=await zComfyWorkflow1\.safeParseAsync\(\w+\):\w+=await "
                     r"zComfyWorkflow\.safeParseAsync", text)
    for fragment in (
        "last_node_id:zNodeId,last_link_id:z.number(),nodes:z.array(zComfyNode),links:z.array(zComfyLink)",
        "version:z.number(),models:z.array(zModelFile).optional()",
        "zComfyLink=z.tuple([z.number(),zNodeId,zSlotIndex,zNodeId,zSlotIndex,zDataType])",
        "zComfyNode=z.object({id:zNodeId,type:z.string(),pos:zVector2,size:zVector2,flags:zFlags,order:z.number(),"
        "mode:z.number(),inputs:z.array(zNodeInput).optional(),outputs:z.array(zNodeOutput).optional(),"
        "properties:zProperties,widgets_values:zWidgetValues.optional()",
        "zModelFile=z.object({name:z.string(),url:z.string().url(),hash:z.string().optional(),"
        "hash_type:z.string().optional(),directory:z.string()})",
    ):
        assert fragment in text, fragment


_ZOD_HARNESS = """
const {{ z }} = require('zod');
const fs = require('fs');
const p = (f, n) => f;
const fromZodError = (e) => JSON.stringify(e.issues.slice(0, 3));
const src = 'var ' + fs.readFileSync({schema!r}, 'utf8') + '; module.exports = validateComfyWorkflow;';
const m = {{ exports: {{}} }};
new Function('z', 'p', 'fromZodError', 'module', src)(z, p, fromZodError, m);
(async () => {{
  const out = {{}};
  for (const f of {files!r}) {{
    let warned = null;
    const r = await m.exports(JSON.parse(fs.readFileSync(f, 'utf8')), (msg) => {{ warned = msg; }});
    out[f] = r ? null : warned;
  }}
  console.log(JSON.stringify(out));
}})();
"""


def test_real_front_end_schema_accepts_the_workflows(tmp_path):
    """Run the front end's own validateComfyWorkflow (cut from the installed bundle) under node with zod 3."""
    node = shutil.which("node")
    spec = importlib.util.find_spec("comfyui_frontend_package")
    if node is None or spec is None:
        pytest.skip("needs node and comfyui-frontend-package")
    env = dict(os.environ)
    npm = shutil.which("npm")
    if npm:
        root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True).stdout.strip()
        env["NODE_PATH"] = os.pathsep.join(x for x in (env.get("NODE_PATH"), root) if x)
    if subprocess.run([node, "-e", "require('zod')"], env=env, capture_output=True).returncode != 0:
        pytest.skip("node cannot require zod (npm install -g zod@3)")
    assets = Path(spec.submodule_search_locations[0]) / "static" / "assets"
    start, end = "zRendererType=z.enum", 'p(validateComfyWorkflow,"validateComfyWorkflow")'
    text = next((t for t in (f.read_text(errors="ignore") for f in assets.glob("*.js")) if start in t and end in t),
                None)
    if text is None:
        pytest.skip("the installed front-end bundle is not the readable kind this harness cuts from")
    schema = tmp_path / "schema.js"
    schema.write_text(text[text.index(start):text.index(end)], encoding="utf-8")
    broken = wu.load_workflow(PATHS[0])
    broken.pop("version")
    (tmp_path / "no_version.json").write_text(json.dumps(broken), encoding="utf-8")
    files = [str(p) for p in PATHS] + [str(tmp_path / "no_version.json")]
    harness = tmp_path / "validate.js"
    harness.write_text(_ZOD_HARNESS.format(schema=str(schema), files=files), encoding="utf-8")
    run = subprocess.run([node, str(harness)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert {f: result[f] for f in files[:-1]} == {f: None for f in files[:-1]}
    assert "valid version" in (result[files[-1]] or ""), "the harness must reject a workflow without a version"


def test_template_browser_lists_and_serves_the_workflows(host, comfyui_path, tmp_path, monkeypatch):
    """ComfyUI's /workflow_templates lists workflows/ under the pack folder and serves each file."""
    listing, served = wu.serve_templates(comfyui_path, tmp_path, monkeypatch, PACK_FOLDER, ".json")
    assert sorted(listing.get(PACK_FOLDER, [])) == sorted(p.stem for p in PATHS)
    for path in PATHS:
        status, _, body = served[path.stem]
        assert status == 200
        assert json.loads(body) == wu.load_workflow(path)

"""tools/coverage.py without a host: its file-name table, mode detection, lineage parsing and the verdict it asks of
the family table (nodes/families.py `classify`)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cov():
    spec = importlib.util.spec_from_file_location("gag_coverage_tool", REPO / "tools" / "coverage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, cls", [
    ("minimax_h3_fl2va_pruned_int8_convrot.safetensors", "MiniMaxH3"),
    ("ltx-2.3-22b-dev-fp8.safetensors", "LTXAV"),
    ("z_image_turbo_bf16.safetensors", "Lumina2"),
    ("wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "WAN21"),
    ("wan2.2_ti2v_5B_fp16.safetensors", "WAN22"),
    ("wan_animate_2_int8_convrot.safetensors", "WAN_Animate2"),
    ("wan2.1_14B_SCAIL_2_fp16.safetensors", "WAN21_SCAIL2"),
    ("wan2.1_vace_14B_fp16.safetensors", "WAN21_Vace"),
    ("mage_flow_edit_int8_convrot.safetensors", "MageFlow"),
    ("qwen_image_edit_2509_fp8_e4m3fn.safetensors", "QwenImage"),
    ("flux-2-klein-4b-fp8.safetensors", "Flux2"),
    ("flux1-dev-kontext_fp8_scaled.safetensors", "Flux"),
    ("hunyuanvideo1.5_1080p_sr_distilled_fp16.safetensors", "HunyuanVideo15_SR_Distilled"),
    ("hidream_o1_image_bf16.safetensors", "HiDreamO1"),
    ("seedvr2_7b_int8_convrot.safetensors", "SeedVR2"),
])
def test_model_files_map_to_their_class(cov, name, cls):
    assert cov.file_class(name) == cls


def _workflow(*types):
    return {"nodes": [{"type": t} for t in types]}


def test_minimax_mode_is_read_from_the_template_nodes(cov):
    assert cov.minimax_mode(_workflow("MiniMaxH3ReferenceToVideo", "LoadImage")) == "ref2va"
    assert cov.minimax_mode(_workflow("MiniMaxH3ImageToVideo", "LoadImage")) == "fl2va"
    assert cov.minimax_mode(_workflow("MiniMaxH3ImageToVideo")) == "t2va"


def test_lineage_and_verdicts(cov, tmp_path):
    (tmp_path / "comfy").mkdir()
    (tmp_path / "comfy" / "model_base.py").write_text(
        "class BaseModel(object): pass\nclass WAN21(BaseModel): pass\nclass WAN21_Vace(WAN21): pass\n"
        "class WAN21_New(WAN21): pass\nclass MiniMaxH3(BaseModel): pass\nclass Trellis2(BaseModel): pass\n")
    lineage = cov.host_lineage(tmp_path)
    assert lineage["WAN21_Vace"] == ("WAN21_Vace", "WAN21", "BaseModel")
    families = cov.load_families(REPO)
    assert cov.verdict(families, lineage, "WAN21_Vace", "", {}) == (True, "")
    guided, reason = cov.verdict(families, lineage, "WAN21_New", "", {})
    assert not guided and "WAN21_New is a subclass of WAN21" in reason
    assert cov.verdict(families, lineage, "Trellis2", "", {}) == (False, "Trellis2: no family row")
    assert cov.verdict(families, lineage, "MiniMaxH3", "ref2va", {})[0]
    assert not cov.verdict(families, lineage, "MiniMaxH3", "ref2va", {"minimax_h3": ("t2va",)})[0]
    assert not cov.verdict(families, lineage, "NotHere", "", {})[0]


def test_measure_weights_templates_by_use(cov, tmp_path):
    (tmp_path / "comfy").mkdir()
    (tmp_path / "comfy" / "model_base.py").write_text(
        "class BaseModel(object): pass\nclass Flux(BaseModel): pass\nclass ErnieImage(BaseModel): pass\n"
        "class SeedVR2(BaseModel): pass\n")
    index = tmp_path / "templates"
    index.mkdir()
    templates = {"flux_a": ("flux1-dev.safetensors", 300), "ernie_b": ("ernie-image.safetensors", 100),
                 "upscale": ("seedvr2_3b_int8_convrot.safetensors", 50), "api_x": ("flux1-dev.safetensors", 999)}
    entries = []
    for name, (model, usage) in templates.items():
        (index / f"{name}.json").write_text(json.dumps(
            {"nodes": [{"type": "UNETLoader", "widgets_values": [model, "default"]}]}))
        entries.append({"name": name, "usage": usage})
    (index / "index.json").write_text(json.dumps([{"templates": entries}]))
    result = cov.measure(index / "index.json", tmp_path, REPO)
    assert result["total"] == 400 and result["guided"] == 300 and result["share"] == pytest.approx(0.75)
    assert [s[0] for s in result["skipped"]] == ["upscale"]  # no text conditioning: left out

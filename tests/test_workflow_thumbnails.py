"""A thumbnail beside each bundled workflow, as the Templates browser asks for it, and served by the host's route."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import workflow_thumbnails as thumbs
import workflow_utils as wu

PATHS = wu.workflow_paths()
PACK_FOLDER = "ComfyUI-GAG"


def test_every_workflow_has_a_jpeg_thumbnail_drawn_from_it():
    assert sorted(p.name for p in PATHS) == sorted(thumbs.TITLES)
    for path in PATHS:
        jpg = path.with_suffix(".jpg")  # front end 1.4x: /api/workflow_templates/<pack>/<name>.jpg
        img = Image.open(jpg)
        assert img.format == "JPEG" and img.size == thumbs.SIZE, jpg.name
        assert jpg.stat().st_size < 64 * 1024
        # the committed file is what the generator draws from the workflow now (JPEG noise aside)
        drawn = np.asarray(thumbs.render(path.name), dtype=np.float32)
        assert np.abs(np.asarray(img.convert("RGB"), dtype=np.float32) - drawn).mean() < 3.0, jpg.name
        d = thumbs.describe(path.name)
        assert d["scale"] > 0 and d["model"].endswith(".safetensors")


@pytest.mark.comfyui
def test_the_hosts_template_route_serves_each_thumbnail(comfyui_path, tmp_path, monkeypatch):
    """0.33 serves the pack's workflows/ folder statically: the .jpg beside each .json loads at the URL the front
    end builds (0.38's handler serves .json only: there the cards fall back to no image)."""
    wu.init_host_nodes()
    listing, served = wu.serve_templates(comfyui_path, tmp_path, monkeypatch, PACK_FOLDER, ".jpg")
    assert sorted(listing.get(PACK_FOLDER, [])) == sorted(p.stem for p in PATHS)  # the .jpg files are not listed
    for path in PATHS:
        status, ctype, body = served[path.stem]
        assert status == 200 and ctype == "image/jpeg", (path.stem, status, ctype)
        assert body == path.with_suffix(".jpg").read_bytes()
        Image.open(io.BytesIO(body)).verify()

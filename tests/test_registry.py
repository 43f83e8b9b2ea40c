"""Comfy Registry readiness: pyproject.toml's required fields, the .comfyignore'd archive, the publish workflow."""
from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# comfy-cli's accepted prefixes for the OS and accelerator classifiers (comfy_cli/registry/config_parser.py)
OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
ACCELERATORS = ("GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                "GPU :: Apple Metal")
ARCHIVE_LIMIT = 1 << 20  # bytes: the published archive stays under 1 MiB
RUNTIME = ("__init__.py", "pyproject.toml", "LICENSE", "README.md", "requirements.txt", "gag_core/", "nodes/",
           "web/", "workflows/")


def min_comfyui() -> str:
    """MIN_COMFYUI from the pack's __init__.py, read as text (importing it outside ComfyUI registers nothing)."""
    return re.search(r'^MIN_COMFYUI = "([^"]+)"', (ROOT / "__init__.py").read_text(), re.M).group(1)


def test_project_table_has_the_registry_fields():
    p = PYPROJECT["project"]
    name = p["name"]
    # node id: < 100 characters, alphanumerics . - _, no two special characters in a row, starts with a letter
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name), name
    assert not re.search(r"[._-]{2}", name), name
    assert re.fullmatch(r"\d+\.\d+\.\d+", p["version"]), p["version"]
    assert (ROOT / p["license"]["file"]).is_file()
    assert 50 <= len(p["description"]) <= 500 and "PLADIS" in p["description"]
    for family in ("SDXL", "FLUX.1", "FLUX.2", "Qwen-Image", "Wan", "Z-Image"):  # not the first four only any more
        assert family in p["description"], family
    deps = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]
    assert p["dependencies"] == deps  # both empty: ComfyUI's own packages are enough
    urls = p["urls"]
    for key in ("Repository", "Documentation", "Bug Tracker"):
        assert urls[key].startswith("https://github.com/"), key
    assert urls["Bug Tracker"].endswith("/issues")


def test_classifiers_name_an_os_and_an_accelerator_comfy_cli_accepts():
    classifiers = PYPROJECT["project"]["classifiers"]
    oses = [c.removeprefix("Operating System :: ") for c in classifiers if c.startswith("Operating System :: ")]
    envs = [c.removeprefix("Environment :: ") for c in classifiers if c.startswith("Environment :: ")]
    assert oses and all(o.startswith(OS_PREFIXES) for o in oses), oses
    assert envs and all(e in ACCELERATORS for e in envs), envs


def test_tool_comfy_table_and_the_minimum_comfyui_version():
    comfy = PYPROJECT["tool"]["comfy"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"])
    assert comfy["DisplayName"].strip()
    icon = comfy["Icon"]  # a public URL of a square image in this repository (its main branch on GitHub)
    repo = PYPROJECT["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repo}/main/"
    assert icon.startswith(prefix), icon
    from PIL import Image

    with Image.open(ROOT / icon.removeprefix(prefix)) as img:
        assert img.width == img.height >= 100
    assert comfy["requires-comfyui"] == f">={min_comfyui()}"
    assert f"ComfyUI {min_comfyui()} or newer" in (ROOT / "README.md").read_text(encoding="utf-8")


def archive_files() -> list[str]:
    """What `comfy node pack` would zip: git's tracked files minus the .comfyignore patterns (git matches them)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    run = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True)  # noqa: E731
    tracked = run("ls-files")
    if tracked.returncode != 0 or not tracked.stdout.strip():
        pytest.skip("not a git checkout")
    ignored = set(run("ls-files", "--cached", "--ignored", "--exclude-from=.comfyignore").stdout.splitlines())
    return [f for f in tracked.stdout.splitlines() if f not in ignored and (ROOT / f).is_file()]


def test_comfyignore_keeps_the_archive_to_what_comfyui_loads():
    files = archive_files()
    assert files and all(f.startswith(RUNTIME) for f in files), sorted(f for f in files if not f.startswith(RUNTIME))
    for needed in ("__init__.py", "pyproject.toml", "LICENSE", "nodes/gag_nodes.py", "gag_core/attention.py",
                   "web/gag.js", "workflows/gag_sdxl.json"):
        assert needed in files, needed
    assert not any(f.startswith(("tests/", "demo/", "benchmarks/", "docs/")) for f in files)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(ROOT / f, f)
    size = buf.getbuffer().nbytes
    print(f"archive: {len(files)} files, {size} bytes")
    assert size < ARCHIVE_LIMIT, size


def test_publish_workflow_uses_the_registry_action_with_a_secret():
    text = (ROOT / ".github" / "workflows" / "publish.yml").read_text(encoding="utf-8")
    assert "Comfy-Org/publish-node-action@" in text
    assert "${{ secrets.REGISTRY_ACCESS_TOKEN }}" in text
    assert re.search(r"paths:\s*\n\s*-\s*\"?pyproject\.toml", text)  # publishes when the version changes


def test_a_comfyui_without_comfy_api_gets_one_error_naming_the_minimum_version(tmp_path):
    fake = tmp_path / "host"
    (fake / "comfy").mkdir(parents=True)
    (fake / "comfy" / "__init__.py").write_text("")  # a ComfyUI tree, but one without comfy_api
    code = (
        "import importlib.util, logging, sys\n"
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
        f"spec = importlib.util.spec_from_file_location('pack', {str(ROOT / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(ROOT)!r}])\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['pack'] = mod; spec.loader.exec_module(mod)\n"
        "print('nodes', len(mod.NODE_CLASS_MAPPINGS))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=fake, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(fake), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "nodes 0" in out.stdout
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("ERROR")]
    assert len(errors) == 1 and f"ComfyUI {min_comfyui()} or newer" in errors[0], out.stderr
    # a ComfyUI with the V3 API but older than the minimum: the same one error, naming its version
    (fake / "comfy_api" / "latest").mkdir(parents=True)
    (fake / "comfy_api" / "__init__.py").write_text("")
    (fake / "comfy_api" / "latest" / "__init__.py").write_text("")
    (fake / "comfyui_version.py").write_text('__version__ = "0.7.1"\n')
    old = subprocess.run([sys.executable, "-c", code], cwd=fake, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(fake), "PATH": "/usr/bin:/bin"})
    errors = [ln for ln in old.stderr.splitlines() if ln.startswith("ERROR")]
    assert old.returncode == 0 and "nodes 0" in old.stdout, old.stderr
    assert len(errors) == 1 and f"ComfyUI {min_comfyui()} or newer, this is 0.7.1" in errors[0], old.stderr
    # and outside any ComfyUI (no `comfy` package either) the import stays silent
    quiet = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           env={"PATH": "/usr/bin:/bin"})
    assert quiet.returncode == 0 and "nodes 0" in quiet.stdout and "ERROR" not in quiet.stderr, quiet.stderr

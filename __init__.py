"""ComfyUI-GAG: Geometry-Aware Attention Guidance (arXiv 2603.02531) and PLADIS (arXiv 2503.07677) for ComfyUI."""
import importlib.util
import logging

WEB_DIRECTORY = "./web"
MIN_COMFYUI = "0.8.0"  # the oldest ComfyUI release the pack was tested on; it needs comfy_api.latest (V3 nodes)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}


def _has_module(name: str) -> bool:
    """Whether `name` can be imported (False when it, or its parent package, is missing)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _too_old() -> str | None:
    """The host's version when it is older than MIN_COMFYUI (read from ComfyUI's comfyui_version.py), else None."""
    try:
        from comfyui_version import __version__ as version
        parts = [int(x) for x in str(version).split(".")[:3]]
    except Exception:  # no version file, or an unparsable one: trust the API check
        return None
    return str(version) if parts < [int(x) for x in MIN_COMFYUI.split(".")] else None


# Outside ComfyUI (plain `pytest`, packaging tools) there is no comfy_api: the pure modules stay importable.
_OLD = _too_old() if _has_module("comfy") else None
if _OLD is not None:  # a ComfyUI with a V3 API the pack was never run on: say so instead of failing later
    logging.getLogger(__name__).error(
        "[GAG] ComfyUI-GAG needs ComfyUI %s or newer, this is %s: no GAG node was registered. Update ComfyUI "
        "(git pull, or ComfyUI-Manager: Update ComfyUI) and restart.", MIN_COMFYUI, _OLD)
elif _has_module("comfy_api") and _has_module("comfy_api.latest"):
    from .nodes.gag_nodes import NODES  # the one registration path: V1 mappings of the V3 nodes (0.8 and 0.3x)

    for _node in NODES:
        _schema = _node.GET_SCHEMA()
        NODE_CLASS_MAPPINGS[_schema.node_id] = _node
        NODE_DISPLAY_NAME_MAPPINGS[_schema.node_id] = _schema.display_name

    from .nodes import web_routes

    web_routes.register()  # /gag/presets and /gag/telemetry for web/, when a PromptServer is running
elif _has_module("comfy"):  # inside a ComfyUI that predates the V3 node API: say so instead of loading nothing
    logging.getLogger(__name__).error(
        "[GAG] ComfyUI-GAG needs ComfyUI %s or newer: this ComfyUI has no comfy_api.latest, so no GAG node was "
        "registered. Update ComfyUI (git pull, or ComfyUI-Manager: Update ComfyUI) and restart.", MIN_COMFYUI)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]

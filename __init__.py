"""ComfyUI-GAG: Geometry-Aware Attention Guidance (arXiv 2603.02531) and PLADIS (arXiv 2503.07677) for ComfyUI."""
import importlib.util

WEB_DIRECTORY = "./web"

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

# Outside ComfyUI (plain `pytest`, packaging tools) there is no comfy_api: the pure modules stay importable.
if importlib.util.find_spec("comfy_api") is not None:
    from .nodes.gag_nodes import NODES  # the one registration path: V1 mappings of the V3 nodes (0.8 and 0.3x)

    for _node in NODES:
        _schema = _node.GET_SCHEMA()
        NODE_CLASS_MAPPINGS[_schema.node_id] = _node
        NODE_DISPLAY_NAME_MAPPINGS[_schema.node_id] = _schema.display_name

    from .nodes import web_routes

    web_routes.register()  # /gag/presets and /gag/telemetry for web/, when a PromptServer is running

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]

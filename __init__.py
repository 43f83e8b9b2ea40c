"""ComfyUI-GAG: Geometry-Aware Attention Guidance (arXiv 2603.02531) and PLADIS (arXiv 2503.07677) for ComfyUI."""

WEB_DIRECTORY = "./web"

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]

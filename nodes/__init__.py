"""ComfyUI glue: node classes (gag_nodes, needs ComfyUI) and the pure patching logic they use (no ComfyUI import)."""

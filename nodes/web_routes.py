"""HTTP routes of the web extension on ComfyUI's server: the preset table and the chart subscription.

    GET  /gag/presets    -> {"version", "event", "presets": [Preset.as_dict()...], "nodes": {node type: fields}}
    GET  /gag/telemetry  -> {"event", "nodes": [node ids some page shows a chart for]}
    POST /gag/telemetry  <- {"client_id": api.clientId, "nodes": ["12", "5:3", ...]}  (an empty list = none)

(ComfyUI also serves every route under /api.) The preset values come from gag_core.presets.PRESETS only; "nodes"
says which widget of each node type a preset field sets, so the page duplicates no table. `register` plugs
the server into nodes.telemetry; outside a running server (tests, scripts) it does nothing.
"""
from __future__ import annotations

import inspect
import logging
import sys

from ..gag_core import combine
from ..gag_core.presets import PRESETS
from . import telemetry

logger = logging.getLogger("comfyui_gag")

API_VERSION = 1
PRESET_ROUTE = "/gag/presets"
TELEMETRY_ROUTE = "/gag/telemetry"

# node type -> {widget: preset field}; "by_method": {method widget value: overrides}; "chart": stats available
NODE_PRESET_FIELDS = {
    "GeometryAwareAttentionGuidance": {"widgets": {"scale": "scale", "beta": "beta"}, "chart": True},
    "GeometryAwareAttentionGuidanceAdvanced": {
        "widgets": {"scale": "scale", "beta": "beta", "tau": "tau", "alpha": "alpha",
                    "start_percent": "start_percent", "end_percent": "end_percent"},
        "by_method": {"pladis": {"scale": "pladis_scale"}},
        "chart": True,
    },
    "PLADISGuidance": {"widgets": {"scale": "pladis_scale"}, "chart": False},
}

_registered = False


def pladis_has_stats() -> bool:
    """True once gag_core's PLADIS rule fills GuidanceStats too (then its nodes get the chart)."""
    return "stats" in inspect.signature(combine.pladis_combine).parameters


def presets_payload() -> dict:
    """The JSON the page reads: every preset of gag_core.presets and how each node type applies one."""
    nodes = {}
    for node_type, spec in NODE_PRESET_FIELDS.items():
        entry = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.items()}
        entry["chart"] = bool(spec["chart"] or pladis_has_stats())
        nodes[node_type] = entry
    return {
        "version": API_VERSION,
        "event": telemetry.EVENT,
        "presets": [p.as_dict() for p in PRESETS.values()],
        "nodes": nodes,
    }


def parse_subscription(body) -> tuple[str, list]:
    """(client_id, nodes) from a POST body, with a ValueError quoting what is wrong."""
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {body!r}")
    client_id, nodes = body.get("client_id"), body.get("nodes", [])
    if not isinstance(client_id, str) or not client_id:
        raise ValueError(f"client_id must be a non-empty string, got {client_id!r}")
    return client_id, nodes


def _prompt_id():
    from comfy_execution.utils import get_executing_context  # ComfyUI

    context = get_executing_context()
    return None if context is None else context.prompt_id


def register(server=None) -> bool:
    """Add the routes to ComfyUI's PromptServer and connect telemetry to its websocket (once)."""
    global _registered
    if _registered:
        return True
    if server is None:  # ComfyUI's main.py imports its `server` module before it loads custom nodes
        prompt_server = getattr(sys.modules.get("server"), "PromptServer", None)
        server = getattr(prompt_server, "instance", None)
    if server is None or not hasattr(server, "routes"):
        return False
    from aiohttp import web

    @server.routes.get(PRESET_ROUTE)
    async def get_presets(request):
        return web.json_response(presets_payload())

    @server.routes.get(TELEMETRY_ROUTE)
    async def get_telemetry(request):
        return web.json_response({"event": telemetry.EVENT, "nodes": sorted(telemetry.TELEMETRY.wanted)})

    @server.routes.post(TELEMETRY_ROUTE)
    async def post_telemetry(request):
        try:
            body = await request.json()
        except Exception:
            return web.json_response({"error": "body is not JSON"}, status=400)
        try:
            client_id, nodes = parse_subscription(body)
            ids = telemetry.TELEMETRY.subscribe(client_id, nodes)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"event": telemetry.EVENT, "nodes": sorted(ids)})

    telemetry.TELEMETRY.sender = server.send_sync
    telemetry.TELEMETRY.connected = (lambda client: client in getattr(server, "sockets", {})) \
        if isinstance(getattr(server, "sockets", None), dict) else None
    telemetry.TELEMETRY.prompt_id = _prompt_id
    _registered = True
    return True

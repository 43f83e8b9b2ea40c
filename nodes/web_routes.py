"""HTTP routes of the web extension on ComfyUI's server: the preset table and the chart subscription.

    GET  /gag/presets    -> {"version", "event", "presets": [Preset.as_dict()...], "nodes": {node type: fields}}
    GET  /gag/telemetry  -> {"event", "nodes": [node ids some page shows a chart for]}
    POST /gag/telemetry  <- {"client_id": api.clientId, "nodes": ["12", "5:3", ...]}  (an empty list = none)

A POST body is read up to 64 KiB (413 beyond), a client id up to 256 characters, at most 64 pages subscribe at
once (429 when every slot holds a connected page); a rejection says what is wrong without echoing the input.
(ComfyUI also serves every route under /api.) The preset values come from gag_core.presets.PRESETS only; "nodes"
says which widget of each node type a preset field sets, so the page duplicates no table. `register` plugs
the server into nodes.telemetry; outside a running server (tests, scripts) it does nothing.
"""
from __future__ import annotations

import json
import logging
import sys

from ..gag_core.presets import PRESETS
from . import telemetry

logger = logging.getLogger("comfyui_gag")

API_VERSION = 1
MAX_BODY_BYTES = 64 * 1024  # a subscription is ≤ 256 ids of ≤ 128 characters: far below this
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
    "PLADISGuidance": {"widgets": {"scale": "pladis_scale"}, "chart": True},  # gag_core fills PLADIS stats too
}

_registered = False


def presets_payload() -> dict:
    """The JSON the page reads: every preset of gag_core.presets and how each node type applies one."""
    nodes = {}
    for node_type, spec in NODE_PRESET_FIELDS.items():
        entry = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.items()}
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
        raise ValueError(f"expected a JSON object, got {telemetry.quote(body)}")
    client_id, nodes = body.get("client_id"), body.get("nodes", [])
    return telemetry.check_client_id(client_id), nodes


async def read_body(request) -> bytes | None:
    """The request body, or None when it is longer than MAX_BODY_BYTES (read no further than that)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return None
    chunks, size = [], 0
    while size <= MAX_BODY_BYTES:  # read() returns what has arrived: loop until EOF or past the cap
        chunk = await request.content.read(MAX_BODY_BYTES + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    return None


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
        data = await read_body(request)
        if data is None:
            return web.json_response({"error": f"body is larger than {MAX_BODY_BYTES // 1024} KiB"}, status=413)
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):  # also a number too long for int() and too deep nesting
            return web.json_response({"error": "body is not JSON"}, status=400)
        try:
            client_id, nodes = parse_subscription(body)
            ids = telemetry.TELEMETRY.subscribe(client_id, nodes)
        except telemetry.TooManyClients as e:
            return web.json_response({"error": str(e)}, status=429)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"event": telemetry.EVENT, "nodes": sorted(ids)})

    telemetry.TELEMETRY.sender = server.send_sync
    telemetry.TELEMETRY.connected = (lambda client: client in getattr(server, "sockets", {})) \
        if isinstance(getattr(server, "sockets", None), dict) else None
    telemetry.TELEMETRY.prompt_id = _prompt_id
    _registered = True
    return True

"""Per-step guidance statistics for the web chart: nothing is computed unless a client asked for that node.

A page (web/gag.js) subscribes the ids of the GAG nodes whose chart it shows (`Telemetry.subscribe`, through
nodes/web_routes.py). For those nodes only, `stats_for` hands gag_core a `GuidanceStats` that every guided
attention call of the current sampler step adds to (all layers, cond and uncond). `end_step`, run by a sampler
post-CFG function that `attach` installs (called once per model evaluation, after CFG), turns the step's sums
into one websocket message per subscribed client:

    {"node", "prompt_id", "step", "steps", "sigma", "calls", "tokens",
     "rel_guidance" (mean ‖λ·c·G‖/‖O_s‖), "capped_fraction" (share of ‖G‖ > τ),
     "parallel_energy", "orthogonal_energy" (mean ‖Δ∥‖², ‖Δ⊥‖²), "parallel_share" (‖Δ∥‖²/‖Δ‖²)}

For the usual samplers (one model evaluation per step: euler, dpmpp_2m, ...) that is one message per step;
two-evaluation samplers (heun, dpm_2) send two, tagged with the schedule step nearest their σ.
Imports no ComfyUI module: the server side (sender, socket check, prompt id) is plugged in by web_routes.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field

from ..gag_core.stats import GuidanceStats
from ..gag_core.validate import quote

logger = logging.getLogger("comfyui_gag")

EVENT = "comfyui_gag.stats"  # websocket message type the web extension listens to
MAX_NODES_PER_CLIENT = 256
MAX_NODE_ID_CHARS = 128
MAX_CLIENT_ID_CHARS = 256  # ComfyUI's client ids are 32 hex characters
MAX_CLIENTS = 64  # pages subscribed at once; disconnected ones are dropped first when it is reached


class TooManyClients(ValueError):
    """Every subscription slot is taken by a connected page (the route answers 429)."""


def check_client_id(client_id) -> str:
    """A non-empty string of at most MAX_CLIENT_ID_CHARS characters, with a message that says what is wrong."""
    if not isinstance(client_id, str):
        raise ValueError(f"client_id must be a string, got {quote(client_id)} ({type(client_id).__name__})")
    if not client_id:
        raise ValueError("client_id is empty ('')")
    if len(client_id) > MAX_CLIENT_ID_CHARS:
        raise ValueError(f"client_id is {len(client_id):,} characters long (at most {MAX_CLIENT_ID_CHARS}): "
                         f"{quote(client_id)}")
    return client_id


@dataclass
class _StepAccumulator:
    """The statistics of one node during one sampler step."""

    sigmas: object  # transformer_options["sigmas"] of the step (identity tells passes of one step apart cheaply)
    sigma: float | None
    step: int | None
    steps: int | None
    stats: GuidanceStats = field(default_factory=GuidanceStats)


def _first_float(t) -> float | None:
    """max(σ) of a tensor / number, None if it has none."""
    try:
        if hasattr(t, "detach"):
            return float(t.detach().float().max()) if t.numel() else None
        return float(t)
    except (TypeError, ValueError, RuntimeError):
        return None


def schedule_step(sigma: float | None, sample_sigmas) -> tuple[int | None, int | None]:
    """(index of the schedule σ nearest `sigma` among the first n, n) for sample_sigmas of length n + 1."""
    if sigma is None or sample_sigmas is None:
        return None, None
    try:
        values = [float(x) for x in sample_sigmas.detach().flatten().float().cpu().tolist()]
    except AttributeError:
        try:
            values = [float(x) for x in sample_sigmas]
        except (TypeError, ValueError):
            return None, None
    if len(values) < 2:
        return None, None
    steps = len(values) - 1
    step = min(range(steps), key=lambda i: abs(values[i] - sigma))
    return step, steps


def _finite(x):
    """JSON-safe number: NaN / ±inf become None (JSON.parse would reject them)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def check_node_ids(nodes) -> frozenset[str]:
    """Validate a list of node ids (str or int, e.g. "12" or "5:3" inside a subgraph) into a set of strings."""
    if not isinstance(nodes, (list, tuple)):
        raise ValueError(f"nodes must be a list of node ids, got {quote(nodes)}")
    if len(nodes) > MAX_NODES_PER_CLIENT:
        raise ValueError(f"at most {MAX_NODES_PER_CLIENT} node ids, got {len(nodes)}")
    out = set()
    for n in nodes:
        if isinstance(n, bool) or not isinstance(n, (str, int)):
            raise ValueError(f"node id must be a string or an integer, got {quote(n)}")
        if isinstance(n, int) and n.bit_length() > 4 * MAX_NODE_ID_CHARS:  # str() of it would be too long
            raise ValueError(f"node id is an integer of {n.bit_length()} bits (at most {MAX_NODE_ID_CHARS} digits)")
        s = str(n)
        if not s:
            raise ValueError("node id is empty ('')")
        if len(s) > MAX_NODE_ID_CHARS:
            raise ValueError(f"node id {quote(n)} is too long (at most {MAX_NODE_ID_CHARS} characters)")
        if not all(ch.isalnum() or ch in ":_-" for ch in s):
            raise ValueError(f"malformed node id {quote(n)}: only letters, digits and ':_-' occur in node ids")
        out.add(s)
    return frozenset(out)


class Telemetry:
    """Who wants which node's statistics, the accumulators of the running step, and the per-step send."""

    def __init__(self, sender=None, connected=None, prompt_id=None):
        self.sender = sender  # callable(event, data, client_id); None: statistics are never requested
        self.connected = connected  # callable(client_id) -> bool; None: every subscriber counts as connected
        self.prompt_id = prompt_id  # callable() -> str | None
        self._lock = threading.Lock()
        self._clients: dict[str, frozenset[str]] = {}
        self.wanted: frozenset[str] = frozenset()  # union over clients; read without the lock on the hot path
        self._steps: dict[str, _StepAccumulator] = {}

    # ------------------------------------------------------------------ subscriptions (server thread)

    def subscribe(self, client_id: str, nodes) -> frozenset[str]:
        """Set the node ids whose statistics `client_id` wants (an empty list unsubscribes)."""
        check_client_id(client_id)
        ids = check_node_ids(nodes)
        with self._lock:
            if ids and client_id not in self._clients and len(self._clients) >= MAX_CLIENTS:
                self._drop_disconnected()
                if len(self._clients) >= MAX_CLIENTS:
                    raise TooManyClients(f"{MAX_CLIENTS} pages already show GAG charts; close one (or reload "
                                         "the pages that are gone) and try again")
            if ids:
                self._clients[client_id] = ids
            else:
                self._clients.pop(client_id, None)
            self._recompute()
        return ids

    def _drop_disconnected(self) -> None:
        """Forget subscribers whose page is gone (lock held)."""
        if self.connected is None:
            return
        for client in [c for c in self._clients if not self._is_connected(c)]:
            self._clients.pop(client, None)

    def _is_connected(self, client: str) -> bool:
        try:
            return bool(self.connected(client))
        except Exception:
            return True

    def drop_client(self, client_id: str) -> None:
        with self._lock:
            self._clients.pop(client_id, None)
            self._recompute()

    def _recompute(self) -> None:
        self.wanted = frozenset().union(*self._clients.values()) if self._clients else frozenset()
        for key in [k for k in list(self._steps) if k not in self.wanted]:
            self._steps.pop(key, None)

    def clients_for(self, node_key: str) -> list[str]:
        with self._lock:
            return sorted(c for c, ids in self._clients.items() if node_key in ids)

    # ------------------------------------------------------------------ sampling thread

    def stats_for(self, node_key, transformer_options) -> GuidanceStats | None:
        """The GuidanceStats of `node_key`'s current step, or None (no cost) when no client shows its chart."""
        if node_key is None or self.sender is None or node_key not in self.wanted:
            return None
        options = transformer_options or {}
        sigmas = options.get("sigmas")
        acc = self._steps.get(node_key)
        if acc is not None and acc.sigmas is sigmas:
            return acc.stats
        sigma = _first_float(sigmas)
        if acc is not None and acc.sigma == sigma:  # another tensor holding the same σ: same step
            acc.sigmas = sigmas
            return acc.stats
        if acc is not None:  # σ moved on without an end_step (a sampler that skips post-CFG functions)
            self.end_step(node_key)
        step, steps = schedule_step(sigma, options.get("sample_sigmas"))
        acc = _StepAccumulator(sigmas, sigma, step, steps)
        self._steps[node_key] = acc
        return acc.stats

    def drop_step(self, node_key) -> None:
        """Forget `node_key`'s unfinished step, sending nothing (a run cut off by an interrupt or an error)."""
        if node_key is not None:
            self._steps.pop(str(node_key), None)

    def end_step(self, node_key) -> dict | None:
        """Send the finished step's summary of `node_key` (if it has one) to its subscribers; return it."""
        acc = self._steps.pop(node_key, None) if node_key is not None else None
        if acc is None or acc.stats.calls == 0 or self.sender is None:
            return None
        message = {"node": node_key, "prompt_id": self.current_prompt_id(), "step": acc.step, "steps": acc.steps,
                   "sigma": _finite(acc.sigma)}
        message.update({k: _finite(v) for k, v in acc.stats.summary().items()})
        for client in self.clients_for(node_key):
            if self.connected is not None and not self.connected(client):
                self.drop_client(client)  # the page went away: stop computing for it
                continue
            self.sender(EVENT, message, client)
        return message

    def current_prompt_id(self):
        """The id of the prompt being executed, or None when unknown."""
        try:
            return self.prompt_id() if self.prompt_id is not None else None
        except Exception:
            return None


TELEMETRY = Telemetry()


def stats_for(node_key, transformer_options):
    """Return a gag_core.GuidanceStats to fill for this call, or None when no client asked (no cost)."""
    return TELEMETRY.stats_for(node_key, transformer_options)


class StepEnd:
    """Sampler post-CFG function: after each model evaluation, send `node_key`'s step statistics."""

    def __init__(self, node_key: str):
        self.node_key = node_key

    def __call__(self, args):
        if self.node_key in TELEMETRY.wanted:
            try:
                TELEMETRY.end_step(self.node_key)
            except Exception as e:  # the chart must never break a run
                logger.warning("[GAG] guidance statistics not sent (%s: %s)", type(e).__name__, e)
        return args["denoised"]


def attach(model, node_key) -> None:
    """Install the per-step send on a patched ModelPatcher (no-op without a node id or the ComfyUI method)."""
    setter = getattr(model, "set_model_sampler_post_cfg_function", None)
    if node_key is None or setter is None:
        return
    setter(StepEnd(str(node_key)))

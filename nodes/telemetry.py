"""Per-step guidance statistics sent to the web chart (stub until the web issue lands)."""
from __future__ import annotations


def stats_for(node_key, transformer_options):
    """Return a gag_core.GuidanceStats to fill for this call, or None when no client asked (no cost)."""
    return None

"""gag_core: pure-PyTorch maths of Geometry-Aware Attention Guidance (arXiv 2603.02531) and PLADIS (2503.07677)."""
from .attention import (
    DEFAULT_MAX_CHUNK_BYTES,
    METHODS,
    dense_attention_with_lse,
    gag_attention,
    joint_gag_attention,
    kernel_self_check_report,
    max_chunk_bytes,
    sparse_dense_attention,
)
from .combine import gag_combine, gag_combine_reference, pladis_combine
from .entmax import entmax, entmax_reference
from .presets import PRESETS, Preset, get_preset
from .stats import GuidanceStats

__all__ = [
    "DEFAULT_MAX_CHUNK_BYTES", "METHODS", "PRESETS", "GuidanceStats", "Preset", "dense_attention_with_lse",
    "entmax", "entmax_reference", "gag_attention", "gag_combine", "gag_combine_reference", "get_preset",
    "joint_gag_attention", "kernel_self_check_report", "max_chunk_bytes", "pladis_combine", "sparse_dense_attention",
]

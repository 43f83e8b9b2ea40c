"""Block selection: which UNet (input/middle/output) or MMDiT (double/single) blocks are guided.

The `blocks` text is parsed into intervals of block numbers (a range is never expanded), in time and memory
bounded by its length (at most `MAX_CHARS`), and each item the user typed is checked against the blocks of the
model at hand (`model_blocks`): an item that matches none of them is a ValueError quoting it and listing the
model's blocks. A family whose block numbering is unknown accepts any number (the run then warns if nothing
was guided).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..gag_core.validate import quote

GROUPS = {"unet": ("input", "middle", "output"), "mmdit": ("double", "single")}
AUTO = "auto"
MAX_CHARS = 1000  # longest accepted `blocks` text
MAX_DIGITS = 6  # longest block number (no model has a million blocks); checked before int()
_ITEM = re.compile(r"([a-z]+)(?::(\d+)(?:-(\d+))?)?")

BLOCKS_HELP = (
    "Guided blocks, comma separated: a group, or a group with a block number or range. "
    "UNet: input, middle, output (e.g. 'input:4-8, output'); MMDiT: double, single (e.g. 'double:0-9, single'). "
    "Block numbers are ComfyUI's (those of the 'block' / 'block_index' of attention patches); a number that is "
    "no block of the model is an error that lists the model's blocks. "
    "'all' = every block, 'auto' = the family preset (e.g. UNet input+output, FLUX double+single)."
)

Spans = tuple[tuple[int, int], ...]  # sorted, disjoint, non-adjacent closed intervals [lo, hi]


def merge_spans(spans) -> Spans:
    """Sorted, merged intervals from any iterable of (lo, hi) pairs (adjacent intervals join)."""
    out: list[list[int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((a, b) for a, b in out)


def spans_of(numbers) -> Spans:
    """Intervals of a collection of block numbers."""
    return merge_spans((n, n) for n in numbers)


def _hit(spans: Spans, index: int) -> bool:
    return any(lo <= index <= hi for lo, hi in spans)


def _overlaps(a: Spans, b: Spans) -> bool:
    return any(lo <= bhi and blo <= hi for lo, hi in a for blo, bhi in b)


def _write(name: str, spans: Spans) -> list[str]:
    return [f"{name}:{a}" if a == b else f"{name}:{a}-{b}" for a, b in spans]


@dataclass(frozen=True)
class BlockSelection:
    """Guided groups; a group maps to None (all its blocks) or intervals of block numbers."""

    kind: str
    groups: tuple[tuple[str, Spans | None], ...]

    def contains(self, group: str, index: int) -> bool:
        """True when block `index` of `group` is guided."""
        for name, spans in self.groups:
            if name == group:
                return spans is None or _hit(spans, index)
        return False

    def describe(self) -> str:
        """The selection written back in the input grammar (for logs)."""
        parts = []
        for name, spans in self.groups:
            parts.extend([name] if spans is None else _write(name, spans))
        return ", ".join(parts)


def describe_blocks(available: dict[str, Spans]) -> str:
    """A model's blocks in the input grammar, e.g. 'input:1-2, input:4-5, middle:0, output:3-11'."""
    parts = [p for name, spans in available.items() for p in _write(name, spans)]
    return ", ".join(parts) if parts else "none"


def matches_any(selection: BlockSelection, available: dict[str, Spans]) -> bool:
    """True when `selection` holds at least one of the model's blocks `available`."""
    for name, spans in selection.groups:
        have = available.get(name, ())
        if have and (spans is None or _overlaps(spans, have)):
            return True
    return False


def model_blocks(spec, net) -> dict[str, Spans] | None:
    """The guidable block numbers per group of diffusion network `net`, from a Family row's `block_counts`.

    `spec` is either pairs (group, attribute of the net whose len() is that group's block count: numbers
    0 … n−1), or a callable(net) -> {group: block numbers}. None when unknown (empty spec, missing attribute).
    """
    if not spec or net is None:
        return None
    try:
        if callable(spec):
            found = spec(net)
        else:
            found = {group: range(len(getattr(net, attr))) for group, attr in spec}
    except Exception:  # an attribute the net does not have: unknown, accept any number
        return None
    if found is None:
        return None
    return {group: merge_spans([(numbers.start, numbers.stop - 1)] if isinstance(numbers, range) and numbers
                               else ((n, n) for n in numbers))
            for group, numbers in found.items()}


def unet_attention_blocks(net) -> dict[str, list[int]]:
    """ComfyUI's UNet block numbers (transformer_options["block"]) whose blocks hold a cross-attention (attn2)."""

    def has_cross(block) -> bool:
        return block is not None and any(getattr(m, "attn2", None) is not None for m in block.modules())

    return {"input": [i for i, b in enumerate(net.input_blocks) if has_cross(b)],
            "middle": [0] if has_cross(getattr(net, "middle_block", None)) else [],
            "output": [i for i, b in enumerate(net.output_blocks) if has_cross(b)]}


def _number(digits: str, item: str) -> int:
    if len(digits) > MAX_DIGITS:
        raise ValueError(f"blocks item {quote(item)}: block number {quote(digits, 24)} is too large "
                         f"({len(digits)} digits; at most {MAX_DIGITS})")
    return int(digits)


def parse_blocks(text, kind: str, default: str, available: dict[str, Spans] | None = None) -> BlockSelection:
    """Parse the `blocks` input for a model of `kind` ("unet" or "mmdit"); 'auto' means `default`.

    With `available` (the model's blocks, `model_blocks`), every item typed must match one of them.
    """
    if kind not in GROUPS:
        raise ValueError(f"kind must be one of {sorted(GROUPS)}, got {quote(kind)}")
    if not isinstance(text, str):
        raise ValueError(f"blocks must be a string, got {quote(text)}")
    if len(text) > MAX_CHARS:
        raise ValueError(f"blocks is {len(text):,} characters long (at most {MAX_CHARS:,}): {quote(text)}")
    spec = text.strip().lower()
    typed = spec not in ("", AUTO)
    if not typed:
        spec = default.strip().lower()
    allowed = GROUPS[kind]
    other = next(k for k in GROUPS if k != kind)
    merged: dict[str, list[tuple[int, int]] | None] = {}
    for raw in spec.split(","):
        item = raw.strip().replace(" ", "")
        if not item:
            continue
        if item == "all":
            for g in allowed:
                merged[g] = None
            continue
        m = _ITEM.fullmatch(item)
        if m is None:
            raise ValueError(f"blocks item {quote(raw.strip())} is not 'group', 'group:N' or 'group:N-M' "
                             f"(in {quote(text)})")
        group, a, b = m.group(1), m.group(2), m.group(3)
        if group not in allowed:
            hint = f" ({group!r} is a {other} group; this model is a {kind})" if group in GROUPS[other] else ""
            raise ValueError(f"blocks group {quote(group, 30)} unknown for a {kind} model: use "
                             f"{', '.join(allowed)}{hint}")
        if a is None:
            span = None
        else:
            lo = _number(a, item)
            hi = _number(b, item) if b is not None else lo
            if hi < lo:
                raise ValueError(f"blocks range {quote(item)} is empty ({hi} < {lo})")
            span = ((lo, hi),)
        if typed and available is not None:
            have = available.get(group, ())
            if not have or (span is not None and not _overlaps(span, have)):
                raise ValueError(f"blocks item {quote(item)} matches no block of this model; its blocks are: "
                                 f"{describe_blocks(available)}")
        if span is None:
            merged[group] = None
        elif merged.get(group, []) is not None:
            merged.setdefault(group, []).extend(span)
    if not merged:
        raise ValueError(f"blocks {quote(text)} selects no block")
    groups = tuple((g, None if merged[g] is None else merge_spans(merged[g])) for g in allowed if g in merged)
    return BlockSelection(kind, groups)

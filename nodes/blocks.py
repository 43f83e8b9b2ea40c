"""Block selection: which UNet (input/middle/output) or MMDiT (double/single) blocks are guided."""
from __future__ import annotations

import re
from dataclasses import dataclass

GROUPS = {"unet": ("input", "middle", "output"), "mmdit": ("double", "single")}
AUTO = "auto"
_ITEM = re.compile(r"^([a-z]+)(?::(\d+)(?:-(\d+))?)?$")

BLOCKS_HELP = (
    "Guided blocks, comma separated: a group, or a group with a block number or range. "
    "UNet: input, middle, output (e.g. 'input:4-8, output'); MMDiT: double, single (e.g. 'double:0-9, single'). "
    "Block numbers are ComfyUI's (those of the 'block' / 'block_index' of attention patches). "
    "'all' = every block, 'auto' = the family preset (e.g. UNet input+output, FLUX double+single)."
)


@dataclass(frozen=True)
class BlockSelection:
    """Guided groups; a group maps to None (all its blocks) or a frozenset of block numbers."""

    kind: str
    groups: tuple[tuple[str, frozenset[int] | None], ...]

    def contains(self, group: str, index: int) -> bool:
        """True when block `index` of `group` is guided."""
        for name, ids in self.groups:
            if name == group and (ids is None or index in ids):
                return True
        return False

    def describe(self) -> str:
        """The selection written back in the input grammar (for logs)."""
        parts = []
        for name, ids in self.groups:
            if ids is None:
                parts.append(name)
                continue
            runs: list[list[int]] = []
            for i in sorted(ids):
                if runs and i == runs[-1][1] + 1:
                    runs[-1][1] = i
                else:
                    runs.append([i, i])
            parts.extend(f"{name}:{a}" if a == b else f"{name}:{a}-{b}" for a, b in runs)
        return ", ".join(parts)


def parse_blocks(text, kind: str, default: str) -> BlockSelection:
    """Parse the `blocks` input for a model of `kind` ("unet" or "mmdit"); 'auto' means `default`."""
    if kind not in GROUPS:
        raise ValueError(f"kind must be one of {sorted(GROUPS)}, got {kind!r}")
    if not isinstance(text, str):
        raise ValueError(f"blocks must be a string, got {text!r}")
    spec = text.strip().lower()
    if spec in ("", AUTO):
        spec = default.strip().lower()
    allowed = GROUPS[kind]
    other = next(k for k in GROUPS if k != kind)
    merged: dict[str, set[int] | None] = {}
    for raw in spec.split(","):
        item = raw.strip().replace(" ", "")
        if not item:
            continue
        if item == "all":
            for g in allowed:
                merged[g] = None
            continue
        m = _ITEM.match(item)
        if m is None:
            raise ValueError(f"blocks item {raw.strip()!r} is not 'group', 'group:N' or 'group:N-M' ({text!r})")
        group, a, b = m.group(1), m.group(2), m.group(3)
        if group not in allowed:
            hint = f" ({group!r} is a {other} group; this model is a {kind})" if group in GROUPS[other] else ""
            raise ValueError(f"blocks group {group!r} unknown for a {kind} model: use {', '.join(allowed)}{hint}")
        if a is None:
            merged[group] = None
            continue
        lo, hi = int(a), int(b) if b is not None else int(a)
        if hi < lo:
            raise ValueError(f"blocks range {item!r} is empty ({hi} < {lo})")
        if group in merged and merged[group] is None:
            continue
        merged.setdefault(group, set()).update(range(lo, hi + 1))
    if not merged:
        raise ValueError(f"blocks {text!r} selects no block")
    groups = tuple((g, None if merged[g] is None else frozenset(merged[g])) for g in allowed if g in merged)
    return BlockSelection(kind, groups)

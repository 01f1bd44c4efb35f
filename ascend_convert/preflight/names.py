"""Reading a tensor name the way the engine's loader does: the module prefix it looks up, the
layer and expert it belongs to, and the groups of tensors reported together."""

from __future__ import annotations

import re

_LAYER = re.compile(r"^(?P<stem>.*?\blayers\.(?P<layer>\d+))\.")
_EXPERT = re.compile(r"\.experts\.(?P<expert>\d+)\.")


def layer_of(name: str) -> int | None:
    m = _LAYER.match(name)
    return int(m.group("layer")) if m else None


def expert_of(name: str) -> int | None:
    m = _EXPERT.search(name)
    return int(m.group("expert")) if m else None


def group_of(name: str) -> str:
    """Where a tensor is reported with its neighbours: its layer (`model.layers.3`), else its first
    two name parts (`model.embed_tokens`, `visual.blocks`)."""
    m = _LAYER.match(name)
    if m:
        return m.group("stem")
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


def listing(names: list[str], shown: int = 3) -> str:
    """`a, b, c and 5 more`."""
    head = ", ".join(names[:shown])
    return head + (f" and {len(names) - shown} more" if len(names) > shown else "")


def matches_any(name: str, patterns: list[str]) -> bool:
    return any(re.search(p, name) for p in patterns)

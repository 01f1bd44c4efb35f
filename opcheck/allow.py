"""`--allow FILE`: a baseline of accepted findings, each with the reason it is accepted (like
pip-audit's ignore list). YAML or JSON: `allow: [{op: aten::lgamma, reason: "...", kind: fallback}]`."""

from __future__ import annotations

from pathlib import Path

from ascend_common.allow_file import load_allow_entries

from .trace import Finding


def qualified_op(name: str) -> str:
    """An allow-list op as findings name it: a bare aten name gets `aten::`; ONNX ops keep `domain::type`."""
    return name if "::" in name else f"aten::{name}"


def load_allow(path: Path) -> dict[tuple[str, str | None], str]:
    """(op, kind or None for any kind) → reason."""
    return {(qualified_op(e["op"]), e.get("kind")): e["reason"]
            for e in load_allow_entries(path, ("op", "reason"), ("kind",))}


def split(found: list[Finding], allowed: dict[tuple[str, str | None], str]) -> tuple[list[Finding], list[dict]]:
    """(findings still standing, accepted ones with their reasons)."""
    remaining, accepted = [], []
    for f in found:
        reason = allowed.get((f.op, f.kind)) or allowed.get((f.op, None))
        if reason is None:
            remaining.append(f)
        else:
            accepted.append({"op": f.op, "kind": f.kind, "reason": reason})
    return remaining, accepted

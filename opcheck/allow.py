"""`--allow FILE`: a baseline of accepted findings, each with the reason it is accepted (like
pip-audit's ignore list). YAML or JSON: `allow: [{op: aten::lgamma, reason: "...", kind: fallback}]`."""

from __future__ import annotations

from pathlib import Path

from ascend_common.errors import UserError, first_line

from .trace import Finding


def qualified_op(name: str) -> str:
    """An allow-list op as findings name it: a bare aten name gets `aten::`; ONNX ops keep `domain::type`."""
    return name if "::" in name else f"aten::{name}"


def load_allow(path: Path) -> dict[tuple[str, str | None], str]:
    """(op, kind or None for any kind) → reason."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such allow file") from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid YAML/JSON ({first_line(exc)})") from None
    entries = data.get("allow") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise UserError(f"{path}: expected a mapping with an 'allow' list")
    allowed = {}
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise UserError(f"{path}: allow entry {i} is not a mapping")
        for key in ("op", "reason"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise UserError(f"{path}: allow entry {i}: missing '{key}' (every accepted op needs a reason)")
        unknown = set(entry) - {"op", "reason", "kind"}
        if unknown:
            raise UserError(f"{path}: allow entry {i}: unknown key(s) {', '.join(sorted(unknown))}")
        allowed[(qualified_op(entry["op"]), entry.get("kind"))] = entry["reason"]
    return allowed


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

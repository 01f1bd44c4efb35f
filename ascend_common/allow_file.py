"""`--allow FILE`: a baseline of accepted findings, each with the reason it is accepted (like
pip-audit's ignore list), in YAML or JSON: `allow: [{<key>: ..., reason: "..."}]`. check_ops
accepts ops, preflight accepts rules; both read the file here, so both refuse the same mistakes."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError, first_line


def load_allow_entries(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> list[dict]:
    """The `allow` list, each entry a mapping with non-empty string values for `required` (a
    `reason` among them) and nothing but `required` and `optional` keys."""
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
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise UserError(f"{path}: allow entry {i} is not a mapping")
        for key in required:
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                what = " (every accepted finding needs a reason)" if key == "reason" else ""
                raise UserError(f"{path}: allow entry {i}: missing '{key}'{what}")
        unknown = set(entry) - set(required) - set(optional)
        if unknown:
            raise UserError(f"{path}: allow entry {i}: unknown key(s) {', '.join(sorted(unknown))}")
    return entries

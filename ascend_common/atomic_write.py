"""Files written whole or not at all: a temp name beside the target, fsync, rename. Every report,
manifest and journal this project writes goes through here, so Ctrl-C or a full disk never leaves a
half-written file where a reader expects a complete one."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from .errors import UserError, first_line


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temp name beside `path`, fsync, rename: a reader sees the old file or the new one.

    A report path the user got wrong (no such directory, a directory, no permission) is a one-line
    error naming it, and no temp file is left behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UserError(f"{path}: cannot write ({exc.strerror or first_line(exc)})") from exc


def write_json_atomic(path: Path, data: dict) -> None:
    """Deterministic JSON (sorted keys, no timestamps), so equal contents are equal bytes."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")

"""Byte sizes as users write them (`5GB`, `500MB`, `2GiB`, `1.5GB`, a plain byte count): one parser
for `--max-shard-size` (transformers' `max_shard_size` spelling) and the KV cache's budget."""

from __future__ import annotations

import re

from .errors import UserError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int, error: str) -> int:
    """Bytes from an int or a size string; `error` is the one-line message if it is not one (each
    caller names its own option or argument)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS or float(m.group(1)) <= 0:
        raise UserError(error)
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])

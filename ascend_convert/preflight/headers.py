"""Safetensors headers without the data: each tensor's dtype, shape and byte range, validated the
way safetensors validates them (a header the library would reject is reported here instead), and
the index files that say which shard holds which tensor. No torch: a 671B checkpoint's ~160
headers are read in well under a second."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from ..dtype_names import FROM_SAFETENSORS_CODE, ITEMSIZE

#: safetensors refuses headers over 100 MB (its MAX_HEADER_SIZE); so does this reader.
MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class TensorHeader:
    name: str
    dtype: str  # torch's name (`bfloat16`), or the raw code where it is not one torch has
    shape: tuple[int, ...]
    file: str  # relative to the checkpoint directory

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class HeaderError(ValueError):
    """A file safetensors would refuse to open; the message says why."""


def read_header(path: Path, rel: str) -> list[TensorHeader]:
    """Every tensor of one `.safetensors` file, checked: header length within the file and the limit,
    a JSON object, each entry's dtype known, its byte range the size its shape and dtype need, the
    ranges in order, not overlapping and covering the data exactly."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise HeaderError(f"{size} bytes, shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER or 8 + length > size:
                raise HeaderError(f"header length {length} runs past the file ({size} bytes)")
            raw = f.read(length)
    except OSError as exc:
        raise HeaderError(f"cannot read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HeaderError(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise HeaderError("header is not a JSON object")
    data_size = size - 8 - length
    tensors, spans = [], []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            if (not all(isinstance(d, int) and d >= 0 for d in shape) or not isinstance(code, str)
                    or not all(isinstance(x, int) and x >= 0 for x in (begin, end))):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise HeaderError(f"tensor {name}: malformed entry {entry!r}") from None
        dtype = FROM_SAFETENSORS_CODE.get(code, code)
        itemsize = ITEMSIZE.get(dtype)
        if itemsize is None:
            raise HeaderError(f"tensor {name}: unknown dtype {code}")
        t = TensorHeader(name, dtype, shape, rel)
        if end - begin != t.numel * itemsize:
            raise HeaderError(f"tensor {name}: {end - begin} bytes for shape {list(shape)} {dtype} "
                              f"({t.numel * itemsize} needed)")
        tensors.append(t)
        spans.append((begin, end, name))
    at = 0
    for begin, end, name in sorted(spans):
        if begin != at:
            raise HeaderError(f"tensor {name}: data at byte {begin}, expected {at} (a gap or an overlap)")
        at = end
    if at > data_size:
        raise HeaderError(f"truncated: its tensors need {at} bytes of data, the file holds {data_size}")
    if at != data_size:
        raise HeaderError(f"{data_size - at} bytes after the last tensor's data")
    return tensors


def read_index(path: Path) -> dict[str, str]:
    """An index's `weight_map` (tensor → shard file); HeaderError if it is not one."""
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise HeaderError(f"not a readable index ({type(exc).__name__}: {exc})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v for v in weight_map.values()):
        raise HeaderError("weight_map is not an object of tensor name -> shard file")
    return weight_map

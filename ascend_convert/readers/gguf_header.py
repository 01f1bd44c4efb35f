"""A GGUF file's header — its metadata values and tensor table — read with `struct` over a memory map.

Why not `gguf.GGUFReader`: it turns every element of every metadata array into numpy views, which
takes ~4 s on SmolLM2's 49k-token vocabulary and 49k merges, on each open (a conversion and its
verify opened the file twice). The converter reads none of those arrays here (transformers builds
the tokenizer from the file itself), so this walks past arrays of strings and keeps the rest, in
milliseconds. The tensors come back shaped exactly as `gguf.GGUFReader` shapes them, so the `gguf`
package still does the dequantizing (`gguf.quants.dequantize`).

Format (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): magic `GGUF`, u32 version (2 or 3),
u64 tensor count, u64 metadata count; each metadata entry a string key, a u32 type and its value;
each tensor a string name, u32 dims, u64 × dims (fastest-moving first), u32 ggml type, u64 offset
from the data section, which starts at the next multiple of `general.alignment` (default 32).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
STRING, ARRAY = 8, 9
# the fixed-size value types: u8, i8, u16, i16, u32, i32, f32, bool, -, -, u64, i64, f64
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
# ggml types stored as plain values, and the numpy type of their elements (as gguf.GGUFReader has them)
PLAIN = {0: np.float32, 1: np.float16, 16: np.int8, 17: np.int16, 18: np.int32, 27: np.int64, 28: np.float64}


class GGUFFormatError(ValueError):
    """The file is not a GGUF this reader understands (the message says where and why)."""


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # ggml order: fastest-moving dimension first
    data_offset: int  # from the start of the file
    data: np.ndarray  # a read-only view of the file: values, or for block types bytes [..., row bytes]


class GGUFHeader:
    """`fields`: metadata values (numbers, strings; arrays of numbers as lists; arrays of strings as their
    length, not read). `tensors`: in file order."""

    def __init__(self, path: Path) -> None:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape

        self._blob = np.memmap(path, dtype=np.uint8, mode="r")
        if bytes(self._blob[:4]) != b"GGUF":
            raise GGUFFormatError("no GGUF magic at the start")
        self._pos = 4
        version = self._unpack("<I")
        if version not in VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if swapped in VERSIONS:
                raise GGUFFormatError("a big-endian GGUF (convert it on a big-endian machine, or re-export it)")
            raise GGUFFormatError(f"GGUF version {version} (this reader reads {' and '.join(map(str, VERSIONS))})")
        tensor_count, field_count = self._unpack("<Q"), self._unpack("<Q")
        self.fields: dict[str, Any] = {}
        for _ in range(field_count):
            key = self._string()
            self.fields[key] = self._value(self._unpack("<I"))
        table = []
        for _ in range(tensor_count):
            name = self._string()
            dims = struct.unpack_from(f"<{self._unpack('<I')}Q", self._blob, self._pos)
            self._pos += 8 * len(dims)
            table.append((name, dims, self._unpack("<I"), self._unpack("<Q")))
        alignment = self.fields.get("general.alignment", DEFAULT_ALIGNMENT)
        start = -(-self._pos // alignment) * alignment
        self.tensors: list[GGUFTensor] = []
        for name, dims, raw_type, offset in table:
            try:
                qtype = GGMLQuantizationType(raw_type)
            except ValueError:
                raise GGUFFormatError(f"tensor {name}: unknown ggml type {raw_type}") from None
            count = int(np.prod(dims, dtype=np.int64))
            block, size = GGML_QUANT_SIZES[qtype]
            shape = tuple(reversed(dims))
            if raw_type in PLAIN:
                element, items = PLAIN[raw_type], count
            else:
                element, items, shape = np.uint8, count * size // block, quant_shape_to_byte_shape(shape, qtype)
            begin = start + offset
            end = begin + items * np.dtype(element).itemsize
            if end > len(self._blob):
                raise GGUFFormatError(f"tensor {name}: its data ends at byte {end}, past the end of the file "
                                      f"({len(self._blob)} bytes): truncated")
            data = self._blob[begin:end].view(element).reshape(shape)
            self.tensors.append(GGUFTensor(name, qtype, tuple(dims), begin, data))

    # -- the header's primitive values ----------------------------------------------------------------
    def _unpack(self, fmt: str):
        try:
            (value,) = struct.unpack_from(fmt, self._blob, self._pos)
        except struct.error:
            raise GGUFFormatError(f"the header ends early (at byte {self._pos})") from None
        self._pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        length = self._unpack("<Q")
        end = self._pos + length
        if end > len(self._blob):
            raise GGUFFormatError(f"a string at byte {self._pos} runs past the end of the file")
        text = bytes(self._blob[self._pos:end]).decode("utf-8", errors="replace")
        self._pos = end
        return text

    def _value(self, kind: int):
        if kind in SCALARS:
            return self._unpack(SCALARS[kind])
        if kind == STRING:
            return self._string()
        if kind != ARRAY:
            raise GGUFFormatError(f"metadata value of unknown type {kind} at byte {self._pos}")
        element, count = self._unpack("<I"), self._unpack("<Q")
        if element in SCALARS:
            layout = f"<{count}{SCALARS[element][1]}"
            try:
                values = list(struct.unpack_from(layout, self._blob, self._pos))
            except struct.error:
                raise GGUFFormatError(f"an array at byte {self._pos} runs past the end of the file") from None
            self._pos += struct.calcsize(layout)
            return values
        if element != STRING:
            raise GGUFFormatError(f"metadata array of type {element} at byte {self._pos}")
        for _ in range(count):  # a vocabulary or a merge table: walked, not read
            length = self._unpack("<Q")
            self._pos += length
        if self._pos > len(self._blob):
            raise GGUFFormatError("an array of strings runs past the end of the file")
        return count

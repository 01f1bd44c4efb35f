"""Streaming safetensors writer.

safetensors' own `save_file` needs every tensor of a file in memory at once; a 5 GB shard would
then cost 5 GB. The format is a u64 header length, a JSON header with each tensor's dtype, shape
and byte range, and the raw bytes: the converter knows all of that from the source's metadata
before reading any data, so it writes the header first and streams tensors after it. Files are
read back with safetensors itself (in `verify` and the tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path

import torch

from .dtypes import SAFETENSORS_CODES, dtype_name, element_size


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = element_size(self.dtype)
        for d in self.shape:
            n *= d
        return n


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's little-endian bytes, without a copy when it is contiguous."""
    t = tensor.contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def sha256_bytes(data: memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class SafetensorsStreamWriter:
    """Writes one file to `<path>.tmp`, then renames it; hashes the file and each tensor on the way.

    Hashing (the file's sha256 and each tensor's) runs on `hasher_pool`, a single worker, so the
    updates stay in file order while the main thread reads and casts the next tensor. At most one
    written tensor waits for its hashes: memory stays at about three tensors (hashing, source,
    cast) whatever the hashing speed."""

    def __init__(self, path: Path, entries: list[PlannedTensor], metadata: dict[str, str],
                 hasher_pool: Executor | None = None) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.entries = entries
        self._next = 0
        self._pool = hasher_pool
        self._pending: list[Future] = []
        self.tensor_hashes: dict[str, str | Future] = {}
        header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
        offset = 0
        for e in entries:
            header[e.name] = {"dtype": SAFETENSORS_CODES[e.dtype], "shape": list(e.shape),
                              "data_offsets": [offset, offset + e.nbytes]}
            offset += e.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # safetensors aligns the data to 8 bytes
        self._file = open(self.tmp, "wb")
        self._hash = hashlib.sha256()
        self._emit(struct.pack("<Q", len(raw)) + raw)

    def _run(self, func, *args) -> Future | object:
        if self._pool is None:
            return func(*args)
        future = self._pool.submit(func, *args)
        self._pending.append(future)
        return future

    def _emit(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._run(self._hash.update, data)

    def _drain(self) -> None:
        for future in self._pending:
            future.result()
        self._pending.clear()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        entry = self.entries[self._next]
        if entry.name != name or tuple(tensor.shape) != entry.shape or dtype_name(tensor.dtype) != entry.dtype:
            raise RuntimeError(f"writer got {name} {dtype_name(tensor.dtype)}{tuple(tensor.shape)}, "
                               f"planned {entry.name} {entry.dtype}{entry.shape}")
        self._drain()  # the previous tensor's hashes: the bound on memory
        data = tensor_bytes(tensor)
        self.tensor_hashes[name] = self._run(sha256_bytes, data)
        self._emit(data)
        self._next += 1

    def finish(self) -> tuple[str, int, dict[str, str]]:
        """Flush and rename into place; returns (file sha256, size, tensor sha256s).

        No fsync here: the kernel writes back while the next shard is computed, and the converter
        syncs every file once before the final rename. A shard torn by a power cut before that is
        caught on --resume, which re-hashes each finished shard against the journal."""
        if self._next != len(self.entries):
            raise RuntimeError(f"{self.path}: {len(self.entries) - self._next} planned tensors were not written")
        self._drain()
        self._file.flush()
        size = self._file.tell()
        self._file.close()
        os.replace(self.tmp, self.path)
        hashes = {k: (v.result() if isinstance(v, Future) else v) for k, v in self.tensor_hashes.items()}
        return self._hash.hexdigest(), size, hashes

    def abort(self) -> None:
        self._drain()
        self._file.close()
        self.tmp.unlink(missing_ok=True)

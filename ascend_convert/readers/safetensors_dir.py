"""Safetensors checkpoints: one file, several files, or shards with `model.safetensors.index.json`."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ascend_common.errors import UserError

from ..dtypes import FROM_SAFETENSORS_CODE, TORCH_DTYPES
from ..layout_names import HF_INDEX_NAME
from .base import (
    CheckpointReader,
    TensorInfo,
    check_duplicates,
    load_index,
    read_config,
)
from .experts import part_span
from .fp8_blocks import FP8, dequantize, present_fp8

INDEX = HF_INDEX_NAME


def read_header(path: Path) -> tuple[dict, int]:
    """The JSON header and where the data starts (validated by safetensors itself first: a
    truncated or corrupt file fails here, before anything is written)."""
    try:
        with safe_open(str(path), framework="pt"):
            pass
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            return json.loads(f.read(length)), 8 + length
    except (SafetensorError, OSError, ValueError, struct.error) as exc:
        raise UserError(f"{path}: not a valid safetensors file ({exc})") from None


def read_into(f, offset: int, nbytes: int) -> torch.Tensor:
    """`nbytes` at `offset` into a fresh buffer. Plain reads, not mmap: a mapped shard's pages count
    as this process's memory until it is unmapped, so peak RSS would grow with the shard size."""
    buf = torch.empty(nbytes, dtype=torch.uint8)
    view = memoryview(buf.numpy()) if nbytes else memoryview(b"")
    f.seek(offset)
    done = 0
    while done < nbytes:
        n = f.readinto(view[done:])
        if not n:
            raise EOFError(f"{nbytes - done} bytes missing at offset {offset + done}")
        done += n
    return buf


class SafetensorsReader(CheckpointReader):
    format = "safetensors"

    def __init__(self, root: Path, files: list[Path]) -> None:
        super().__init__(root)
        self._config = read_config(root)
        self._root = root.resolve()
        index = load_index(root, INDEX) if (root / INDEX).is_file() else None
        if index is not None:
            files = {(root / shard) for shard in index.values()}
        self._files = sorted(p.resolve() for p in files)
        self._open: tuple[str, object] | None = None
        self._spans: dict[str, tuple[int, int]] = {}  # tensor → (absolute offset, nbytes)
        self._shapes: dict[str, tuple[int, ...]] = {}  # stored tensor → its shape
        seen: dict[str, str] = {}
        infos: list[tuple[str, int, TensorInfo]] = []
        for path in self._files:
            rel = str(path.relative_to(self._root))
            header, data_start = read_header(path)
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                check_duplicates(seen, name, rel)
                if index is not None and name not in index:
                    raise UserError(f"{path}: holds tensor {name}, which {INDEX} does not list")
                if index is not None and (root / index[name]).resolve() != path:
                    raise UserError(f"tensor {name} is stored twice: in {index[name]} and in {rel}")
                dtype = FROM_SAFETENSORS_CODE.get(entry["dtype"])
                if dtype is None:
                    raise UserError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
                info = TensorInfo(name, dtype, tuple(entry["shape"]), rel, dtype)
                begin, end = entry["data_offsets"]
                self._spans[name] = (data_start + begin, end - begin)
                self._shapes[name] = info.shape
                infos.append((rel, begin, info))
        if index is not None:
            for name, shard in index.items():
                if name not in seen:
                    raise UserError(f"{root / INDEX}: lists tensor {name} in {shard}, but that file does not hold it")
        ordered = [info for _, _, info in sorted(infos, key=lambda t: (t[0], t[1]))]
        self._infos, self._fp8_scales, self._fp8_block = present_fp8(ordered, self._config, root)

    def config(self) -> dict:
        return self._config

    def tensors(self) -> list[TensorInfo]:
        return self.presented(self._infos)

    def weight_files(self) -> list[Path]:
        return list(self._files)

    def load(self, info: TensorInfo) -> torch.Tensor:
        scale = self._fp8_scales.get(info.name)
        if scale is not None:  # block-FP8: the stored fp8 weight times its per-block scales
            stored = replace(info, dtype=FP8, transforms=())
            return dequantize(self._read(stored), self._read(scale), self._fp8_block)
        return self._read(info)

    def _read(self, info: TensorInfo) -> torch.Tensor:
        if self._open is None or self._open[0] != info.file:
            self.close()  # the converter reads files in order: one open file at a time
            self._open = (info.file, open(self._root / info.file, "rb", buffering=0))
        offset, nbytes = self._spans[info.stored_name]
        if info.stored is not None and info.stored.expert is not None:  # one expert's rows: only their bytes
            offset, nbytes = part_span(offset, self._shapes[info.stored.name],
                                       TORCH_DTYPES[info.dtype].itemsize, info.stored)
        try:
            raw = read_into(self._open[1], offset, nbytes)
        except (OSError, EOFError) as exc:
            raise UserError(f"{self._root / info.file}: cannot read tensor {info.stored_name} ({exc})") from None
        return raw.view(TORCH_DTYPES[info.dtype]).reshape(info.shape)

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None

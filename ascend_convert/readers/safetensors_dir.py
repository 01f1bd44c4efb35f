"""Safetensors checkpoints: one file, several files, or shards with `model.safetensors.index.json`."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..dtypes import FROM_SAFETENSORS_CODE
from ..errors import UserError
from .base import CheckpointReader, TensorInfo, check_duplicates, load_index, read_config

INDEX = "model.safetensors.index.json"


def read_header(path: Path) -> dict:
    """The JSON header (validated by safetensors itself first: a truncated file fails here)."""
    try:
        with safe_open(str(path), framework="pt"):
            pass
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            return json.loads(f.read(length))
    except (SafetensorError, OSError, ValueError, struct.error) as exc:
        raise UserError(f"{path}: not a valid safetensors file ({exc})") from None


class SafetensorsReader(CheckpointReader):
    format = "safetensors"

    def __init__(self, root: Path, files: list[Path]) -> None:
        super().__init__(root)
        self._config = read_config(root)
        self._files = files
        self._handles: dict[str, object] = {}
        index = load_index(root, INDEX) if (root / INDEX).is_file() else None
        if index is not None:
            self._files = sorted({(root / shard).resolve() for shard in index.values()})
        seen: dict[str, str] = {}
        infos: list[tuple[str, int, TensorInfo]] = []
        for path in self._files:
            rel = self._rel(path)
            for name, entry in read_header(path).items():
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
                infos.append((rel, entry["data_offsets"][0], info))
        if index is not None:
            for name, shard in index.items():
                if name not in seen:
                    raise UserError(f"{root / INDEX}: lists tensor {name} in {shard}, but that file does not hold it")
        self._infos = [info for _, _, info in sorted(infos, key=lambda t: (t[0], t[1]))]

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.root.resolve())) if path.is_absolute() else str(path)

    def config(self) -> dict:
        return self._config

    def tensors(self) -> list[TensorInfo]:
        return self._infos

    def weight_files(self) -> list[Path]:
        return [self.root.resolve() / self._rel(p) for p in self._files]

    def load(self, info: TensorInfo) -> torch.Tensor:
        handle = self._handles.get(info.file)
        if handle is None:
            # Only the current file stays open: the converter reads files in order.
            self.close()
            handle = self._handles[info.file] = safe_open(str(self.root.resolve() / info.file), framework="pt")
        try:
            return handle.get_tensor(info.name)
        except SafetensorError as exc:
            raise UserError(f"{self.root / info.file}: cannot read tensor {info.name} ({exc})") from None

    def close(self) -> None:
        self._handles.clear()

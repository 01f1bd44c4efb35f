"""`pytorch_model*.bin` checkpoints, read with `torch.load(weights_only=True)`: a pickle that would
build anything but tensors and plain containers is refused, never executed."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ascend_common.errors import UserError, first_line

from ..dtypes import dtype_name
from .base import (
    CheckpointReader,
    TensorInfo,
    check_duplicates,
    load_index,
    read_config,
)

INDEX = "pytorch_model.bin.index.json"


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # the legacy (non-zip) format cannot be mapped; read it whole
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"{path}: refused to unpickle: it holds more than tensors, and weights_only "
                        f"loading never runs a pickle's code ({first_line(exc)})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: expected a dict of tensors (a state_dict)")
    return obj


class TorchBinReader(CheckpointReader):
    format = "pytorch_bin"

    def __init__(self, root: Path, files: list[Path]) -> None:
        super().__init__(root)
        self._config = read_config(root)
        index = load_index(root, INDEX) if (root / INDEX).is_file() else None
        if index is not None:
            files = sorted({(root / shard).resolve() for shard in index.values()})
        self._files = files
        self._state: tuple[str, dict[str, torch.Tensor]] | None = None
        seen: dict[str, str] = {}
        self._infos: list[TensorInfo] = []
        for path in files:
            rel = str(path.resolve().relative_to(root.resolve()))
            state = load_state_dict(path)  # mmap'd: metadata only, no tensor data is read here
            for name, tensor in state.items():
                check_duplicates(seen, name, rel)
                if index is not None and index.get(name) is not None and (root / index[name]).resolve() != path.resolve():
                    raise UserError(f"tensor {name} is stored twice: in {index[name]} and in {rel}")
                dtype = dtype_name(tensor.dtype)
                self._infos.append(TensorInfo(name, dtype, tuple(tensor.shape), rel, dtype))
            del state
        if index is not None:
            for name, shard in index.items():
                if name not in seen:
                    raise UserError(f"{root / INDEX}: lists tensor {name} in {shard}, but that file does not hold it")

    def config(self) -> dict:
        return self._config

    def tensors(self) -> list[TensorInfo]:
        return self.presented(self._infos)

    def weight_files(self) -> list[Path]:
        return [p.resolve() for p in self._files]

    def load(self, info: TensorInfo) -> torch.Tensor:
        if self._state is None or self._state[0] != info.file:
            self._state = (info.file, load_state_dict(self.root.resolve() / info.file))
        tensor = self._state[1][info.stored_name]
        part = info.stored
        if part is not None and part.expert is not None:  # one expert's rows of a mapped 3-D tensor
            tensor = tensor[part.expert, part.rows[0]:part.rows[1]]
        return tensor.contiguous()

    def close(self) -> None:
        self._state = None

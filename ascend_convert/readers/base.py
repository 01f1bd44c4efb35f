"""What every checkpoint reader gives the converter: tensor metadata first, data one tensor at a time.

Metadata (name, dtype, shape) is known before any data is read, so the writer can plan shards and
write safetensors headers up front, then stream tensors through with one in memory at a time.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ascend_common.errors import UserError

from ..layout_names import CONFIG_NAME, HF_INDEX_NAME, MANIFEST_NAME

if TYPE_CHECKING:  # torch only for annotations: preflight reads configs and indexes without it
    import torch

    from ..arch import ArchSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx")
INDEX_NAMES = (HF_INDEX_NAME, "pytorch_model.bin.index.json")
NEVER_COPIED = frozenset({CONFIG_NAME, MANIFEST_NAME, *INDEX_NAMES})


@dataclass(frozen=True)
class StoredPart:
    """Where a presented tensor's values are stored when that is not a tensor of its own name: the
    stored tensor `name` (an alias), or, for one expert of a fused 3-D experts tensor, its block
    `expert` (index along dim 0) and the `rows` [start, stop) of that block (see experts.py)."""

    name: str
    expert: int | None = None
    rows: tuple[int, int] | None = None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # torch dtype name of the values the reader returns
    shape: tuple[int, ...]
    file: str  # source file, relative to the checkpoint root
    stored_as: str  # what the file holds (`bfloat16`, or a GGUF type such as `Q4_1`)
    #: What the reader does to the stored values before `load` returns them, in the manifest's words
    #: (`dequantize:Q4_1`, `unpermute_qk:gguf`): the converter records them, it does not redo them.
    transforms: tuple[str, ...] = ()
    #: Set when the values are stored under another name or are part of a stored tensor.
    stored: StoredPart | None = None

    @property
    def stored_name(self) -> str:
        """The name of the tensor in the file that holds the values."""
        return self.name if self.stored is None else self.stored.name

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class CheckpointReader(ABC):
    """One source checkpoint. Subclasses validate everything they can at open time.

    `spec` is the model family's spec: a GGUF reader needs it to name its tensors, the others get it
    from `open_checkpoint`, so whoever holds a reader holds its spec."""

    format: str = ""
    spec: ArchSpec

    def __init__(self, root: Path) -> None:
        self.root = root

    @abstractmethod
    def config(self) -> dict: ...

    @abstractmethod
    def tensors(self) -> list[TensorInfo]:
        """Every tensor, in the order that reads the files sequentially."""

    def presented(self, stored: list[TensorInfo]) -> list[TensorInfo]:
        """The stored tensors as the family's Hub names present them (fused experts split per expert,
        aliases renamed: experts.py), computed once the reader knows its spec."""
        cached = self.__dict__.get("_presented")
        if cached is None:
            spec = getattr(self, "spec", None)
            if spec is None:
                return stored
            from .experts import present_experts

            cached = self.__dict__["_presented"] = present_experts(stored, spec, self.config(), self.root)
        return cached

    @abstractmethod
    def load(self, info: TensorInfo) -> torch.Tensor:
        """The tensor's values (CPU, contiguous); only this tensor is materialised."""

    @abstractmethod
    def weight_files(self) -> list[Path]:
        """Files whose bytes the manifest records as the source."""

    def write_side_files(self, out_dir: Path) -> list[str]:
        """Copy (or, for GGUF, generate) tokenizer, generation config, chat template, remote code."""
        import shutil

        written = []
        for entry in sorted(self.root.iterdir()):
            if (entry.is_file() and not entry.name.startswith(".") and entry.name not in NEVER_COPIED
                    and not entry.name.endswith(WEIGHT_SUFFIXES)):
                shutil.copyfile(entry, out_dir / entry.name)
                written.append(entry.name)
        return written

    def close(self) -> None:  # noqa: B027 - most readers hold nothing open
        """Release open files; the reader can still be used (it reopens lazily)."""


def read_config(root: Path) -> dict:
    path = root / "config.json"
    if not path.is_file():
        raise UserError(f"{path}: missing (a Hugging Face checkpoint needs its config.json)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: invalid config (expected a JSON object, got {type(config).__name__})")
    return config


def load_index(root: Path, index_name: str) -> dict[str, str]:
    """weight_map of an index file, with every shard path checked to stay inside the checkpoint."""
    path = root / index_name
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: invalid index ({exc!s})") from None
    real_root = root.resolve()
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise UserError(f"{path}: tensor {tensor} maps to an invalid shard name {shard!r}")
        target = (root / shard).resolve()
        if Path(shard).is_absolute() or real_root not in target.parents:
            raise UserError(f"{path}: shard path {shard!r} for tensor {tensor} leaves the checkpoint directory")
        if not target.is_file():
            raise UserError(f"{path}: shard {shard} (for tensor {tensor}) is missing")
    return weight_map


def check_duplicates(seen: dict[str, str], name: str, file: str) -> None:
    if name in seen:
        raise UserError(f"tensor {name} is stored twice: in {seen[name]} and in {file}")
    seen[name] = file

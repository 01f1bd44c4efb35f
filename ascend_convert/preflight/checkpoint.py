"""The checkpoint as a loader sees it, from metadata alone: `config.json`, the quantization
description, and every weight file's tensors (dtype, shape, file) from the safetensors headers.

Reading it applies the file rules (`files.*`): weight files where the engine looks for them, valid
headers, index files that agree with the shards, no tensor stored twice. A directory that cannot be
checked at all (no `config.json`, or not a directory) is a UserError: exit 2, not a finding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ascend_common.errors import UserError

from ..layout_names import RANK_FILE_GLOB
from ..readers.base import read_config
from .findings import WARNING, Collector
from .headers import HeaderError, TensorHeader, read_header, read_index


@dataclass
class Checkpoint:
    root: Path
    config: dict
    tensors: dict[str, TensorHeader] = field(default_factory=dict)
    weight_files: list[str] = field(default_factory=list)
    #: the quantization description (None: no file of the engine's name), and where it was read
    description: dict | None = None
    description_file: str | None = None
    #: tensors stored in more than one file (reported once, as files.duplicate)
    duplicates: set[str] = field(default_factory=set)

    @property
    def model_type(self) -> str:
        model_type = self.config.get("model_type")
        return model_type if isinstance(model_type, str) else ""

    def text_config(self) -> dict:
        """The language model's config: a multimodal model's `text_config`, else the config itself."""
        inner = self.config.get("text_config")
        return inner if isinstance(inner, dict) else self.config


def _config(root: Path) -> dict:
    if not root.is_dir():
        raise UserError(f"{root}: not a directory (preflight checks a checkpoint directory)")
    return read_config(root)


def inside(root: Path, relative: str) -> bool:
    """Whether `relative` names a path inside `root` (no absolute path, no `..` out, no symlink out)."""
    if Path(relative).is_absolute():
        return False
    real = root.resolve()
    target = (root / relative).resolve()
    return target == real or real in target.parents


def load_checkpoint(root: Path, facts: dict, out: Collector) -> Checkpoint:
    """Read the directory the way the engine does (`facts["weights"]`: the file pattern it globs at
    the top level and the index it filters them by), reporting file problems as findings."""
    ckpt = Checkpoint(root, _config(root))
    weights = facts["weights"]
    candidates = sorted(p.name for p in root.glob(weights["glob"]) if p.is_file())
    if not candidates:
        others = sorted({str(p.relative_to(root)) for pattern in (RANK_FILE_GLOB, "*.bin", "*.pt", "*.gguf")
                         for p in root.glob(pattern)})
        hint = (f"; found {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}"
                + (" (ascendkit's packed layout, read by ascendkit serve only)" if any("/rank" in o for o in others)
                   else "") if others else "")
        out.add("files.weights", str(root), f"no {weights['glob']} at the top of the directory{hint}")
        return ckpt
    index_name = weights["index"]
    filtered = candidates
    if (root / index_name).is_file():
        try:
            listed = set(read_index(root / index_name).values())
        except HeaderError as exc:
            out.add("files.index", index_name, str(exc))
            listed = set(candidates)
        filtered = [c for c in candidates if c in listed]
        for skipped in sorted(set(candidates) - set(filtered)):
            out.add("files.index", skipped, f"not listed in {index_name}: the engine skips this file", WARNING)
    seen: dict[str, str] = {}
    for rel in filtered:
        try:
            tensors = read_header(root / rel, rel)
        except HeaderError as exc:
            out.add("files.header", rel, str(exc))
            continue
        ckpt.weight_files.append(rel)
        for t in tensors:
            if t.name in seen:
                out.add("files.duplicate", t.name, f"stored in {seen[t.name]} and in {rel}: which one loads "
                                                   "depends on the order the files are read")
                ckpt.duplicates.add(t.name)
                continue
            seen[t.name] = rel
            ckpt.tensors[t.name] = t
    for index in sorted(root.glob("*.index.json")):
        _check_index(ckpt, index.name, out)
    return ckpt


def _check_index(ckpt: Checkpoint, name: str, out: Collector) -> None:
    """An index (HF's or the quantized layout's) and the shards agree both ways; no path leaves the directory."""
    try:
        weight_map = read_index(ckpt.root / name)
    except HeaderError as exc:
        out.add("files.index", name, str(exc))
        return
    bad_files: set[str] = set()
    outside = {shard for shard in set(weight_map.values()) if not inside(ckpt.root, shard)}  # once per shard
    for tensor, shard in weight_map.items():
        if shard in bad_files or tensor in ckpt.duplicates:
            continue
        if shard in outside:
            out.add("files.index", name, f"shard path {shard!r} (tensor {tensor}) leaves the checkpoint directory")
            bad_files.add(shard)
        elif not (ckpt.root / shard).is_file():
            out.add("files.index", name, f"lists {shard} (tensor {tensor}), which is missing")
            bad_files.add(shard)
        elif tensor not in ckpt.tensors and shard in ckpt.weight_files:
            out.add("files.index", name, f"lists tensor {tensor} in {shard}, which does not hold it")
        elif tensor in ckpt.tensors and ckpt.tensors[tensor].file != shard:
            out.add("files.index", name, f"lists tensor {tensor} in {shard}, but it is in {ckpt.tensors[tensor].file}")
    indexed_files = set(weight_map.values())
    for tensor, header in ckpt.tensors.items():
        if header.file in indexed_files and tensor not in weight_map:
            out.add("files.index", name, f"does not list tensor {tensor} (in {header.file})")


def load_description(ckpt: Checkpoint, facts: dict, out: Collector) -> None:
    """The quantization description under the engine's file name; a file of another name that looks
    like one (an older msModelSlim's) is named in the finding, since the engine does not read it."""
    name = facts["description"]["file"]
    path = ckpt.root / name
    if not path.is_file():
        return
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        out.add("quant.description", name, f"not readable JSON ({exc})")
        return
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        out.add("quant.description", name, "not a JSON object of tensor name -> quant type")
        return
    ckpt.description, ckpt.description_file = data, name

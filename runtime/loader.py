"""Load a checkpoint into the runtime's decoder: the Ascend layout `convert` writes, or any plain
Hugging Face directory (safetensors or `pytorch_model*.bin`) or GGUF file that `convert` reads.

Weights go through the canonical view of `ascend_convert.arch` (unfused, Llama-named, NormHead
applied), then q/k/v and gate/up are fused here, at load, into the runtime's `qkv` and `gate_up`.
One tensor is read at a time; nothing is unpickled (readers use `weights_only=True`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ascend_convert.arch import ArchSpec, canonical_tensors, find_spec
from ascend_convert.errors import UserError
from ascend_convert.quant_layout import DESCRIPTION_NAME
from ascend_convert.readers import CheckpointReader, open_checkpoint

from .model_config import ModelConfig, model_config

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# canonical name (per layer) → (runtime parameter, which slice of a fused one)
_FUSED = {
    "self_attn.q_proj.weight": ("self_attn.qkv.weight", 0), "self_attn.k_proj.weight": ("self_attn.qkv.weight", 1),
    "self_attn.v_proj.weight": ("self_attn.qkv.weight", 2), "self_attn.q_proj.bias": ("self_attn.qkv.bias", 0),
    "self_attn.k_proj.bias": ("self_attn.qkv.bias", 1), "self_attn.v_proj.bias": ("self_attn.qkv.bias", 2),
    "mlp.gate_proj.weight": ("mlp.gate_up.weight", 0), "mlp.up_proj.weight": ("mlp.gate_up.weight", 1),
    "mlp.gate_proj.bias": ("mlp.gate_up.bias", 0), "mlp.up_proj.bias": ("mlp.gate_up.bias", 1),
}
_RENAMED = {"self_attn.o_proj.weight": "self_attn.o.weight", "self_attn.o_proj.bias": "self_attn.o.bias",
            "mlp.down_proj.weight": "mlp.down.weight", "mlp.down_proj.bias": "mlp.down.bias"}


@dataclass
class Checkpoint:
    """An opened checkpoint: its reader, family spec and the runtime's config of it."""

    path: Path
    reader: CheckpointReader
    spec: ArchSpec
    config: ModelConfig
    raw_config: dict


def open_model(path: str | Path) -> Checkpoint:
    path = Path(path)
    if (path / DESCRIPTION_NAME).is_file():
        raise UserError(f"{path}: msModelSlim's quantized layout ({DESCRIPTION_NAME}); the runtime does not "
                        f"serve quantized weights yet: convert without --quantize to serve it here")
    reader = open_checkpoint(path)
    raw = reader.config()
    where = str(path / "config.json") if path.is_dir() else str(path)
    spec = getattr(reader, "spec", None) or find_spec(raw, where=where)
    names = set()
    cfg = spec.canonical_config(raw, where)
    for info in reader.tensors():
        if spec.is_ignored(info.name):
            continue
        found = spec.role_of(info.name)
        if found is None:
            raise UserError(f"{reader.root}: tensor {info.name} is not part of a {spec.family} model")
        role, layer = found
        names.update(name for name, _ in _names_only(spec, cfg, role, layer))
    model_dir = path if path.is_dir() else path.parent
    return Checkpoint(path, reader, spec, model_config(raw, spec, names, model_dir, where), raw)


def _names_only(spec: ArchSpec, cfg: dict, role: str, layer: int | None) -> Iterator[tuple[str, None]]:
    from ascend_convert.arch import FUSED_ROLES, canonical_name

    for r in FUSED_ROLES.get(role, (role,)):
        yield canonical_name(r, layer), None


def runtime_tensors(ckpt: Checkpoint) -> Iterator[tuple[str, torch.Tensor]]:
    """(canonical name, tensor) of every weight, one source tensor in memory at a time."""
    cfg = ckpt.spec.canonical_config(ckpt.raw_config)
    for info in ckpt.reader.tensors():
        if ckpt.spec.is_ignored(info.name):
            continue
        role, layer = ckpt.spec.role_of(info.name)
        yield from canonical_tensors(ckpt.spec, cfg, role, layer, ckpt.reader.load(info))


def parameter_for(name: str) -> tuple[str, int | None]:
    """The runtime parameter a canonical tensor fills, and its part index if the parameter is fused."""
    m = _LAYER.match(name)
    if m is None:
        return name, None
    layer, rest = m.groups()
    if rest in _FUSED:
        target, part = _FUSED[rest]
        return f"model.layers.{layer}.{target}", part
    return f"model.layers.{layer}.{_RENAMED.get(rest, rest)}", None


def load_weights(model: torch.nn.Module, ckpt: Checkpoint) -> None:
    """Copy every weight into `model` (already on its device and dtype), fusing as it goes, and
    check nothing is missing or left over."""
    params = dict(model.named_parameters())
    filled: dict[str, set[int | None]] = {}
    for name, tensor in runtime_tensors(ckpt):
        target, part = parameter_for(name)
        param = params.get(target)
        if param is None:
            raise UserError(f"{ckpt.path}: tensor {name} has no place in the runtime's {ckpt.config.family} model")
        with torch.no_grad():
            dest = param if part is None else param.narrow(0, *model.fused_slice(target, part))
            if tuple(dest.shape) != tuple(tensor.shape):
                raise UserError(f"{ckpt.path}: tensor {name} has shape {list(tensor.shape)}, "
                                f"the model expects {list(dest.shape)}")
            dest.copy_(tensor)
        filled.setdefault(target, set()).add(part)
    if ckpt.config.tie_word_embeddings:
        filled.setdefault("lm_head.weight", {None})
    missing = [n for n in params if n not in filled or not model.fully_filled(n, filled[n])]
    if missing:
        raise UserError(f"{ckpt.path}: weights missing for {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}")

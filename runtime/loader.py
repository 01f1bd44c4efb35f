"""Load a checkpoint into the runtime's decoder: the Ascend layout `convert` writes, or any plain
Hugging Face directory (safetensors or `pytorch_model*.bin`) or GGUF file that `convert` reads.

Weights go through the canonical view of `ascend_convert.arch` (unfused, Llama-named, NormHead
applied), then q/k/v and gate/up are fused here, at load, into the runtime's `qkv` and `gate_up`.
One tensor is read at a time; nothing is unpickled (readers use `weights_only=True`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ascend_convert.arch import (
    FUSED_ROLES,
    ArchSpec,
    canonical_name,
    canonical_tensors,
    find_spec,
)
from ascend_convert.errors import UserError
from ascend_convert.quant_layout import DESCRIPTION_NAME, LINEAR_ROLES
from ascend_convert.quantize import loaded_deq_scale
from ascend_convert.readers import CheckpointReader, open_checkpoint

from .model import CausalLM
from .model_config import ModelConfig, model_config
from .quant_linear import PER_TENSOR, QUANT_SUFFIXES, QuantScheme

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(\w+)$")
# canonical module (per layer) → (runtime module, which slice of a fused one); its tensors (weight,
# bias, and a quantized layer's scales) follow it
_MODULES = {
    "self_attn.q_proj": ("self_attn.qkv", 0), "self_attn.k_proj": ("self_attn.qkv", 1),
    "self_attn.v_proj": ("self_attn.qkv", 2), "self_attn.o_proj": ("self_attn.o", None),
    "mlp.gate_proj": ("mlp.gate_up", 0), "mlp.up_proj": ("mlp.gate_up", 1), "mlp.down_proj": ("mlp.down", None),
}


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
    scheme = QuantScheme.read(path) if path.is_dir() else None
    reader = open_checkpoint(path)
    raw = reader.config()
    where = str(path / "config.json") if path.is_dir() else str(path)
    spec = getattr(reader, "spec", None) or find_spec(raw, where=where)
    names = set()
    cfg = spec.canonical_config(raw, where)
    for info in reader.tensors():
        if spec.is_ignored(info.name) or (scheme is not None and _quant_part(info.name) is not None):
            continue
        found = spec.role_of(info.name)
        if found is None:
            raise UserError(f"{reader.root}: tensor {info.name} is not part of a {spec.family} model")
        role, layer = found
        names.update(name for name, _ in _names_only(spec, cfg, role, layer))
    model_dir = path if path.is_dir() else path.parent
    if scheme is not None:
        scheme = replace(scheme, float_modules=_float_modules(path, spec, cfg, scheme))
    config = replace(model_config(raw, spec, names, model_dir, where), quant=scheme)
    return Checkpoint(path, reader, spec, config, raw)


def _float_modules(path: Path, spec: ArchSpec, cfg: dict, scheme: QuantScheme) -> frozenset[str]:
    """The runtime's linear modules whose weights the description leaves FLOAT (msModelSlim's
    disable_names; `convert --keep-float`). A fused module must be float or int8 as a whole."""
    parts: dict[str, set[int | None]] = {}
    for name in scheme.float_names:
        found = spec.role_of(name) if name.endswith(".weight") else None
        if found is None or found[0] not in LINEAR_ROLES:
            continue
        role, layer = found
        for r in FUSED_ROLES.get(role, (role,)):
            target, part = parameter_for(canonical_name(r, layer))
            parts.setdefault(target.removesuffix(".weight"), set()).add(part)
    for module, found_parts in parts.items():
        if not CausalLM.fully_filled(f"{module}.weight", found_parts):
            raise UserError(f"{path}: {DESCRIPTION_NAME} leaves only some parts of {module} FLOAT; the runtime "
                            f"fuses them into one layer, which must be all float or all {scheme.kind}")
    return frozenset(parts)


def _quant_part(name: str) -> tuple[str, str] | None:
    """`(weight name, suffix)` for a quantized layer's scale/offset/... tensor, else None."""
    stem, _, suffix = name.rpartition(".")
    return (f"{stem}.weight", suffix) if suffix in QUANT_SUFFIXES else None


def _names_only(spec: ArchSpec, cfg: dict, role: str, layer: int | None) -> Iterator[tuple[str, None]]:
    for r in FUSED_ROLES.get(role, (role,)):
        yield canonical_name(r, layer), None


def runtime_tensors(ckpt: Checkpoint) -> Iterator[tuple[str, torch.Tensor]]:
    """(canonical name, tensor) of every weight, one source tensor in memory at a time."""
    cfg = ckpt.spec.canonical_config(ckpt.raw_config)
    for info in ckpt.reader.tensors():
        if ckpt.spec.is_ignored(info.name):
            continue
        part = _quant_part(info.name) if ckpt.config.quant is not None else None
        if part is None:
            role, layer = ckpt.spec.role_of(info.name)
            yield from canonical_tensors(ckpt.spec, cfg, role, layer, ckpt.reader.load(info))
            continue
        weight, suffix = part
        found = ckpt.spec.role_of(weight)
        if found is None:
            raise UserError(f"{ckpt.path}: tensor {info.name} belongs to no layer of a {ckpt.spec.family} model")
        role, layer = found
        tensor = ckpt.reader.load(info)
        if suffix == "deq_scale":
            tensor = loaded_deq_scale(tensor)  # an fp16 model stores the fp32 bits in an int64
        if suffix in PER_TENSOR:  # one value for the layer: every fused part gets it
            names = [canonical_name(r, layer) for r in FUSED_ROLES.get(role, (role,))]
            pieces = [(n, tensor) for n in names]
        else:
            pieces = canonical_tensors(ckpt.spec, cfg, role, layer, tensor)
        for name, piece in pieces:
            yield f"{name.removesuffix('.weight')}.{suffix}", piece


def parameter_for(name: str) -> tuple[str, int | None]:
    """The runtime parameter a canonical tensor fills, and its part index if the parameter is fused."""
    m = _LAYER.match(name)
    if m is None or m.group(2) not in _MODULES:
        return name, None
    layer, module, tensor = m.groups()
    target, part = _MODULES[module]
    return f"model.layers.{layer}.{target}.{tensor}", part


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
            per_layer = target.rsplit(".", 1)[1] in PER_TENSOR
            dest = param if part is None or per_layer else param.narrow(0, *model.fused_slice(target, part))
            if per_layer and filled.get(target) and not torch.equal(dest, tensor.to(dest.dtype)):
                raise UserError(f"{ckpt.path}: the parts of {target.rsplit('.', 1)[0]} have different "
                                f"{target.rsplit('.', 1)[1]} values; the runtime fuses them into one layer")
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

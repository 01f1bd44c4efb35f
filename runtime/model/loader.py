"""Load a checkpoint into the runtime's decoder: the Ascend layout `convert` writes, or any plain
Hugging Face directory (safetensors or `pytorch_model*.bin`) or GGUF file that `convert` reads.

Weights go through the canonical view of `ascend_convert.arch` (unfused, Llama-named, NormHead
applied), then q/k/v and gate/up are fused here, at load, into the runtime's `qkv` and `gate_up`.
One tensor is read at a time; nothing is unpickled (readers use `weights_only=True`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ascend_common.errors import UserError
from ascend_convert.arch import (
    ArchSpec,
    canonical_names,
    canonical_tensors,
    find_spec,
    is_mtp_layer,
)
from ascend_convert.layout_names import (
    CONFIG_NAME,
    QUANT_DESCRIPTION_NAME,
    RANK_FILE_GLOB,
    parse_rank_file,
)
from ascend_convert.quant_layout import FLOAT, QUANTIZABLE_ROLES, check_description
from ascend_convert.quantize import loaded_deq_scale
from ascend_convert.readers import CheckpointReader, open_checkpoint, read_config
from ascend_convert.tp_layout import canonical_of, from_nz, parameter_for, rank_tensors
from runtime.layers.quant_linear import PER_TENSOR, QUANT_SUFFIXES, QuantScheme
from runtime.model.config import ModelConfig, model_config, tp_config
from runtime.model.decoder import CausalLM


@dataclass
class Checkpoint:
    """An opened checkpoint: its reader, family spec and the runtime's config of it."""

    path: Path
    reader: CheckpointReader | None  # None for a packed layout: its rank files are read directly
    spec: ArchSpec
    config: ModelConfig
    raw_config: dict
    packed: dict[tuple[int, int], Path] = field(default_factory=dict)  # (tp size, rank) -> rank file

    def with_tensor_parallel(self, size: int, rank: int) -> Checkpoint:
        """This checkpoint as rank `rank` of `size` sees it (its heads, KV heads, slices)."""
        if size == 1 and not self.packed:
            return self
        if self.config.quant is not None:
            raise UserError(f"{self.path}: tensor parallel serves float checkpoints; this one is "
                            f"{self.config.quant.kind} (serve it with tensor_parallel_size=1)")
        sizes = sorted({n for n, _ in self.packed})
        if self.packed and size not in sizes:
            raise UserError(f"{self.path}: packed for tensor_parallel_size {', '.join(map(str, sizes))}, "
                            f"not {size}")
        return replace(self, config=tp_config(self.config, size, rank))


def open_model(path: str | Path) -> Checkpoint:
    path = Path(path)
    packed = _packed_files(path)
    if packed:
        return _open_packed(path, packed)
    scheme = QuantScheme.read(path) if path.is_dir() else None
    reader = open_checkpoint(path)
    raw, spec = reader.config(), reader.spec
    where = str(path / CONFIG_NAME) if path.is_dir() else str(path)
    names = set()
    cfg = spec.canonical_config(raw, where)
    for info in reader.tensors():
        if spec.is_ignored(info.name) or (scheme is not None and _quant_part(info.name) is not None):
            continue
        found = spec.role_of(info.name)
        if found is None:
            raise UserError(f"{reader.root}: tensor {info.name} is not part of a {spec.family} model")
        if is_mtp_layer(found, cfg):
            continue
        names.update(canonical_names(found))
    model_dir = path if path.is_dir() else path.parent
    if scheme is not None:
        scheme = replace(scheme, module_types=_module_types(path, spec, cfg, scheme))
    config = replace(model_config(raw, spec, names, model_dir, where), quant=scheme)
    return Checkpoint(path, reader, spec, config, raw)


def _packed_files(path: Path) -> dict[tuple[int, int], Path]:
    """The rank files (`layout_names.rank_file`) of a packed directory that holds no unpacked weights."""
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return {}
    found = {}
    for file in path.glob(RANK_FILE_GLOB):
        size_rank = parse_rank_file(file.relative_to(path).as_posix())
        if size_rank is not None:
            found[size_rank] = file
    return found


def _open_packed(path: Path, packed: dict[tuple[int, int], Path]) -> Checkpoint:
    from safetensors import safe_open

    raw = read_config(path)
    where = str(path / CONFIG_NAME)
    spec = find_spec(raw, where=where)
    with safe_open(str(packed[min(packed)]), framework="pt") as f:
        names = {canonical_of(key) for key in f.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
    return Checkpoint(path, None, spec, model_config(raw, spec, names, path, where), raw, packed)


def _module_types(path: Path, spec: ArchSpec, cfg: dict, scheme: QuantScheme) -> dict[str, str]:
    """Each runtime linear module's type from the description's weights (FLOAT: msModelSlim's
    disable_names, `convert --keep-float`). The description must be one vllm-ascend loads
    (`quant_layout.check_description`: fused parts, and all experts of a layer, in one type); a module
    the runtime fuses from parts must then be one type as a whole."""
    check_description(scheme.description, spec, str(path / QUANT_DESCRIPTION_NAME))
    parts: dict[str, dict[str, set[int | None]]] = {}
    for name, qtype in scheme.description.items():
        found = spec.role_of(name) if name.endswith(".weight") and isinstance(qtype, str) else None
        if found is not None and found.role == "embed" and qtype != FLOAT:
            raise UserError(f"{path}: {QUANT_DESCRIPTION_NAME} gives the embedding {name} {qtype}; an embedding is "
                            f"looked up in float (vllm-ascend's AscendEmbeddingMethod has no embedding()): make it "
                            f"FLOAT")
        if found is not None and found.role == "lm_head" and qtype != FLOAT and cfg["tie_word_embeddings"]:
            raise UserError(f"{path}: {QUANT_DESCRIPTION_NAME} gives {name} {qtype}, but config.json ties the head to "
                            f"the embedding: an int8 head is a head of its own (convert --quantize-lm-head writes "
                            f"tie_word_embeddings false)")
        head = found is not None and found.role == "lm_head" and qtype != FLOAT  # a float head is built float
        if found is None or not (found.role in QUANTIZABLE_ROLES or head) or is_mtp_layer(found, cfg):
            continue
        for canonical in canonical_names(found):
            target, part = parameter_for(canonical)
            parts.setdefault(target.removesuffix(".weight"), {}).setdefault(qtype, set()).add(part)
    types = {}
    for module, by_type in parts.items():
        qtype, found_parts = next(iter(by_type.items()))
        if len(by_type) > 1 or not CausalLM.fully_filled(f"{module}.weight", found_parts, cfg.get("num_experts") or 0):
            listed = " and ".join(sorted(by_type))
            raise UserError(f"{path}: {QUANT_DESCRIPTION_NAME} gives the parts of {module} {listed}; the runtime "
                            f"fuses them into one layer, which must be of one type")
        types[module] = qtype
    return types


def _quant_part(name: str) -> tuple[str, str] | None:
    """`(weight name, suffix)` for a quantized layer's scale/offset/... tensor, else None."""
    stem, _, suffix = name.rpartition(".")
    return (f"{stem}.weight", suffix) if suffix in QUANT_SUFFIXES else None


def runtime_tensors(ckpt: Checkpoint) -> Iterator[tuple[str, torch.Tensor]]:
    """(canonical name, tensor) of every weight, one source tensor in memory at a time."""
    cfg = ckpt.spec.canonical_config(ckpt.raw_config)
    for info in ckpt.reader.tensors():
        if ckpt.spec.is_ignored(info.name):
            continue
        part = _quant_part(info.name) if ckpt.config.quant is not None else None
        if part is None:
            found = ckpt.spec.role_of(info.name)
            if not is_mtp_layer(found, cfg):
                yield from canonical_tensors(ckpt.spec, cfg, found, ckpt.reader.load(info))
            continue
        weight, suffix = part
        found = ckpt.spec.role_of(weight)
        if found is None:
            raise UserError(f"{ckpt.path}: tensor {info.name} belongs to no layer of a {ckpt.spec.family} model")
        if is_mtp_layer(found, cfg):
            continue
        tensor = ckpt.reader.load(info)
        if suffix == "deq_scale":
            tensor = loaded_deq_scale(tensor)  # an fp16 model stores the fp32 bits in an int64
        if suffix in PER_TENSOR:  # one value for the layer: every fused part gets it
            pieces = [(n, tensor) for n in canonical_names(found)]
        else:
            pieces = canonical_tensors(ckpt.spec, cfg, found, tensor)
        for name, piece in pieces:
            yield f"{name.removesuffix('.weight')}.{suffix}", piece


def rank_weights(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """This rank's tensors under the runtime's names: its packed file (FRACTAL_NZ tiles turned back
    to ND), or the checkpoint split at load."""
    cfg = ckpt.config
    file = ckpt.packed.get((cfg.tp_size, cfg.tp_rank))
    if file is None:
        return rank_tensors(runtime_tensors(ckpt), cfg.tp, cfg.tp_rank)
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
        nd_shapes = json.loads(meta.get("nd_shapes", "{}"))
        names = list(f.keys())
        return {name: from_nz(f.get_tensor(name), tuple(nd_shapes[name])) if name in nd_shapes else f.get_tensor(name)
                for name in names}


def load_weights(model: torch.nn.Module, ckpt: Checkpoint) -> None:
    """Copy every weight into `model` (already on its device and dtype), fusing as it goes, and
    check nothing is missing or left over. Under tensor parallel, this rank's share only."""
    params = dict(model.named_parameters())
    filled: dict[str, set[int | None]] = {}
    if ckpt.config.tp is None:
        entries = ((name, *parameter_for(name), tensor) for name, tensor in runtime_tensors(ckpt))
    else:
        entries = ((name, name, None, tensor) for name, tensor in rank_weights(ckpt).items())
    for name, target, part, tensor in entries:
        param = params.get(target)
        if param is None:
            raise UserError(f"{ckpt.path}: tensor {name} has no place in the runtime's {ckpt.config.family} model")
        with torch.no_grad():
            per_layer = target.rsplit(".", 1)[1] in PER_TENSOR
            rows = param.flatten(0, 1) if param.dim() == 3 else param  # experts [E, out, in]: [E*out, in]
            dest = param if part is None or per_layer else rows.narrow(0, *model.fused_slice(target, part))
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
    whole = ckpt.config.tp is not None  # a rank's tensors come fused already
    experts = ckpt.config.num_experts
    missing = [n for n in params if n not in filled or not (whole or model.fully_filled(n, filled[n], experts))]
    if missing:
        raise UserError(f"{ckpt.path}: weights missing for {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}")

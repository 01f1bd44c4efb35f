"""What a conversion will write, decided from metadata before any tensor is read: every source
tensor's role, output dtype and shape (a quantized weight's int8 parts included), the shards they
fall into, and what was dropped. One plan type for every layout: the packed writer and `verify
--source` take the same `ConversionPlan` the default layout is written from."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ascend_common.errors import UserError
from ascend_common.soc import resolve_dtype

from .arch import (
    EXPERT_ROLES,
    FP32_ROLES,
    MTP_ROLES,
    ArchSpec,
    is_mtp_layer,
    load_spec_file,
    mtp_layer_count,
)
from .convert_options import ConvertOptions
from .dtypes import FLOAT_NAMES
from .layout_names import CONFIG_NAME, quant_shard_names, shard_names
from .quant_layout import QuantOptions, quantized_parts
from .readers import CheckpointReader, TensorInfo, open_checkpoint
from .readers.fp8_blocks import FP8_TRANSFORM
from .safetensors_writer import PlannedTensor
from .smoothing import Smoothing


@dataclass
class TensorJob:
    """One source tensor and what it becomes: `out` (its name, dtype and shape in the output), and
    `parts`, what is written for it: [out], or a quantized weight's int8 weight, scales and offsets."""

    info: TensorInfo
    out: PlannedTensor
    role: str
    layer: int | None
    expert: int | None = None
    parts: list[PlannedTensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.parts = self.parts or [self.out]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    @property
    def quantized(self) -> bool:
        return len(self.parts) > 1


@dataclass
class Shard:
    """One output file of the default (or quantized) layout and the jobs written into it, in order."""

    name: str
    jobs: list[TensorJob]

    @property
    def nbytes(self) -> int:
        return sum(j.nbytes for j in self.jobs)


@dataclass
class ConversionPlan:
    """Everything a conversion needs, fixed before the first byte is written (W8A8's calibration
    and smoothing are filled in once, before the work directory exists)."""

    src: Path
    out: Path
    reader: CheckpointReader
    spec: ArchSpec
    soc: str
    dtype: str
    source_dtype: str
    shards: list[Shard]
    dropped: list[str]
    options: ConvertOptions
    quant: QuantOptions | None = None
    calibration: dict[str, tuple[float, float]] = field(default_factory=dict)  # w8a8: weight -> input range
    smoothing: Smoothing = field(default_factory=Smoothing)  # w8a8: SmoothQuant scales (empty: none)

    @property
    def packed(self) -> bool:
        return self.options.layout == "packed"

    @property
    def jobs(self) -> list[TensorJob]:
        return [j for s in self.shards for j in s.jobs]

    @property
    def total_bytes(self) -> int:
        return sum(s.nbytes for s in self.shards)

    @property
    def total_tensors(self) -> int:
        return sum(len(s.jobs) for s in self.shards)

    @cached_property
    def source_tensors(self) -> dict[str, TensorInfo]:
        """Every source tensor by name (for W8A8, which needs a weight's bias beside it)."""
        return {info.name: info for info in self.reader.tensors()}


def dominant_float_dtype(infos: list[TensorInfo]) -> str:
    """The float dtype holding most of the source's bytes: what `--dtype auto` calls the source dtype.
    Block-FP8 weights, which the reader presents dequantized to float32, count only when nothing else
    is float: a DeepSeek-V3 checkpoint's model dtype is that of its other tensors (bf16, what
    DeepSeek's fp8_cast_bf16.py writes), not the float32 its FP8 blocks are dequantized into."""
    weight: dict[str, int] = {}
    stored = [info for info in infos if not any(t.startswith(FP8_TRANSFORM) for t in info.transforms)]
    for info in stored if any(info.dtype in FLOAT_NAMES for info in stored) else infos:
        if info.dtype in FLOAT_NAMES:
            weight[info.dtype] = weight.get(info.dtype, 0) + info.numel
    return max(weight, key=weight.get) if weight else "float32"


def make_plan(src: Path, out: Path, options: ConvertOptions, reader: CheckpointReader | None = None
              ) -> ConversionPlan:
    """Check the options, open `src` (unless its `reader` is given: `verify` reuses a conversion's)
    and plan every tensor; anything the conversion would refuse is refused here."""
    soc, max_shard, quant = options.validate()
    if reader is None:
        reader = open_checkpoint(src, [load_spec_file(p) for p in options.arch_specs])
    spec = reader.spec
    cfg = spec.canonical_config(reader.config(), where=str(src / CONFIG_NAME))  # fails early on a broken config
    infos = reader.tensors()
    if not infos:
        raise UserError(f"{src}: the checkpoint holds no tensors")
    source_dtype = dominant_float_dtype(infos)
    dtype = resolve_dtype(soc, options.dtype, source_dtype)
    jobs, dropped = [], []
    for info in infos:
        if spec.is_ignored(info.name):
            dropped.append(info.name)
            continue
        role = spec.role_of(info.name)
        if role is None:
            raise UserError(f"{src / info.file}: tensor {info.name} is not part of a {spec.family} model as "
                            f"{spec.origin} describes it (extend the spec with --arch-spec FILE)")
        if (options.mtp == "drop" or options.layout == "packed") and is_mtp_layer(role, cfg):
            dropped.append(info.name)
            continue
        out_dtype = "float32" if role.role in FP32_ROLES else dtype if info.dtype in FLOAT_NAMES else info.dtype
        planned = PlannedTensor(info.name, out_dtype, info.shape)
        float_mtp = options.mtp == "keep" and is_mtp_layer(role, cfg)
        parts = _quantized_parts(src, info, role[0], quant, dtype) if quant is not None and not float_mtp else []
        jobs.append(TensorJob(info, parts[0] if parts else planned, *role, parts=parts))  # role: RoleMatch
    if options.layout == "packed" and spec.is_mla:
        raise UserError(f"{src}: --layout packed does not split multi-head latent attention ({spec.family}): "
                        f"convert with --layout default (vllm-ascend splits it at load)")
    if quant is not None and quant.lm_head:
        if spec.lm_head_norm:
            raise UserError(f"{src}: --quantize-lm-head: {spec.family}'s head is a NormHead, whose rows vLLM "
                            f"normalises when it loads them; an int8 head cannot be (drop --quantize-lm-head)")
        jobs += _tied_head(src, spec, cfg, jobs, quant, dtype)
    check_mtp_layers(src, spec, cfg, jobs)
    if spec.is_moe:
        check_experts(src, spec, cfg, jobs)
    groups = _split(jobs, max_shard)
    names = (shard_names if quant is None else quant_shard_names)(len(groups))
    shards = [Shard(name, group) for name, group in zip(names, groups)]
    return ConversionPlan(src, out, reader, spec, soc.name, dtype, source_dtype, shards, dropped, options, quant)


def check_mtp_layers(src: Path, spec: ArchSpec, cfg: dict, jobs: list[TensorJob]) -> None:
    """A multi-token-prediction layer the checkpoint holds must be whole: its own parts (the spec's
    MTP roles) and every decoder part the last decoder layer has (its experts are checked with the
    other layers'). vllm-ascend's MTP module fails on a missing one at load, on the NPU; a layer the
    checkpoint lacks entirely is not an error (many published conversions drop it)."""
    count = cfg["num_hidden_layers"]
    held: dict[int, set[str]] = {}
    for job in jobs:
        if job.layer is not None and job.expert is None:
            held.setdefault(job.layer, set()).add(job.role)
    mtp = [layer for layer in held if count <= layer < count + mtp_layer_count(cfg)]
    if not mtp:
        return
    if any(job.role in MTP_ROLES and job.layer < count for job in jobs if job.layer is not None):
        late = next(job for job in jobs if job.role in MTP_ROLES and job.layer < count)
        raise UserError(f"{src / late.info.file}: tensor {late.info.name} is a multi-token-prediction part in "
                        f"decoder layer {late.layer} (MTP layers follow the {count} decoder layers)")
    decoder = held.get(count - 1, set()) - set(MTP_ROLES)
    wanted = sorted(decoder | {r for r in MTP_ROLES if r in spec.tensors})
    for layer in sorted(mtp):
        missing = [r for r in wanted if r not in held[layer]]
        if missing:
            names = ", ".join(spec.name_of(r, layer) for r in missing[:3])
            raise UserError(f"{src}: multi-token-prediction layer {layer} is incomplete: {names}"
                            f"{' ...' if len(missing) > 3 else ''} missing (convert with --mtp drop to leave the "
                            f"layer out)")


def check_experts(src: Path, spec: ArchSpec, cfg: dict, jobs: list[TensorJob]) -> None:
    """An MoE checkpoint's experts, from metadata: each sparse layer's router has `num_experts` rows,
    and every expert of it has each expert role, all experts of a layer the same shape per role.
    A model that would load with a hole or a misshapen expert is refused here, before anything
    is written; the error names the layer, the expert and the file."""
    experts, sparse = cfg["num_experts"], spec.moe_layers(cfg, with_mtp=True)
    config = src / CONFIG_NAME
    roles = [r for r in EXPERT_ROLES if r in spec.tensors]
    found: dict[tuple[int, str, int], TensorJob] = {}
    for job in jobs:
        where = f"{src / job.info.file}: tensor {job.info.name}"
        if job.layer is not None and job.layer >= len(sparse):
            raise UserError(f"{where} is in layer {job.layer}, beyond the {len(sparse)} layers of {config}")
        if job.role == "router" and job.info.shape[0] != experts:
            raise UserError(f"{where} (layer {job.layer}'s router) has {job.info.shape[0]} rows; {config} has "
                            f"num_experts {experts}")
        if job.expert is None:
            continue
        if not sparse[job.layer]:
            raise UserError(f"{where} is an expert of layer {job.layer}, which {config} makes a dense layer")
        if job.expert >= experts:
            raise UserError(f"{where} is expert {job.expert} of layer {job.layer}; {config} has num_experts "
                            f"{experts} (experts 0-{experts - 1})")
        found[(job.layer, job.role, job.expert)] = job
    held = {job.layer for job in jobs}  # an MTP layer is checked when the output keeps it
    for layer in (i for i, moe in enumerate(sparse) if moe and (i < cfg["num_hidden_layers"] or i in held)):
        for role in roles:
            first: TensorJob | None = None
            for e in range(experts):
                job = found.get((layer, role, e))
                if job is None:
                    held = next((j.info.file for j in found.values() if j.layer == layer), None)
                    raise UserError(f"{src / held if held else src}: layer {layer} expert {e} has no {role} "
                                    f"tensor ({spec.name_of(role, layer, e)} is missing; {config} has "
                                    f"num_experts {experts})")
                if first is None:
                    first = job
                elif job.info.shape != first.info.shape:
                    raise UserError(f"{src / job.info.file}: tensor {job.info.name} (layer {layer} expert {e}) "
                                    f"has shape {list(job.info.shape)}, but expert {first.expert} of the layer has "
                                    f"{list(first.info.shape)}")


def _split(jobs: list[TensorJob], max_shard: int) -> list[list[TensorJob]]:
    """Jobs in order, a new shard started whenever the next would pass `max_shard` bytes (a tensor
    larger than that gets a shard of its own)."""
    groups: list[list[TensorJob]] = [[]]
    size = 0
    for job in jobs:
        if groups[-1] and size + job.nbytes > max_shard:
            groups.append([])
            size = 0
        groups[-1].append(job)
        size += job.nbytes
    return groups


def _tied_head(src: Path, spec: ArchSpec, cfg: dict, jobs: list[TensorJob], quant: QuantOptions, dtype: str
               ) -> list[TensorJob]:
    """`--quantize-lm-head` on a model whose head is tied to its embedding: the head's int8 parts,
    quantized from the embedding's values under the head's own name (vllm-ascend ties a head to the
    float embedding and skips `lm_head.*` at load, so the config is untied: `side_files`). A model
    with its own head quantizes it as a linear; [] then."""
    if any(job.role == "lm_head" for job in jobs):
        return []
    embed = next((job for job in jobs if job.role == "embed"), None)
    if embed is None or not cfg["tie_word_embeddings"]:
        raise UserError(f"{src}: --quantize-lm-head found no LM head: no {spec.name_of('lm_head')} tensor, and no "
                        f"embedding tied to one")
    parts = _quantized_parts(src, embed.info, "lm_head", quant, dtype, name=spec.name_of("lm_head"))
    return [TensorJob(embed.info, parts[0], "lm_head", None, parts=parts)]


def _quantized_parts(src: Path, info: TensorInfo, role: str, quant: QuantOptions, dtype: str,
                     name: str | None = None) -> list[PlannedTensor]:
    """A linear weight's int8 weight, scale and offset (and W8A8's activation parts) in the type
    `quant.type_of` gives its role; [] for a tensor that stays float. `name`: the weight's output name
    where it is not the source's (a tied head, quantized from the embedding)."""
    quant_type = quant.type_of(role)
    if quant_type is None or info.dtype not in FLOAT_NAMES:
        return []
    if quant_type == "W8A16" and role in EXPERT_ROLES:
        raise UserError(f"{src / info.file}: tensor {info.name} is a routed expert, and --quantize w8a16 cannot serve "
                        f"it: vllm-ascend has W8A16 for linear layers only, no W8A16 method for MoE layers (use "
                        f"--quantize w8a8-dynamic or w8a8, or --keep-float {','.join(EXPERT_ROLES)})")
    width = info.shape[-1]
    if len(info.shape) != 2 or (quant.group_size and width % quant.group_size):
        raise UserError(f"{src / info.file}: tensor {info.name} of shape {list(info.shape)} cannot be quantized "
                        f"with --group-size {quant.group_size} (it must divide the {width} input columns)")
    return quantized_parts(name or info.name, info.shape, quant, quant_type, dtype)

"""HF/GGUF checkpoint → the default Ascend layout (DESIGN.md): HF names, the chip's dtype, checked
casts, sharded safetensors, and a manifest with the sha256 of every byte.

Streaming: shards are planned from metadata, each tensor is read, cast, hashed and written before
the next is read. Everything is written under a sibling `.<out>.partial` directory that is renamed
into place at the end; a journal there lets `--resume` skip finished shards after an interruption.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from ascend_common import __version__
from ascend_common.atomic_write import write_json_atomic
from ascend_common.errors import CheckFailed, UserError
from ascend_common.soc import resolve_dtype

from .arch import ArchSpec, find_spec, load_spec_file
from .cast import CastStats, checked_cast
from .convert_options import ConvertOptions
from .dtypes import FLOAT_NAMES, TORCH_DTYPES
from .manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    file_record,
    fsync_tree,
)
from .packed import convert_packed, failpoint, layout_of, packed_target
from .quant_layout import (
    DESCRIPTION_NAME,
    LINEAR_BIAS_ROLES,
    LINEAR_ROLES,
    QuantOptions,
    quantized_parts,
)
from .quant_layout import INDEX_NAME as QUANT_INDEX_NAME
from .quant_layout import description as quant_description
from .quant_layout import shard_names as quant_shard_names
from .quantize import (
    ActivationQuant,
    quant_error,
    quantize_w8a8,
    quantize_weight,
    stored_deq_scale,
)
from .readers import CheckpointReader, TensorInfo, open_checkpoint
from .safetensors_writer import PlannedTensor, SafetensorsStreamWriter
from .smoothing import (
    SIDE_FILE,
    SMOOTH_GROUPS,
    Smoothing,
    smoothed_range,
    smoothing_scales,
)

JOURNAL_NAME = ".ascendkit-journal.json"
@dataclass
class TensorJob:
    info: TensorInfo
    out: PlannedTensor
    role: str
    layer: int | None
    parts: list[PlannedTensor] = field(default_factory=list)  # what is written: [out], or a quantized weight's 3

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
    name: str
    jobs: list[TensorJob]

    @property
    def nbytes(self) -> int:
        return sum(j.nbytes for j in self.jobs)


@dataclass
class ConversionPlan:
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
    def total_bytes(self) -> int:
        return sum(s.nbytes for s in self.shards)

    @cached_property
    def source_tensors(self) -> dict[str, TensorInfo]:
        """Every source tensor by name (for W8A8, which needs a weight's bias beside it)."""
        return {info.name: info for info in self.reader.tensors()}

    @property
    def total_tensors(self) -> int:
        return sum(len(s.jobs) for s in self.shards)


class Reporter:
    """Progress sink; the CLI supplies a rich progress bar, library callers get silence."""

    def begin(self, total_bytes: int, total_tensors: int) -> None: ...
    def advance(self, nbytes: int, tensors: int = 1) -> None: ...
    def end(self) -> None: ...


@dataclass
class ConvertResult:
    out: Path
    manifest: dict
    plan: ConversionPlan
    resumed_shards: list[str]
    warnings: list[str]


def dominant_float_dtype(infos: list[TensorInfo]) -> str:
    """The float dtype holding most of the source's bytes: what `--dtype auto` calls the source dtype."""
    weight: dict[str, int] = {}
    for info in infos:
        if info.dtype in FLOAT_NAMES:
            weight[info.dtype] = weight.get(info.dtype, 0) + info.numel
    return max(weight, key=weight.get) if weight else "float32"


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def make_plan(src: Path, out: Path, options: ConvertOptions) -> ConversionPlan:
    soc, max_shard, quant = options.validate()
    extra = [load_spec_file(p) for p in options.arch_specs]
    reader = open_checkpoint(src, extra)
    spec = getattr(reader, "spec", None) or find_spec(reader.config(), extra, where=str(src / "config.json"))
    spec.canonical_config(reader.config(), where=str(src / "config.json"))  # fails early on a broken config
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
        out_dtype = dtype if info.dtype in FLOAT_NAMES else info.dtype
        planned = PlannedTensor(info.name, out_dtype, info.shape)
        parts = _quantized_parts(src, info, role[0], quant, dtype) if quant is not None else []
        jobs.append(TensorJob(info, parts[0] if parts else planned, *role, parts=parts))
    groups: list[list[TensorJob]] = [[]]
    size = 0
    for job in jobs:
        if groups[-1] and size + job.nbytes > max_shard:
            groups.append([])
            size = 0
        groups[-1].append(job)
        size += job.nbytes
    names = (shard_names if quant is None else quant_shard_names)(len(groups))
    shards = [Shard(name, group) for name, group in zip(names, groups)]
    return ConversionPlan(src, out, reader, spec, soc.name, dtype, source_dtype, shards, dropped, options, quant)


def _quantized_parts(src: Path, info: TensorInfo, role: str, quant: QuantOptions, dtype: str) -> list[PlannedTensor]:
    """A linear weight's int8 weight, scale and offset; [] for a tensor that stays float."""
    if role not in LINEAR_ROLES or role in quant.keep_float or info.dtype not in FLOAT_NAMES:
        return []
    width = info.shape[-1]
    if len(info.shape) != 2 or (quant.group_size and width % quant.group_size):
        raise UserError(f"{src / info.file}: tensor {info.name} of shape {list(info.shape)} cannot be quantized "
                        f"with --group-size {quant.group_size} (it must divide the {width} input columns)")
    return quantized_parts(info.name, info.shape, quant, dtype)


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def _fingerprint(plan: ConversionPlan) -> str:
    sources = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in plan.reader.weight_files()]
    layout = [(s.name, [[(p.name, p.dtype, p.shape) for p in j.parts] for j in s.jobs]) for s in plan.shards]
    key = json.dumps([__version__, str(plan.src.resolve()), sources, layout, plan.options.recorded()])
    return hashlib.sha256(key.encode()).hexdigest()


def refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise UserError(f"{out}: already exists (use --force to overwrite it)")


def _prepare_work_dir(plan: ConversionPlan) -> tuple[Path, dict]:
    """The partial directory and its journal: reused with --resume when it matches this plan."""
    out, opts = plan.out, plan.options
    refuse_existing(plan.out, plan.options.force)
    work = partial_dir(out)
    fingerprint = _fingerprint(plan)
    journal = {"fingerprint": fingerprint, "shards": {}}
    if work.exists():
        old = None
        if opts.resume:
            try:
                old = json.loads((work / JOURNAL_NAME).read_text())
            except (OSError, ValueError):
                old = None
        if old is not None and old.get("fingerprint") == fingerprint:
            journal = old
        elif opts.resume and old is not None:
            raise UserError(f"{work}: left by a conversion with other inputs or options; "
                            f"rerun with the same options, or --force to start over")
        elif not opts.force and not opts.resume:
            raise UserError(f"{work}: an interrupted conversion is there; rerun with --resume to finish it, "
                            f"or --force to start over")
        else:
            shutil.rmtree(work)
    try:
        work.mkdir(parents=True, exist_ok=True)
        probe = work / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{out}: cannot write the output directory ({exc.strerror or exc})") from None
    # A finished shard (or rank file) counts only if its bytes are still what the journal says.
    for finished in (journal["shards"], journal.get("ranks", {})):
        for name, record in list(finished.items()):
            path = work / name
            if not path.is_file() or file_record(path) != record["file"]:
                del finished[name]
    return work, journal


def _hash_sources(plan: ConversionPlan) -> tuple[threading.Thread, dict]:
    """sha256 of the source files, on a thread: hashlib releases the GIL, so this overlaps the work."""
    result: dict = {}
    files = list(plan.reader.weight_files())
    config = plan.src / "config.json"
    if plan.src.is_dir() and config.is_file():
        files.append(config.resolve())
    root = plan.reader.root.resolve()

    def run() -> None:
        for path in files:
            result[str(path.relative_to(root))] = file_record(path)

    thread = threading.Thread(target=run, name="hash-sources", daemon=True)
    thread.start()
    return thread, result


def convert(src: Path, out: Path, options: ConvertOptions, reporter: Reporter | None = None,
            plan: ConversionPlan | None = None) -> ConvertResult:
    src, out = Path(src), Path(out)
    reporter = reporter or Reporter()
    plan = plan or make_plan(src, out, options)
    try:
        if plan.quant is not None and plan.quant.kind == "w8a8":
            refuse_existing(plan.out, plan.options.force)  # before minutes of calibration, not after
            _calibrate(plan)  # before the work directory exists: a failed calibration leaves nothing behind
        if plan.options.layout == "packed":
            layout_of(plan)  # a model that does not split over --tp ranks fails before anything is written
        work, journal = _prepare_work_dir(plan)
        if plan.options.layout == "packed":
            return _run_packed(plan, work, journal, reporter)
        if plan.calibration:
            journal["calibration"] = {name: list(r) for name, r in plan.calibration.items()}
            journal["smoothing"] = plan.smoothing.to_json()
            write_json_atomic(work / JOURNAL_NAME, journal)
        return _run(plan, work, journal, reporter)
    finally:
        reporter.end()  # a progress bar left running would garble the error line after it
        plan.reader.close()


def _calibrate(plan: ConversionPlan) -> None:
    """The input range of every W8A8 linear, after smoothing, and the smoothing scales; --resume
    takes both from the interrupted run's journal."""
    journal_path = partial_dir(plan.out) / JOURNAL_NAME
    if plan.options.resume and journal_path.is_file():
        journal = json.loads(journal_path.read_text(encoding="utf-8"))
        if journal.get("fingerprint") == _fingerprint(plan) and "calibration" in journal:
            plan.calibration = {name: (lo, hi) for name, (lo, hi) in journal["calibration"].items()}
            plan.smoothing = Smoothing.from_json(journal.get("smoothing", {"scales": {}, "linear_to_norm": {}}))
            return
    from .calibrate import calibrate, calibration_texts

    texts = calibration_texts(Path(plan.quant.calib) if plan.quant.calib else None)
    names = {j.info.name for s in plan.shards for j in s.jobs if j.quantized}
    channels = calibrate(plan.src, names, texts, plan.source_dtype, plan.options.trust_remote_code)
    if plan.quant.smooth_alpha:
        plan.smoothing = _smoothing(plan, channels)
    plan.calibration = {name: smoothed_range(lo, hi, plan.smoothing.scales.get(plan.smoothing.linear_to_norm.get(name, "")))
                        for name, (lo, hi) in channels.items()}


def _smoothing(plan: ConversionPlan, channels: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Smoothing:
    """SmoothQuant scales for each layer's norm-fed groups (q/k/v after the attention norm, gate/up
    after the MLP norm) whose linears are all quantized."""
    jobs = [j for s in plan.shards for j in s.jobs]
    by_layer: dict[tuple[int | None, str], TensorJob] = {(j.layer, j.role): j for j in jobs}
    smoothing = Smoothing()
    for layer in sorted({j.layer for j in jobs if j.layer is not None}):
        for norm_role, linear_roles in SMOOTH_GROUPS:
            norm = by_layer.get((layer, norm_role))
            linears = [by_layer[(layer, r)] for r in linear_roles if (layer, r) in by_layer]
            if norm is None or not linears or not all(j.quantized for j in linears):
                continue
            act = torch.stack([torch.maximum(channels[j.info.name][0].abs(), channels[j.info.name][1].abs())
                               for j in linears]).amax(0)
            weight = torch.stack([plan.reader.load(j.info).float().abs().amax(0) for j in linears]).amax(0)
            if act.shape != norm.info.shape:
                continue  # a norm that does not scale this input channel by channel: nothing to fold into
            smoothing.scales[norm.info.name] = smoothing_scales(act, weight, plan.quant.smooth_alpha)
            smoothing.linear_to_norm.update({j.info.name: norm.info.name for j in linears})
    return smoothing


def _run(plan: ConversionPlan, work: Path, journal: dict, reporter: Reporter) -> ConvertResult:
    target = TORCH_DTYPES[plan.dtype]
    hash_thread, source_hashes = _hash_sources(plan)
    resumed = [s.name for s in plan.shards if s.name in journal["shards"]]
    reporter.begin(plan.total_bytes, plan.total_tensors)
    overflowed: dict[str, CastStats] = {}
    warnings: list[str] = []
    metadata = {"format": "pt"}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hash-tensors") as pool:
        for shard in plan.shards:
            if shard.name in journal["shards"]:
                reporter.advance(shard.nbytes, len(shard.jobs))
                continue
            writer = None if overflowed else SafetensorsStreamWriter(
                work / shard.name, [p for j in shard.jobs for p in j.parts], metadata, pool)
            records: dict[str, dict] = {}
            for job in shard.jobs:
                tensor = plan.reader.load(job.info)
                if tuple(tensor.shape) != job.info.shape:
                    raise UserError(f"{plan.src / job.info.file}: tensor {job.info.name} has shape "
                                    f"{tuple(tensor.shape)}, its header says {job.info.shape}")
                tensor = plan.smoothing.apply(job.info.name, tensor)
                cast, stats = checked_cast(tensor, target if tensor.is_floating_point() else tensor.dtype,
                                           plan.options.on_overflow)
                if stats.overflow and plan.options.on_overflow == "fail":
                    overflowed[job.info.name] = stats
                if overflowed:  # keep scanning so the error lists every overflowing tensor
                    if writer is not None:
                        writer.abort()
                        writer = None
                    reporter.advance(job.nbytes)
                    continue
                if job.quantized:
                    records.update(_write_quantized(plan, job, shard.name, tensor, stats, writer))
                else:
                    writer.write(job.info.name, cast)
                    records[job.info.name] = _tensor_record(plan, job, shard.name, stats)
                if stats.nan or stats.inf:
                    warnings.append(f"{job.info.name}: source holds {stats.nan} NaN and {stats.inf} Inf values")
                if stats.clamped:
                    warnings.append(f"{job.info.name}: {stats.clamped} values beyond ±65504 clamped")
                del tensor, cast
                reporter.advance(job.nbytes)
            if writer is None:
                continue
            file_sha, size, tensor_hashes = writer.finish()
            for name, digest in tensor_hashes.items():
                records[name]["sha256"] = digest
            journal["shards"][shard.name] = {"file": {"sha256": file_sha, "size": size}, "tensors": records}
            write_json_atomic(work / JOURNAL_NAME, journal)
            failpoint(len(journal["shards"]))
    if overflowed:
        shutil.rmtree(work, ignore_errors=True)
        listing = "; ".join(f"{name} ({s.overflow} values)" for name, s in overflowed.items())
        raise CheckFailed(f"{len(overflowed)} tensor(s) hold values beyond the {plan.dtype} range "
                          f"±{torch.finfo(target).max:g}, "
                          f"which a cast would turn into Inf: {listing} (use --on-overflow clamp to saturate "
                          f"them, or --dtype bfloat16 on a chip that has it)")
    side_files = _write_side_files(plan, work)
    hash_thread.join()
    manifest = _manifest(plan, work, journal, source_hashes, side_files)
    _publish(plan, work, manifest)
    return ConvertResult(plan.out, manifest, plan, resumed, warnings)


def _publish(plan: ConversionPlan, work: Path, manifest: dict) -> None:
    """Manifest in, journal out, everything durable, then the directory renamed into place."""
    write_json_atomic(work / MANIFEST_NAME, manifest)
    (work / JOURNAL_NAME).unlink()
    fsync_tree(work)
    _swap_into_place(work, plan.out)


def _run_packed(plan: ConversionPlan, work: Path, journal: dict, reporter: Reporter) -> ConvertResult:
    hash_thread, source_hashes = _hash_sources(plan)
    resumed = sorted(journal.get("ranks", {}))  # what _prepare_work_dir kept: their bytes are intact
    ranks = convert_packed(plan, work, journal, reporter)
    side_files = _write_side_files(plan, work)
    hash_thread.join()
    files = {name: record["file"] for name, record in ranks.items()}
    files.update({name: file_record(work / name) for name in side_files})
    total = CastStats()
    for record in journal.get("cast", {}).values():
        total.merge(CastStats(**record))
    manifest = {
        **_manifest_head(plan, source_hashes),
        "target": {"soc": plan.soc, "dtype": plan.dtype, **packed_target(plan)},
        "options": plan.options.recorded(), "files": files, "tensors": {},
        "rank_tensors": {name: record["tensors"] for name, record in ranks.items()},
        "source_cast": journal.get("cast", {}), "dropped_tensors": plan.dropped,
        "summary": {"ranks": len(ranks), "tensors": sum(len(r["tensors"]) for r in ranks.values()),
                    "bytes": sum(r["file"]["size"] for r in ranks.values()), "cast": total.to_dict()},
    }
    _publish(plan, work, manifest)
    return ConvertResult(plan.out, manifest, plan, resumed, [])


def _tensor_record(plan: ConversionPlan, job: TensorJob, shard: str, stats: CastStats) -> dict:
    transforms = [] if job.info.dtype == job.out.dtype else [f"cast:{job.info.dtype}->{job.out.dtype}"]
    if job.info.stored_as != job.info.dtype:
        transforms.insert(0, f"dequantize:{job.info.stored_as}")
    if plan.reader.format == "gguf" and plan.spec.gguf_unpermute_qk and job.role in ("q", "k"):
        transforms.insert(1, "unpermute_qk:gguf")
    smoothed = plan.smoothing.transform(job.info.name)
    if smoothed is not None:
        transforms.insert(len(transforms) - (1 if transforms and transforms[-1].startswith("cast:") else 0), smoothed)
    return {"file": shard, "dtype": job.out.dtype, "shape": list(job.out.shape), "role": job.role,
            "layer": job.layer, "source": {"name": job.info.name, "file": job.info.file,
                                           "dtype": job.info.stored_as},
            "transforms": transforms, "cast": stats.to_dict()}


def _write_quantized(plan: ConversionPlan, job: TensorJob, shard: str, tensor: torch.Tensor, stats: CastStats,
                     writer: SafetensorsStreamWriter) -> dict[str, dict]:
    """Quantize one linear weight (from the source values, not the cast ones) and write its tensors;
    their manifest records, the weight's with the quantization error."""
    if stats.nan or stats.inf:
        raise UserError(f"{plan.src / job.info.file}: tensor {job.info.name} holds {stats.nan} NaN and "
                        f"{stats.inf} Inf values; it cannot be quantized")
    quant = plan.quant
    details: dict = {"type": quant.quant_type, "group_size": quant.group_size, "symmetric": quant.symmetric}
    if quant.kind == "w8a16":
        qw = quantize_weight(tensor, symmetric=quant.symmetric, group_size=quant.group_size, name=job.info.name)
        values = [qw.weight, qw.scale, qw.offset]
        dequantized = qw.dequantize()
    else:
        act = ActivationQuant.from_range(*plan.calibration[job.info.name])
        layer = quantize_w8a8(tensor, _bias_of(plan, job), act, name=job.info.name)
        values = [layer.weight, layer.weight_scale, layer.weight_offset, layer.input_scale, layer.input_offset,
                  stored_deq_scale(layer.deq_scale, TORCH_DTYPES[plan.dtype]), layer.quant_bias]
        dequantized = layer.weight.float() * layer.weight_scale
        details.update(input_scale=act.scale, input_offset=act.offset, input_range=list(plan.calibration[job.info.name]))
    records = {}
    for part, value in zip(job.parts, values, strict=True):
        writer.write(part.name, value)
        record = _tensor_record(plan, job, shard, CastStats())
        kept = [t for t in record["transforms"] if not t.startswith("cast:")]  # quantized from the source values
        record.update(dtype=part.dtype, shape=list(part.shape), transforms=[*kept, f"quantize:{quant.quant_type}"])
        record["quant"] = {**details, "part": part.name.rsplit(".", 1)[1]}
        records[part.name] = record
    records[job.parts[0].name]["quant"]["error"] = quant_error(tensor, dequantized).to_dict()
    return records


def _bias_of(plan: ConversionPlan, job: TensorJob) -> torch.Tensor | None:
    """The source bias of a linear weight (for W8A8's quant_bias), wherever it is stored."""
    info = plan.source_tensors.get(job.info.name.removesuffix(".weight") + ".bias")
    return plan.reader.load(info) if info is not None else None


def _write_side_files(plan: ConversionPlan, work: Path) -> list[str]:
    packed = plan.options.layout == "packed"
    keep = {f"tp{plan.options.tp}"} if packed else {s.name for s in plan.shards}
    for stale in work.iterdir():  # a resumed run rewrites every small file
        if stale.name not in keep and stale.name != JOURNAL_NAME:
            stale.unlink() if stale.is_file() else shutil.rmtree(stale)
    written = plan.reader.write_side_files(work)
    config = dict(plan.reader.config())
    config.pop("quantization_config", None)
    keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
    for key in keys:
        config[key] = plan.dtype
    _write_json(work / "config.json", config, sort_keys=True)
    written.append("config.json")
    if len(plan.shards) > 1 and not packed:
        index = {"metadata": {"total_size": plan.total_bytes},
                 "weight_map": {p.name: s.name for s in plan.shards for j in s.jobs for p in j.parts}}
        index_name = "model.safetensors.index.json" if plan.quant is None else QUANT_INDEX_NAME
        _write_json(work / index_name, index, sort_keys=True)
        written.append(index_name)
    if plan.quant is not None:
        kept = plan.quant.keep_float
        types = {p.name: plan.quant.quant_type if (j.quantized or (
            j.role in LINEAR_BIAS_ROLES and j.role.removesuffix("_bias") not in kept)) else "FLOAT"
                 for s in plan.shards for j in s.jobs for p in j.parts}
        _write_json(work / DESCRIPTION_NAME, quant_description(types, plan.quant))
        written.append(DESCRIPTION_NAME)
    if plan.smoothing:
        plan.smoothing.save(work / SIDE_FILE)
        written.append(SIDE_FILE)
    return sorted(written)


def _write_json(path: Path, data: dict, sort_keys: bool = False) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=sort_keys)
        f.write("\n")


def _manifest(plan: ConversionPlan, work: Path, journal: dict, source_hashes: dict, side_files: list[str]) -> dict:
    files = {name: journal["shards"][name]["file"] for name in (s.name for s in plan.shards)}
    for name in side_files:
        files[name] = file_record(work / name)
    tensors = {}
    for shard in plan.shards:
        tensors.update(journal["shards"][shard.name]["tensors"])
    total = CastStats()
    for record in tensors.values():
        total.merge(CastStats(**record["cast"]))
    return {
        **_manifest_head(plan, source_hashes),
        "target": {"soc": plan.soc, "dtype": plan.dtype, "layout": "default" if plan.quant is None else "quantized",
                   **({} if plan.quant is None else {"quantize": plan.quant.quant_type})},
        "options": plan.options.recorded(),
        "files": files,
        "tensors": tensors,
        "dropped_tensors": plan.dropped,
        "summary": {"tensors": len(tensors), "bytes": plan.total_bytes, "shards": len(plan.shards),
                    "cast": total.to_dict()},
    }


def _manifest_head(plan: ConversionPlan, source_hashes: dict) -> dict:
    """What every manifest starts with, whatever the layout: format, tool, source."""
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "tool": {"name": "ascend-deploy-kit", "version": __version__, "torch": torch.__version__.split("+")[0]},
        "source": {"path": str(plan.src.resolve()), "format": plan.reader.format, "files": source_hashes,
                   "architecture": (plan.reader.config().get("architectures") or [None])[0],
                   "family": plan.spec.family, "dtype": plan.source_dtype},
    }


def _swap_into_place(work: Path, out: Path) -> None:
    """Rename the finished directory to `out`; an old `out` (only with --force) is removed after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(work, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

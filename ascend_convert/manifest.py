"""`ascend_manifest.json`: what was converted, from what, how, and the sha256 of every byte written.

Deterministic (no timestamps, sorted keys) so that a resumed conversion and an uninterrupted one
write the same manifest, byte for byte. Its contents are built here, for every layout: the head
(tool, source), the target, each tensor's record (source, role, transforms, cast statistics,
quantization) and the summary. Reading it needs no torch (`gate` and `smoke` read manifests), so
torch is imported only by the functions that build one, during a conversion.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ascend_common import __version__
from ascend_common.errors import UserError

from .layout_names import CONFIG_NAME, MANIFEST_NAME

if TYPE_CHECKING:
    from .plan import ConversionPlan, TensorJob
    from .quantize import ActivationQuant

MANIFEST_FORMAT = "ascend-deploy-kit/manifest"
MANIFEST_VERSION = 1
HASH_BLOCK = 1 << 23


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def file_record(path: Path) -> dict:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def fsync_tree(root: Path) -> None:
    """Make every file under `root` (and the directory entries) durable before it is published."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(out_dir: Path) -> dict:
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{path}: missing (not a directory written by ascendkit convert)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{path}: not an ascend-deploy-kit manifest (field 'format' is not {MANIFEST_FORMAT!r})")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise UserError(f"{path}: manifest format_version {manifest.get('format_version')!r} is not supported "
                        f"(this version reads {MANIFEST_VERSION})")
    return manifest


def recorded_source(manifest: dict) -> Path | None:
    """The source checkpoint a manifest names, if it is still there (what verify and smoke compare with)."""
    source = manifest.get("source")
    path = source.get("path") if isinstance(source, dict) else None
    return Path(path) if isinstance(path, str) and Path(path).exists() else None


def hash_sources(plan: ConversionPlan) -> tuple[threading.Thread, dict[str, dict]]:
    """sha256 of the source files, on a thread: hashlib releases the GIL, so this overlaps the work."""
    result: dict[str, dict] = {}
    files = list(plan.reader.weight_files())
    config = plan.src / CONFIG_NAME
    if plan.src.is_dir() and config.is_file():
        files.append(config.resolve())
    root = plan.reader.root.resolve()

    def run() -> None:
        for path in files:
            result[str(path.relative_to(root))] = file_record(path)

    thread = threading.Thread(target=run, name="hash-sources", daemon=True)
    thread.start()
    return thread, result


def tensor_record(plan: ConversionPlan, job: TensorJob, file: str, cast: dict) -> dict:
    """A float tensor's record: where it is, where it came from, and what was done to it, in order."""
    reader = list(job.info.transforms)
    casts = [] if job.info.dtype == job.out.dtype else [f"cast:{job.info.dtype}->{job.out.dtype}"]
    # As earlier manifests record it: a dequantized tensor lists what its reader did before the cast,
    # a float GGUF's unpermute comes after it (though it is done first).
    transforms = reader + casts if reader and reader[0].startswith("dequantize:") else casts + reader
    smoothed = plan.smoothing.transform(job.info.name)
    if smoothed is not None:
        transforms.insert(len(transforms) - (1 if transforms and transforms[-1].startswith("cast:") else 0), smoothed)
    expert = {} if job.expert is None else {"expert": job.expert}
    return {"file": file, "dtype": job.out.dtype, "shape": list(job.out.shape), "role": job.role,
            "layer": job.layer, **expert, "source": {"name": job.info.name, "file": job.info.file,
                                                     "dtype": job.info.stored_as},
            "transforms": transforms, "cast": cast}


def quantized_records(plan: ConversionPlan, job: TensorJob, file: str, error: dict,
                      act: ActivationQuant | None) -> dict[str, dict]:
    """The records of a quantized weight's parts (quantized from the source values, so no cast);
    the weight's carries the quantization error, W8A8's the activation scale and offset (`act`)."""
    from .cast import CastStats

    quant = plan.quant
    quant_type = quant.type_of(job.role)  # a model may mix types (W8A8 attention, W8A8_DYNAMIC experts)
    details: dict = {"type": quant_type, "group_size": quant.group_size, "symmetric": quant.symmetric}
    if act is not None:
        details.update(input_scale=act.scale, input_offset=act.offset, input_range=list(plan.calibration[job.info.name]))
    records = {}
    for part in job.parts:
        record = tensor_record(plan, job, file, CastStats().to_dict())
        kept = [t for t in record["transforms"] if not t.startswith("cast:")]
        record.update(dtype=part.dtype, shape=list(part.shape), transforms=[*kept, f"quantize:{quant_type}"])
        record["quant"] = {**details, "part": part.name.rsplit(".", 1)[1]}
        records[part.name] = record
    records[job.parts[0].name]["quant"]["error"] = error
    return records


def build_manifest(plan: ConversionPlan, work: Path, finished: dict[str, dict], side_files: list[str],
                   source_files: dict[str, dict], target: dict, source_cast: dict[str, dict]) -> dict:
    """The manifest of a finished conversion: `finished` is the journal's record of every weight file
    (shards, or rank files with their tensors), `target` the layout's part of the target, and
    `source_cast` the packed layout's cast statistics by source tensor."""
    import torch

    from .cast import CastStats

    files = {name: record["file"] for name, record in finished.items()}
    files.update({name: file_record(work / name) for name in side_files})
    head = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "tool": {"name": "ascend-deploy-kit", "version": __version__, "torch": torch.__version__.split("+")[0]},
        "source": {"path": str(plan.src.resolve()), "format": plan.reader.format, "files": source_files,
                   "architecture": (plan.reader.config().get("architectures") or [None])[0],
                   "family": plan.spec.family, "dtype": plan.source_dtype},
        "target": {"soc": plan.soc, "dtype": plan.dtype, **target},
        "options": plan.options.recorded(), "files": files, "dropped_tensors": plan.dropped,
    }
    total = CastStats()
    if plan.packed:
        for record in source_cast.values():
            total.merge(CastStats(**record))
        return {**head, "tensors": {}, "source_cast": source_cast,
                "rank_tensors": {name: record["tensors"] for name, record in finished.items()},
                "summary": {"ranks": len(finished), "tensors": sum(len(r["tensors"]) for r in finished.values()),
                            "bytes": sum(r["file"]["size"] for r in finished.values()), "cast": total.to_dict()}}
    tensors = {}
    for record in finished.values():
        tensors.update(record["tensors"])
    for record in tensors.values():
        total.merge(CastStats(**record["cast"]))
    return {**head, "tensors": tensors,
            "summary": {"tensors": len(tensors), "bytes": plan.total_bytes, "shards": len(plan.shards),
                        "cast": total.to_dict()}}

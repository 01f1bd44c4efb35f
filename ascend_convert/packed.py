"""`convert --layout packed --tp N [--nz]`: the checkpoint pre-split for N tensor-parallel ranks.

Output: `tp{N}/rank{r}.safetensors` (the runtime's fused names, each rank's share as `tp_layout`
defines it, matmul weights tiled to FRACTAL_NZ with `--nz`; metadata: rank, size, vocabulary size and
padding, and the ND shape of each tiled tensor), the side files (config.json with the dtype, the
tokenizer...), and a manifest whose `files` cover every rank file and whose `rank_tensors` give each
tensor's dtype, shape and sha256, so `verify` re-hashes them and, with `--source`, rebuilds every rank
from the source and requires the same bytes.

Ranks are written one after another, each from one pass over the source: a rank's share (1/N of the
model) is in memory, never the whole model. A rank file is finished when its name is in the journal;
`--resume` keeps those and writes the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import torch

from ascend_common.atomic_write import write_json_atomic
from ascend_common.errors import CheckFailed

from .arch import canonical_tensors
from .cast import CastStats, checked_cast
from .dtypes import FLOAT_NAMES, TORCH_DTYPES, dtype_name
from .safetensors_writer import PlannedTensor, SafetensorsStreamWriter
from .tp_layout import TPLayout, is_matmul_weight, rank_tensors, to_nz


def failpoint(files_done: int) -> None:
    """Fault injection for the resume tests: `ASCENDKIT_FAILPOINT=kill-after-shard:N` dies like a
    SIGKILL (no cleanup, no exception handlers) once N output files (shards, or rank files) are done."""
    spec = os.environ.get("ASCENDKIT_FAILPOINT", "")
    if spec.startswith("kill-after-shard:") and files_done == int(spec.split(":", 1)[1]):
        os.kill(os.getpid(), signal.SIGKILL)


def rank_file(size: int, rank: int) -> str:
    return f"tp{size}/rank{rank}.safetensors"


def _canonical_stream(plan, stats: dict[str, CastStats] | None) -> Iterator[tuple[str, torch.Tensor]]:
    """Every source tensor cast to the target dtype, as canonical (unfused) tensors; the cast
    statistics of each source tensor go into `stats` when given."""
    target = TORCH_DTYPES[plan.dtype]
    cfg = plan.spec.canonical_config(plan.reader.config())
    for info in plan.reader.tensors():
        if plan.spec.is_ignored(info.name):
            continue
        role, layer = plan.spec.role_of(info.name)
        tensor = plan.reader.load(info)
        cast, cast_stats = checked_cast(tensor, target if info.dtype in FLOAT_NAMES else tensor.dtype,
                                        plan.options.on_overflow)
        if stats is not None:
            stats[info.name] = cast_stats
        yield from canonical_tensors(plan.spec, cfg, role, layer, cast)


def layout_of(plan) -> TPLayout:
    return TPLayout.of(plan.spec.canonical_config(plan.reader.config()), plan.options.tp)


def build_rank(plan, layout: TPLayout, rank: int, stats: dict[str, CastStats] | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Rank `rank`'s tensors as written (NZ-tiled with --nz), and the ND shape of each tiled one."""
    tensors = rank_tensors(_canonical_stream(plan, stats), layout, rank)
    nd_shapes: dict[str, list[int]] = {}
    if plan.options.nz:
        for name in [n for n in tensors if is_matmul_weight(n)]:
            nd_shapes[name] = list(tensors[name].shape)
            tensors[name] = to_nz(tensors[name])
    return tensors, nd_shapes


def convert_packed(plan, work: Path, journal: dict, reporter) -> dict:
    """Write every rank file into `work` (skipping those the journal lists) and return the manifest's
    packed part: rank tensor records and the layout."""
    layout = layout_of(plan)
    size = layout.size
    stats: dict[str, CastStats] = {}
    reporter.begin(size, size)
    done = journal.setdefault("ranks", {})
    for rank in range(size):
        name = rank_file(size, rank)
        if name in done:
            reporter.advance(1)
            continue
        tensors, nd_shapes = build_rank(plan, layout, rank, stats if not stats else None)
        overflowed = {n: s for n, s in stats.items() if s.overflow}
        if overflowed and plan.options.on_overflow == "fail":
            listing = "; ".join(f"{n} ({s.overflow} values)" for n, s in overflowed.items())
            shutil.rmtree(work, ignore_errors=True)  # as the default layout does: nothing to resume
            raise CheckFailed(f"{len(overflowed)} tensor(s) hold values beyond the {plan.dtype} range, which a cast "
                              f"would turn into Inf: {listing} (use --on-overflow clamp to saturate them)")
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"format": "pt", "tp_size": str(size), "rank": str(rank), "vocab_size": str(layout.vocab_size),
                    "padded_vocab_size": str(layout.padded_vocab), "nd_shapes": json.dumps(nd_shapes, sort_keys=True)}
        names = sorted(tensors)  # our writer: a deterministic header (save_file's metadata order is not)
        writer = SafetensorsStreamWriter(path, [PlannedTensor(n, dtype_name(tensors[n].dtype), tuple(tensors[n].shape))
                                                for n in names], metadata)
        for n in names:
            writer.write(n, tensors[n])
        file_sha, nbytes, hashes = writer.finish()
        done[name] = {"file": {"sha256": file_sha, "size": nbytes}, "tensors": {
            n: {"dtype": dtype_name(tensors[n].dtype), "shape": list(tensors[n].shape), "sha256": hashes[n],
                **({"nd_shape": nd_shapes[n]} if n in nd_shapes else {})} for n in names}}
        if stats:
            journal["cast"] = {n: s.to_dict() for n, s in stats.items()}
        write_json_atomic(work / ".ascendkit-journal.json", journal)
        failpoint(len(done))
        reporter.advance(1)
        del tensors
    return done


def packed_target(plan) -> dict:
    layout = layout_of(plan)
    return {"layout": "packed", "tp": layout.size, "nz": plan.options.nz, "vocab_size": layout.vocab_size,
            "padded_vocab_size": layout.padded_vocab,
            "nz_format": "FRACTAL_NZ (ACL format 29)" if plan.options.nz else None}


def check_packed_source(plan, out: Path, manifest: dict, fail) -> int:
    """Rebuild every rank from the source and compare with the files; returns tensors checked."""
    from safetensors import safe_open

    layout, checked = layout_of(plan), 0
    for rank in range(layout.size):
        name = rank_file(layout.size, rank)
        expected, _ = build_rank(plan, layout, rank)
        with safe_open(str(out / name), framework="pt") as handle:
            present = set(handle.keys())
            for tensor_name, tensor in expected.items():
                if tensor_name not in present or not torch.equal(handle.get_tensor(tensor_name), tensor):
                    fail(f"{out / name}: tensor {tensor_name} differs from splitting the source for rank {rank}")
                checked += 1
    return checked

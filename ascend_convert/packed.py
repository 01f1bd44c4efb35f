"""`convert --layout packed --tp N [--nz]`: the checkpoint pre-split for N tensor-parallel ranks.

Output: `tp{N}/rank{r}.safetensors` (the runtime's fused names, each rank's share as `tp_layout`
defines it, matmul weights tiled to FRACTAL_NZ with `--nz`; metadata: rank, size, vocabulary size and
padding, and the ND shape of each tiled tensor), the side files (config.json with the dtype, the
tokenizer...), and a manifest whose `files` cover every rank file and whose `rank_tensors` give each
tensor's dtype, shape and sha256, so `verify` re-hashes them and, with `--source`, rebuilds every rank
from the source (from a `ConversionPlan`, as the conversion did) and requires the same bytes.

Ranks are written one after another, each from one pass over the source: a rank's share (1/N of the
model) is in memory, never the whole model. A rank file is finished when its name is in the journal
(under `ranks`); `--resume` keeps those and writes the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .arch import FP32_ROLES, RoleMatch, canonical_tensors
from .cast import CastStats, checked_cast
from .dtypes import FLOAT_NAMES, TORCH_DTYPES, dtype_name
from .layout_names import rank_file
from .plan import ConversionPlan
from .safetensors_writer import PlannedTensor
from .tp_layout import TPLayout, is_matmul_weight, rank_tensors, to_nz
from .workdir import WorkDir
from .write_loop import FileContent, LayoutWriter, OutputFile, Overflows, Piece


def layout_of(plan: ConversionPlan) -> TPLayout:
    """How the plan's model splits over `--tp` ranks; a UserError if it does not."""
    return TPLayout.of(plan.spec.canonical_config(plan.reader.config()), plan.options.tp)


def _canonical_stream(plan: ConversionPlan, stats: dict[str, CastStats] | None) -> Iterator[tuple[str, torch.Tensor]]:
    """Every source tensor cast to the target dtype, as canonical (unfused) tensors; the cast
    statistics of each source tensor go into `stats` when given."""
    target = TORCH_DTYPES[plan.dtype]
    cfg = plan.spec.canonical_config(plan.reader.config())
    for job in plan.jobs:  # the plan's: what it ignored or dropped (an MTP layer) is not split
        info, match = job.info, RoleMatch(job.role, job.layer, job.expert)
        tensor = plan.reader.load(info)
        dtype = torch.float32 if match.role in FP32_ROLES else target if info.dtype in FLOAT_NAMES else tensor.dtype
        cast, cast_stats = checked_cast(tensor, dtype, plan.options.on_overflow)
        if stats is not None:
            stats[info.name] = cast_stats
        yield from canonical_tensors(plan.spec, cfg, match, cast)


def build_rank(plan: ConversionPlan, layout: TPLayout, rank: int, stats: dict[str, CastStats] | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Rank `rank`'s tensors as written (NZ-tiled with --nz), and the ND shape of each tiled one."""
    tensors = rank_tensors(_canonical_stream(plan, stats), layout, rank)
    nd_shapes: dict[str, list[int]] = {}
    if plan.options.nz:
        for name in [n for n in tensors if is_matmul_weight(n)]:
            nd_shapes[name] = list(tensors[name].shape)
            tensors[name] = to_nz(tensors[name])
    return tensors, nd_shapes


class PackedWriter(LayoutWriter):
    """One file per rank, each built whole from a pass over the source; the cast statistics of the
    source tensors are taken on the first pass (every pass casts the same tensors)."""

    journal_key = "ranks"

    def __init__(self, plan: ConversionPlan, work: WorkDir) -> None:
        super().__init__(plan, work, Overflows(plan, work))
        self.layout = layout_of(plan)
        self.ranks = {rank_file(self.layout.size, rank): rank for rank in range(self.layout.size)}
        self.stats: dict[str, CastStats] = {}

    def files(self) -> list[OutputFile]:
        return [OutputFile(name, 1, 1) for name in self.ranks]

    def progress_total(self) -> tuple[int, int]:
        return self.layout.size, self.layout.size

    def content(self, file: OutputFile) -> FileContent:
        size, layout, rank = self.layout.size, self.layout, self.ranks[file.name]
        tensors, nd_shapes = build_rank(self.plan, layout, rank, self.stats if not self.stats else None)
        for name, stats in self.stats.items():
            self.overflows.check(name, stats)
        self.overflows.raise_if_any()  # the first pass saw every cast: nothing more to scan for
        metadata = {"format": "pt", "tp_size": str(size), "rank": str(rank), "vocab_size": str(layout.vocab_size),
                    "padded_vocab_size": str(layout.padded_vocab), "nd_shapes": json.dumps(nd_shapes, sort_keys=True)}
        names = sorted(tensors)  # our writer: a deterministic header (save_file's metadata order is not)
        records = {n: {"dtype": dtype_name(tensors[n].dtype), "shape": list(tensors[n].shape),
                       **({"nd_shape": nd_shapes[n]} if n in nd_shapes else {})} for n in names}
        entries = [PlannedTensor(n, records[n]["dtype"], tuple(tensors[n].shape)) for n in names]
        return FileContent(entries, metadata, [Piece([(n, tensors.pop(n)) for n in names], records, 1)])

    def target(self) -> dict:
        return packed_target(self.plan, self.layout)

    def save_to_journal(self, journal: dict) -> None:
        if self.stats:
            journal["cast"] = {n: s.to_dict() for n, s in self.stats.items()}

    def source_cast(self) -> dict[str, dict]:
        return self.work.journal.get("cast", {})


def packed_target(plan: ConversionPlan, layout: TPLayout) -> dict:
    return {"layout": "packed", "tp": layout.size, "nz": plan.options.nz, "vocab_size": layout.vocab_size,
            "padded_vocab_size": layout.padded_vocab,
            "nz_format": "FRACTAL_NZ (ACL format 29)" if plan.options.nz else None}


def check_packed_source(plan: ConversionPlan, out: Path, fail: Callable[[str], None]) -> int:
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

"""The default layout's weight files: the checkpoint's own tensor names in shards of at most
`--max-shard-size`, each tensor read, smoothed (W8A8), cast with checks and written before the next
is read; with `--quantize`, each linear weight written as msModelSlim's int8 parts instead, computed
from the source values by `quantize.quantized_tensors`."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ascend_common.errors import UserError

from .cast import CastStats, checked_cast
from .dtypes import TORCH_DTYPES
from .manifest import quantized_records, tensor_record
from .plan import ConversionPlan, Shard, TensorJob
from .quantize import ActivationQuant, quantized_tensors
from .workdir import WorkDir
from .write_loop import FileContent, LayoutWriter, OutputFile, Overflows, Piece


class ShardWriter(LayoutWriter):
    """Shards as the plan groups them; the journal lists them under `shards`."""

    journal_key = "shards"

    def __init__(self, plan: ConversionPlan, work: WorkDir) -> None:
        self.target_dtype = TORCH_DTYPES[plan.dtype]
        limit = f" ±{torch.finfo(self.target_dtype).max:g}"
        super().__init__(plan, work, Overflows(plan, work, limit, ", or --dtype bfloat16 on a chip that has it"))
        self.shards = {s.name: s for s in plan.shards}

    def files(self) -> list[OutputFile]:
        return [OutputFile(s.name, s.nbytes, len(s.jobs)) for s in self.plan.shards]

    def progress_total(self) -> tuple[int, int]:
        return self.plan.total_bytes, self.plan.total_tensors

    def content(self, file: OutputFile) -> FileContent:
        shard = self.shards[file.name]
        return FileContent([p for j in shard.jobs for p in j.parts], {"format": "pt"}, self._pieces(shard))

    def target(self) -> dict:
        quant = self.plan.quant
        return {"layout": "default" if quant is None else "quantized",
                **({} if quant is None else {"quantize": quant.quant_type})}

    def _pieces(self, shard: Shard) -> Iterator[Piece]:
        plan = self.plan
        for job in shard.jobs:
            tensor = plan.reader.load(job.info)
            if tuple(tensor.shape) != job.info.shape:
                raise UserError(f"{plan.src / job.info.file}: tensor {job.info.name} has shape "
                                f"{tuple(tensor.shape)}, its header says {job.info.shape}")
            tensor = plan.smoothing.apply(job.info.name, tensor)
            target = self.target_dtype if job.quantized else TORCH_DTYPES.get(job.out.dtype, self.target_dtype)
            cast, stats = checked_cast(tensor, target if tensor.is_floating_point() else tensor.dtype,
                                       plan.options.on_overflow)
            self.overflows.check(job.info.name, stats)
            if self.overflows.found:
                yield Piece([], {}, job.nbytes)
            elif job.quantized:
                cast = None  # only its stats were wanted: the weight is quantized from the source values
                yield self._quantized(job, shard.name, tensor, stats)
            else:
                yield Piece([(job.info.name, cast)], {job.info.name: tensor_record(plan, job, shard.name, stats.to_dict())},
                            job.nbytes, warnings=_warnings(job, stats))
            del tensor, cast  # before the next tensor is read

    def _quantized(self, job: TensorJob, file: str, tensor: torch.Tensor, stats: CastStats) -> Piece:
        """One linear weight quantized from the source values (not the cast ones)."""
        plan, quant = self.plan, self.plan.quant
        if stats.nan or stats.inf:
            raise UserError(f"{plan.src / job.info.file}: tensor {job.info.name} holds {stats.nan} NaN and "
                            f"{stats.inf} Inf values; it cannot be quantized")
        static = quant.type_of(job.role) == "W8A8"  # W8A8_DYNAMIC experts: no activation scale
        act = ActivationQuant.from_range(*plan.calibration[job.info.name]) if static else None
        values, error = quantized_tensors(job.info.name, tensor, symmetric=quant.symmetric,
                                          group_size=quant.group_size, act=act,
                                          bias=self._bias_of(job) if act is not None else None,
                                          model_dtype=plan.dtype)
        tensors = [(part.name, values[part.name.rsplit(".", 1)[1]]) for part in job.parts]
        return Piece(tensors, quantized_records(plan, job, file, error.to_dict(), act), job.nbytes,
                     warnings=_warnings(job, stats))

    def _bias_of(self, job: TensorJob) -> torch.Tensor | None:
        """The source bias of a linear weight (for W8A8's quant_bias), wherever it is stored."""
        info = self.plan.source_tensors.get(job.info.name.removesuffix(".weight") + ".bias")
        return self.plan.reader.load(info) if info is not None else None


def _warnings(job: TensorJob, stats: CastStats) -> list[str]:
    warnings = []
    if stats.nan or stats.inf:
        warnings.append(f"{job.info.name}: source holds {stats.nan} NaN and {stats.inf} Inf values")
    if stats.clamped:
        warnings.append(f"{job.info.name}: {stats.clamped} values beyond ±65504 clamped")
    return warnings

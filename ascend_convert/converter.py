"""HF/GGUF checkpoint → an Ascend layout (the README's convert section): the chip's dtype, checked
casts, safetensors written as they are computed, and a manifest with the sha256 of every byte.

One pipeline for every layout: plan from metadata (plan.py), W8A8's calibration (w8a8.py), a work
directory with a journal (workdir.py), the layout's weight files through the one write loop
(write_loop.py, with shard_writer.py or packed.py), the side files (side_files.py), the manifest
(manifest.py), and the rename that publishes the result. This module only puts them in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ascend_common.errors import CheckFailed

from .convert_options import ConvertOptions
from .manifest import build_manifest, hash_sources
from .packed import PackedWriter, layout_of
from .plan import ConversionPlan, make_plan
from .preflight.publish_check import check_before_publish
from .shard_writer import ShardWriter
from .side_files import write_side_files
from .w8a8 import calibrate_plan, journal_entries
from .workdir import WorkDir, refuse_existing
from .write_loop import write_files

__all__ = ["ConvertOptions", "ConvertResult", "Reporter", "convert"]  # ConvertOptions: callers import it here


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


def convert(src: Path, out: Path, options: ConvertOptions, reporter: Reporter | None = None,
            plan: ConversionPlan | None = None) -> ConvertResult:
    """Convert `src` into `out` (`plan`: already made by the caller, e.g. to print it first)."""
    src, out = Path(src), Path(out)
    reporter = reporter or Reporter()
    plan = plan or make_plan(src, out, options)
    try:
        if plan.quant is not None and plan.quant.kind == "w8a8":
            refuse_existing(plan.out, plan.options.force)  # before minutes of calibration, not after
            calibrate_plan(plan)  # before the work directory exists: a failed calibration leaves nothing behind
        if plan.packed:
            layout_of(plan)  # a model that does not split over --tp ranks fails before anything is written
        work = WorkDir.prepare(plan)
        if plan.calibration:
            work.journal.update(journal_entries(plan))
            work.save()
        writer = PackedWriter(plan, work) if plan.packed else ShardWriter(plan, work)
        names = [f.name for f in writer.files()]
        resumed = sorted(set(names) & set(work.journal.get(writer.journal_key, {})))
        hash_thread, source_files = hash_sources(plan)
        finished, warnings = write_files(writer, reporter)
        side_files = write_side_files(plan, work, names)
        if not plan.packed:  # the packed layout's reader is ascendkit's runtime, not an engine's loader
            try:
                warnings += check_before_publish(work.path, plan.out, plan.options.soc, plan.options.engine,
                                                 plan.quant is not None)
            except CheckFailed:
                work.mark_refused()  # kept for `ascendkit preflight`; a rerun says why it is there
                raise
        hash_thread.join()
        manifest = build_manifest(plan, work.path, finished, side_files, source_files, writer.target(),
                                  writer.source_cast())
        work.publish(manifest, plan.out)
        return ConvertResult(plan.out, manifest, plan, resumed, warnings)
    finally:
        reporter.end()  # a progress bar left running would garble the error line after it
        plan.reader.close()

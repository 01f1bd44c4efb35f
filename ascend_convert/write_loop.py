"""The one loop that writes a layout's weight files, whatever the layout.

A layout writer (shard_writer.py: HF names in shards, quantized or not; packed.py: tp{N}/rank{r}
files) says which files there are and what goes into each; this loop skips the files the journal
already holds, streams the rest through `SafetensorsStreamWriter` (hashing on a worker thread),
records each finished file and its tensors in the journal, and refuses the conversion when a cast
overflowed under `--on-overflow fail` — after scanning on, so the error lists every such tensor.
"""

from __future__ import annotations

import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ascend_common.errors import CheckFailed
from ascend_common.memory import release_freed_memory

from .cast import CastStats
from .safetensors_writer import PlannedTensor, SafetensorsStreamWriter
from .threads import leaving_a_core

if TYPE_CHECKING:
    import torch

    from .converter import Reporter
    from .plan import ConversionPlan
    from .workdir import WorkDir


def failpoint(files_done: int) -> None:
    """Fault injection for the resume tests: `ASCENDKIT_FAILPOINT=kill-after-shard:N` dies like a
    SIGKILL (no cleanup, no exception handlers) once N output files (shards, or rank files) are done."""
    spec = os.environ.get("ASCENDKIT_FAILPOINT", "")
    if spec.startswith("kill-after-shard:") and files_done == int(spec.split(":", 1)[1]):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class OutputFile:
    """One weight file of a layout: its name under the output directory, and the progress it counts
    for (bytes, tensors) when it is already done."""

    name: str
    nbytes: int
    tensors: int


@dataclass
class Piece:
    """A step of a file's content: the tensors to write, in header order, their manifest records
    (sha256 is added when the file is finished), the progress it counts for, and its warnings.
    A piece with no tensors only counts progress (a scan that goes on after an overflow)."""

    tensors: list[tuple[str, torch.Tensor]]
    records: dict[str, dict]
    nbytes: int
    tensor_count: int = 1
    warnings: list[str] = field(default_factory=list)


@dataclass
class FileContent:
    """A file's safetensors header (its tensors and metadata) and the pieces that fill it, lazily."""

    entries: list[PlannedTensor]
    metadata: dict[str, str]
    pieces: Iterable[Piece]


class Overflows:
    """The casts that overflowed the target dtype under `--on-overflow fail`, and the error that
    lists them (`limit` and `advice` are the layout's words for it)."""

    def __init__(self, plan: ConversionPlan, work: WorkDir, limit: str = "", advice: str = "") -> None:
        self.dtype, self.policy, self.work = plan.dtype, plan.options.on_overflow, work
        self.limit, self.advice = limit, advice
        self.found: dict[str, CastStats] = {}

    def check(self, name: str, stats: CastStats) -> None:
        if stats.overflow and self.policy == "fail":
            self.found[name] = stats

    def raise_if_any(self) -> None:
        """Nothing of a refused conversion is worth resuming: the work directory goes too."""
        if not self.found:
            return
        self.work.discard()
        listing = "; ".join(f"{name} ({s.overflow} values)" for name, s in self.found.items())
        raise CheckFailed(f"{len(self.found)} tensor(s) hold values beyond the {self.dtype} range{self.limit}, "
                          f"which a cast would turn into Inf: {listing} (use --on-overflow clamp to saturate "
                          f"them{self.advice})")


class LayoutWriter(ABC):
    """What a layout gives the write loop: its files, their contents, its journal key and its part
    of the manifest's target."""

    #: Where the journal lists this layout's finished files.
    journal_key: str

    def __init__(self, plan: ConversionPlan, work: WorkDir, overflows: Overflows) -> None:
        self.plan, self.work, self.overflows = plan, work, overflows

    @abstractmethod
    def files(self) -> list[OutputFile]: ...

    @abstractmethod
    def progress_total(self) -> tuple[int, int]:
        """(bytes, tensors) the progress bar counts to."""

    @abstractmethod
    def content(self, file: OutputFile) -> FileContent: ...

    @abstractmethod
    def target(self) -> dict:
        """The layout's part of the manifest's `target`."""

    def save_to_journal(self, journal: dict) -> None:
        """Anything beyond the finished files that a resumed run needs."""

    def source_cast(self) -> dict[str, dict]:
        """Cast statistics by source tensor, for layouts whose tensor records do not carry them."""
        return {}


#: Bytes written between two returns of freed memory to the OS: often enough that the allocator's
#: leftovers stay a fraction of the peak, rarely enough that a quantized conversion (many float32
#: temporaries per tensor) does not pay for faulting its pages back in after every tensor.
TRIM_EVERY = 64 << 20


def write_files(layout: LayoutWriter, reporter: Reporter) -> tuple[dict[str, dict], list[str]]:
    """Write every file of `layout` the journal does not hold; returns the journal's record of each
    file, in the layout's order, and the warnings (NaN/Inf in the source, clamped values)."""
    work = layout.work
    done = work.journal.setdefault(layout.journal_key, {})
    files = layout.files()
    reporter.begin(*layout.progress_total())
    warnings: list[str] = []
    since_trim = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hash-tensors") as pool, leaving_a_core():
        for file in files:
            if file.name in done:
                reporter.advance(file.nbytes, file.tensors)
                continue
            content = layout.content(file)
            path = work.path / file.name
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = None if layout.overflows.found else SafetensorsStreamWriter(
                path, content.entries, content.metadata, pool)
            records: dict[str, dict] = {}
            for piece in content.pieces:
                if layout.overflows.found:  # keep scanning so the error lists every overflowing tensor
                    if writer is not None:
                        writer.abort()
                        writer = None
                else:
                    _write(writer, piece.tensors)
                    records.update(piece.records)
                    warnings.extend(piece.warnings)
                reporter.advance(piece.nbytes, piece.tensor_count)
                since_trim += piece.nbytes
                del piece  # the bound on memory: no written tensor outlives its hashing
                if since_trim >= TRIM_EVERY:  # and what it freed leaves the process (ascend_common.memory)
                    release_freed_memory()
                    since_trim = 0
            if writer is None:
                continue
            file_sha, size, tensor_hashes = writer.finish()
            for name, digest in tensor_hashes.items():
                records[name]["sha256"] = digest
            done[file.name] = {"file": {"sha256": file_sha, "size": size}, "tensors": records}
            layout.save_to_journal(work.journal)
            work.save()
            failpoint(len(done))
    layout.overflows.raise_if_any()
    return {f.name: done[f.name] for f in files}, warnings


def _write(writer: SafetensorsStreamWriter, tensors: list[tuple[str, torch.Tensor]]) -> None:
    for name, tensor in tensors:
        writer.write(name, tensor)

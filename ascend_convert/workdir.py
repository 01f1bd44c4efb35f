"""The partial directory a conversion writes into, its journal, and the rename that publishes it.

Nothing is written at the output path until the end: files go to a hidden sibling
(`layout_names.partial_dir`), whose journal records every finished weight file (its sha256 and its
tensors' manifest records) and W8A8's calibration. `--resume` keeps what the journal lists if the
journal belongs to the same inputs and options (its fingerprint) and the files' bytes are intact;
the manifest goes in and the journal out only when everything is written, then the directory is
renamed into place in one step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ascend_common import __version__
from ascend_common.atomic_write import write_json_atomic
from ascend_common.errors import UserError

from .layout_names import JOURNAL_NAME, MANIFEST_NAME, partial_dir, replaced_dir
from .manifest import file_record, fsync_tree

if TYPE_CHECKING:
    from .plan import ConversionPlan


def refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise UserError(f"{out}: already exists (use --force to overwrite it)")


def fingerprint(plan: ConversionPlan) -> str:
    """What a journal must match to be resumed: tool version, source files (size, mtime), the
    planned tensors of every shard and the options that shape the output."""
    sources = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in plan.reader.weight_files()]
    layout = [(s.name, [[(p.name, p.dtype, p.shape) for p in j.parts] for j in s.jobs]) for s in plan.shards]
    key = json.dumps([__version__, str(plan.src.resolve()), sources, layout, plan.options.recorded()])
    return hashlib.sha256(key.encode()).hexdigest()


def resumable_journal(plan: ConversionPlan) -> dict | None:
    """The journal an interrupted run of this same plan left, when `--resume` asks for it (read
    before the work directory is prepared: W8A8 takes its calibration from it)."""
    path = partial_dir(plan.out) / JOURNAL_NAME
    if not plan.options.resume or not path.is_file():
        return None
    journal = json.loads(path.read_text(encoding="utf-8"))
    return journal if journal.get("fingerprint") == fingerprint(plan) else None


#: The journal's key of a conversion that preflight refused to publish.
REFUSED = "refused_by_preflight"


def _left_behind(work: Path) -> str:
    """What the partial directory a new run finds is, and what to do with it."""
    try:
        refused = json.loads((work / JOURNAL_NAME).read_text()).get(REFUSED, False)
    except (OSError, ValueError, AttributeError):
        refused = False
    if refused:
        return (f"{work}: a conversion the target engine's loader would refuse is there (kept for `ascendkit "
                f"preflight {work}`); rerun with --force to start over (with --engine none to publish it for another loader)")
    return f"{work}: an interrupted conversion is there; rerun with --resume to finish it, or --force to start over"


class WorkDir:
    """The partial directory of one conversion and its journal (`journal`, saved with `save`)."""

    def __init__(self, path: Path, journal: dict) -> None:
        self.path = path
        self.journal = journal

    @classmethod
    def prepare(cls, plan: ConversionPlan) -> WorkDir:
        """The partial directory and its journal: reused with --resume when it matches this plan,
        removed with --force, refused otherwise (an interrupted conversion is not overwritten
        unasked)."""
        out, opts = plan.out, plan.options
        refuse_existing(out, opts.force)
        work = partial_dir(out)
        key = fingerprint(plan)
        journal = {"fingerprint": key, "shards": {}}
        if work.exists():
            old = None
            if opts.resume:
                try:
                    old = json.loads((work / JOURNAL_NAME).read_text())
                except (OSError, ValueError):
                    old = None
            if old is not None and old.get("fingerprint") == key:
                journal = old
            elif opts.resume and old is not None:
                raise UserError(f"{work}: left by a conversion with other inputs or options; "
                                f"rerun with the same options, or --force to start over")
            elif not opts.force and not opts.resume:
                raise UserError(_left_behind(work))
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
        return cls(work, journal)

    def save(self) -> None:
        """The journal, atomically: a kill at any point leaves the old one or the new one."""
        write_json_atomic(self.path / JOURNAL_NAME, self.journal)

    def mark_refused(self) -> None:
        """The finished files were not published (preflight refused them): say so in the journal, so
        that a rerun tells a refused conversion from an interrupted one."""
        self.journal[REFUSED] = True
        self.save()

    def discard(self) -> None:
        """Remove everything (a failed check: nothing worth resuming)."""
        shutil.rmtree(self.path, ignore_errors=True)

    def clear_except(self, keep: set[str]) -> None:
        """Remove every entry but `keep` and the journal (a resumed run rewrites every small file)."""
        for stale in self.path.iterdir():
            if stale.name not in keep and stale.name != JOURNAL_NAME:
                stale.unlink() if stale.is_file() else shutil.rmtree(stale)

    def publish(self, manifest: dict, out: Path) -> None:
        """Manifest in, journal out, everything durable, then the directory renamed to `out`; an old
        `out` (only with --force) is moved aside first and removed after."""
        write_json_atomic(self.path / MANIFEST_NAME, manifest)
        (self.path / JOURNAL_NAME).unlink()
        fsync_tree(self.path)
        old = None
        if out.exists():
            old = replaced_dir(out, os.getpid())
            os.replace(out, old)
        os.replace(self.path, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

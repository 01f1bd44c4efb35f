"""Run a job in a forked child while this process goes on: for the two exports of check_ops, which
are pure Python tracing (one core each, no shared state), on machines with a core to spare."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from typing import TypeVar

from ascend_common.errors import UserError, first_line

T = TypeVar("T")


def in_child(job: Callable[[], T]) -> Callable[[], T]:
    """Start `job` now; return a function that waits for its (pickled) result or re-raises its error.
    Runs `job` right here, at the wait, where there is no second core or no fork."""
    if (os.cpu_count() or 1) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return job
    ctx = multiprocessing.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)

    def run() -> None:
        try:
            outcome = (True, job())
        except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
            outcome = (False, exc if isinstance(exc, UserError) else UserError(f"{type(exc).__name__}: {first_line(exc)}"))
        writer.send(outcome)

    child = ctx.Process(target=run, daemon=True)
    child.start()
    writer.close()

    def wait() -> T:
        try:
            ok, value = reader.recv()
        except EOFError:
            child.join()
            raise UserError(f"a worker process died (exit code {child.exitcode})") from None
        finally:
            reader.close()
        child.join()
        if not ok:
            raise value
        return value

    return wait

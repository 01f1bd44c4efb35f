"""One stage runner for both pipelines: numbers each stage ("[2/8] ..."), times it, shows it, and
decides what an exception in it becomes.

The two pipelines differ only in how a step looks and what an error does, so those are the runner's
two settings, not two runners:
- the display: the gate writes a log line per stage (stderr, read in CI logs); the demo shows a
  spinner on a terminal and a "✓ ... 24.1 s" line when the step is done (`ConsoleSteps`);
- errors: the demo lets an exception end the command (the CLI prints a UserError as one line); the
  gate, which must still write its reports, gets a `StageError` naming the stage and the reason in
  one line (`errors="stage"`), unless --debug asks for the traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from ascend_common.errors import UserError, first_line

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")


class StageError(Exception):
    """A stage that raised: `stage` is its name, str() the one line reports show ("convert: ...")."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage


def stage_error(stage: str, exc: BaseException) -> StageError:
    """A UserError says what to fix in its own words; anything else is named by its type too."""
    message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {first_line(exc)}"
    return StageError(stage, first_line(Exception(message)))


class Display(Protocol):
    """How a pipeline shows a step: `step` wraps it (`own_progress`: the step draws its own bar),
    `done` follows it."""

    def step(self, label: str, own_progress: bool) -> AbstractContextManager[None]: ...

    def done(self, label: str, seconds: float, own_progress: bool) -> None: ...


class LogLines:
    """One line per stage as it starts, through `say` (the gate: CI logs have no spinners)."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    @contextmanager
    def step(self, label: str, own_progress: bool) -> Iterator[None]:
        self.say(label)
        yield

    def done(self, label: str, seconds: float, own_progress: bool) -> None:
        """Nothing: the gate says what failed instead, as rules."""


class ConsoleSteps:
    """The demo's steps: on a terminal a spinner while a step runs, unless it draws its own bar; in a
    log, the step's line as it starts. Then a ✓ with its time."""

    def __init__(self, console: Console, live: bool) -> None:
        self.console, self.live = console, live

    def _spinning(self, own_progress: bool) -> bool:
        return self.live and not own_progress

    @contextmanager
    def step(self, label: str, own_progress: bool) -> Iterator[None]:
        if self._spinning(own_progress):
            with self.console.status(label):
                yield
        else:  # the step draws its own bar, or this is a log: say what starts
            self.console.print(label, highlight=False)
            yield

    def done(self, label: str, seconds: float, own_progress: bool) -> None:
        said = f"{label} ({seconds:.1f} s)" if self._spinning(own_progress) else f"    {seconds:.1f} s"
        self.console.print(f"[green]✓[/] {said}", highlight=False)


class StageRunner:
    """Runs a pipeline's stages one at a time; `seconds` holds each stage's time, an interrupted one's
    included. `errors`: "raise" lets an exception through as it is, "stage" turns it into a StageError."""

    def __init__(self, total: int, display: Display,
                 errors: Literal["raise", "stage"] = "raise", seconds: dict[str, float] | None = None) -> None:
        self.total, self.display, self.errors = total, display, errors
        self.seconds: dict[str, float] = {} if seconds is None else seconds
        self.started = 0

    def run(self, name: str, fn: Callable[[], T], own_progress: bool = False) -> T:
        self.started += 1
        label = f"[{self.started}/{self.total}] {name}"
        started = time.perf_counter()
        try:
            with self.display.step(label, own_progress):
                result = fn()
        except Exception as exc:
            self.seconds[name] = time.perf_counter() - started
            if self.errors == "stage":
                raise stage_error(name, exc) from exc
            raise
        self.seconds[name] = time.perf_counter() - started
        self.display.done(label, self.seconds[name], own_progress)
        return result

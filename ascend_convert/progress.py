"""A rich progress bar (bytes and tensors) for the converter; silent when stderr is not a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .converter import Reporter


class RichReporter(Reporter):
    def __init__(self, description: str, enabled: bool = True) -> None:
        self.console = Console(stderr=True)
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TextColumn("{task.fields[tensors]} tensors"), TimeRemainingColumn(), console=self.console,
            disable=not enabled, transient=False,
        )
        self._description = description
        self._task = None
        self._tensors = 0
        self._total_tensors = 0

    def begin(self, total_bytes: int, total_tensors: int) -> None:
        self._total_tensors = total_tensors
        self._progress.start()
        self._task = self._progress.add_task(self._description, total=total_bytes, tensors=f"0/{total_tensors}")

    def advance(self, nbytes: int, tensors: int = 1) -> None:
        self._tensors += tensors
        self._progress.update(self._task, advance=nbytes, tensors=f"{self._tensors}/{self._total_tensors}")

    def end(self) -> None:
        if self._task is not None:
            self._progress.stop()
            self._task = None

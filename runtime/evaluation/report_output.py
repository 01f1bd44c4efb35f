"""How bench, smoke and the serving benchmark hand their report over: JSON on stdout (`--json`) or
a rich table, and the JSON also written to `--output` when given."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def emit_report(report: dict[str, Any], as_json: bool, output: Path | None,
                printer: Callable[[dict[str, Any]], None]) -> None:
    from ascend_common.atomic_write import write_text_atomic

    text = json.dumps(report, indent=2)
    if output is not None:
        write_text_atomic(output, text + "\n")  # never a half-written report, even on Ctrl-C
    if as_json:
        click.echo(text)
    else:
        printer(report)


def figure(value: float | None, digits: int = 1) -> str:
    """A measured figure for a table: thousands separated, a dash where it was not measured."""
    return "—" if value is None else f"{value:,.{digits}f}"

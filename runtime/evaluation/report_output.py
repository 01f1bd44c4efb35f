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


def kv_cache_figures(info: dict[str, Any]) -> dict[str, Any]:
    """The KV cache a token takes (all layers) beside what full per-head keys and values would take:
    multi-head latent attention's saving (DeepSeek-V3: 576 values per layer against 40,960)."""
    ours, full = info.get("kv_bytes_per_token"), info.get("full_kv_bytes_per_token")
    return {"bytes_per_token": ours, "full_kv_bytes_per_token": full,
            "ratio": full / ours if ours and full else None,
            "attention_working_set_bytes": info.get("attention_working_set_bytes")}


def kv_cache_line(kv: dict[str, Any]) -> str | None:
    """`smoke`'s and `bench`'s one line on it (None when the server did not say)."""
    if not kv.get("bytes_per_token"):
        return None
    line = f"KV cache: {kv['bytes_per_token']:,} bytes per token"
    if kv["full_kv_bytes_per_token"] != kv["bytes_per_token"]:
        line += f" (latent; full keys and values would take {kv['full_kv_bytes_per_token']:,}: {kv['ratio']:.1f}x)"
    if kv.get("attention_working_set_bytes"):
        line += f"; attention gathers at most {kv['attention_working_set_bytes'] / 2**20:,.1f} MiB beside the pool"
    return line

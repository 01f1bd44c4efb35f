"""Human (rich tables) and machine (JSON) views of a conversion plan and its result."""

from __future__ import annotations

import json
from collections import Counter

from rich.console import Console
from rich.table import Table

from .converter import ConvertResult
from .layout_names import MANIFEST_NAME
from .plan import ConversionPlan


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"


def plan_dict(plan: ConversionPlan) -> dict:
    casts = Counter(f"{j.info.stored_as}->{j.out.dtype}" for s in plan.shards for j in s.jobs)
    return {"source": str(plan.src), "output": str(plan.out), "format": plan.reader.format,
            "family": plan.spec.family, "soc": plan.soc, "source_dtype": plan.source_dtype, "dtype": plan.dtype,
            "tensors": plan.total_tensors, "bytes": plan.total_bytes, "dropped": plan.dropped,
            "casts": dict(casts),
            "shards": [{"name": s.name, "tensors": len(s.jobs), "bytes": s.nbytes} for s in plan.shards]}


def print_plan(plan: ConversionPlan, as_json: bool = False) -> None:
    data = plan_dict(plan)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    console = Console()
    console.print(f"[bold]plan[/]: {data['source']} ({data['format']}, {data['family']}) → {data['output']}")
    console.print(f"target {data['soc']} {data['dtype']} (source {data['source_dtype']}); "
                  f"{data['tensors']} tensors, {human_bytes(data['bytes'])}; nothing written (--dry-run)")
    table = Table("shard", "tensors", "bytes")
    for s in data["shards"]:
        table.add_row(s["name"], str(s["tensors"]), human_bytes(s["bytes"]))
    console.print(table)
    casts = Table("source → target", "tensors")
    for k, v in sorted(data["casts"].items()):
        casts.add_row(k, str(v))
    console.print(casts)
    if data["dropped"]:
        console.print(f"dropped (derived buffers): {', '.join(data['dropped'])}")


def summary_dict(result: ConvertResult) -> dict:
    m = result.manifest
    records = [t for ts in m.get("rank_tensors", {}).values() for t in ts.values()] or list(m["tensors"].values())
    dtypes = Counter(t["dtype"] for t in records)
    files = m["summary"].get("shards", m["summary"].get("ranks"))
    return {"output": str(result.out), "family": m["source"]["family"], "format": m["source"]["format"],
            "soc": m["target"]["soc"], "dtype": m["target"]["dtype"], "tensors": m["summary"]["tensors"],
            "bytes": m["summary"]["bytes"], "shards": files, "layout": m["target"].get("layout", "default"),
            "dtypes": dict(dtypes),
            "cast": m["summary"]["cast"], "files": len(m["files"]), "resumed_shards": result.resumed_shards,
            "warnings": result.warnings}


def print_convert_summary(result: ConvertResult, as_json: bool = False) -> None:
    data = summary_dict(result)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    console = Console()
    table = Table(title=f"converted → {data['output']}", show_header=False)
    table.add_row("model", f"{data['family']} ({data['format']})")
    table.add_row("target", f"{data['soc']}, {data['dtype']}")
    unit = "rank file(s)" if data["layout"] == "packed" else "shard(s)"
    table.add_row("tensors", f"{data['tensors']} in {data['shards']} {unit}")
    table.add_row("bytes", human_bytes(data["bytes"]))
    table.add_row("dtypes", ", ".join(f"{k}: {v}" for k, v in sorted(data["dtypes"].items())))
    c = data["cast"]
    table.add_row("cast", f"overflow {c['overflow']}, clamped {c['clamped']}, underflow {c['underflow']}, "
                          f"NaN {c['nan']}, Inf {c['inf']}, max abs error {c['max_abs_error']:.3g}")
    table.add_row("manifest", f"{MANIFEST_NAME}: sha256 of {data['files']} files and {data['tensors']} tensors")
    if data["resumed_shards"]:
        table.add_row("resumed", f"{len(data['resumed_shards'])} shard(s) kept from the interrupted run")
    console.print(table)
    for w in data["warnings"]:
        console.print(f"[yellow]warning[/]: {w}")

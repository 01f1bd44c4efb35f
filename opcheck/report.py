"""check_ops reports: a rich table with one `fallback op: aten::X` line per finding, or JSON."""

from __future__ import annotations

import io
import json
from dataclasses import asdict

from .trace import Finding, OpUse


def report_dict(model: str, target: dict, uses: dict[str, OpUse], found: list[Finding]) -> dict:
    return {"model": model, "target": target, "ops": {"distinct": len(uses), "calls": sum(u.count for u in uses.values())},
            "findings": [asdict(f) for f in found], "clean": not found}


def render(fmt: str, model: str, target: dict, uses: dict[str, OpUse], found: list[Finding]) -> str:
    if fmt == "json":
        return json.dumps(report_dict(model, target, uses, found), indent=2) + "\n"
    from rich.console import Console
    from rich.table import Table

    buffer = io.StringIO()
    console = Console(file=buffer, width=140)
    console.print(f"check_ops {model}: {len(uses)} distinct aten ops, {sum(u.count for u in uses.values())} calls; "
                  f"target {target['soc']} {target['dtype']}, torch_npu {target['torch_npu']}")
    if found:
        table = Table("op", "kind", "count", "dtypes", "where", "what to do")
        for f in found:
            table.add_row(f.op, f.kind, str(f.count), ", ".join(f.dtypes), "\n".join(f.locations[:3]) or "-", f.advice)
        console.print(table)
    for f in found:
        label = "fallback op" if f.kind == "fallback" else "unsupported op"
        console.print(f"{label}: {f.op}", highlight=False)
    console.print("no findings: every op reaches an NPU kernel" if not found else f"{len(found)} finding(s)",
                  highlight=False)
    return buffer.getvalue()

"""bench_convert's results: the per-case medians, the targets they are held to, and the tables printed.

Kept apart from the runs so the JSON written and the tables printed come from one summary: the
medians over the reps per system and case, the convert/cp time ratio, and the three targets of the
converter (time <= TIME_RATIO_TARGET x cp -r; peak RSS <= RSS_TENSORS x the largest tensor +
RSS_OVERHEAD; flat RSS as the shard count doubles).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from process_measure import MB, Run

TIME_RATIO_TARGET = 2.0
RSS_TENSORS = 3  # target: peak RSS <= 3 x largest tensor + 400 MB
RSS_OVERHEAD = 400 * MB
FLAT_TOLERANCE = (0.05, 50 * MB)  # 2x shards may cost at most max(5 %, 50 MB) more


@dataclass
class Case:
    """A source checkpoint to convert, and the runs of every system on it."""

    key: str
    label: str
    src: Path
    shards: int
    src_bytes: int
    largest_name: str
    largest_bytes: int
    runs: dict[str, list[Run]] = field(default_factory=dict)


def median(xs: list[float]) -> float:
    """The median, NaN when no run succeeded (the table then shows it rather than failing)."""
    return statistics.median(xs) if xs else float("nan")

def summarise(cases: list[Case], flat_pair: tuple[str, str] | None) -> dict[str, Any]:
    """Per case and system: medians and every run's figures; per case: the targets met or not."""
    out: dict[str, Any] = {"cases": {}, "targets": {}}
    for case in cases:
        rows: dict[str, dict[str, Any]] = {}
        cp_ok = [r for r in case.runs.get("cp -r", []) if r.returncode == 0]
        cp_wall = median([r.wall_s for r in cp_ok])
        for system, runs in case.runs.items():
            ok = [r for r in runs if r.returncode == 0]
            wall = median([r.wall_s for r in ok])
            rows[system] = {
                "runs": len(runs), "ok": len(ok), "wall_s_median": wall,
                "wall_s": [r.wall_s for r in runs],
                "peak_rss_mb_median": median([r.peak_rss / MB for r in ok]),
                "peak_rss_mb": [r.peak_rss / MB for r in runs],
                "peak_anon_mb": [r.peak_anon / MB for r in runs],
                "peak_file_mb": [r.peak_file / MB for r in runs],
                "ru_maxrss_mb": [r.ru_maxrss / MB for r in runs],
                "samples": [r.samples for r in runs],
                "out_bytes": [r.out_bytes for r in runs],
                "returncodes": [r.returncode for r in runs],
                "ratio_to_cp": wall / cp_wall if cp_ok and ok else None,
            }
        conv = rows.get("convert", {})
        rss_limit = RSS_TENSORS * case.largest_bytes + RSS_OVERHEAD
        ran = "convert" in rows  # None = not measured (n/a); a failed convert is a FAIL
        targets = {
            "time_ratio": conv.get("ratio_to_cp"),
            "time_ratio_target": TIME_RATIO_TARGET,
            "time_pass": (conv.get("ratio_to_cp") is not None and conv["ratio_to_cp"] <= TIME_RATIO_TARGET)
            if ran else None,
            "rss_mb": conv.get("peak_rss_mb_median") if conv.get("ok") else None,
            "rss_limit_mb": rss_limit / MB,
            "rss_pass": (bool(conv.get("ok")) and conv["peak_rss_mb_median"] * MB <= rss_limit) if ran else None,
        }
        out["cases"][case.key] = {
            "label": case.label, "src": str(case.src), "shards": case.shards, "src_bytes": case.src_bytes,
            "largest_tensor": case.largest_name, "largest_tensor_bytes": case.largest_bytes, "systems": rows,
        }
        out["targets"][case.key] = targets
    if flat_pair:
        a, b = (out["cases"][k]["systems"].get("convert", {}).get("peak_rss_mb_median") for k in flat_pair)
        if a is not None and b is not None:
            allowed = max(a * FLAT_TOLERANCE[0], FLAT_TOLERANCE[1] / MB)
            out["targets"]["flat"] = {
                "cases": list(flat_pair), "rss_mb": [a, b], "growth_mb": b - a, "allowed_growth_mb": allowed,
                "pass": b - a <= allowed,
            }
    return out


def print_report(cases: list[Case], summary: dict[str, Any]) -> None:
    """The runs' table and the targets' table, with rich when it is installed, else aligned text."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain aligned text
        Console = None
    pf = lambda ok: "n/a" if ok is None else ("PASS" if ok else "FAIL")  # noqa: E731
    head = ["case", "system", "wall s (median)", "runs", "peak RSS MB (median)", "anon/file MB (max run)",
            "ru_maxrss MB", "time / cp"]
    rows: list[list[str]] = []
    for case in cases:
        for system, r in summary["cases"][case.key]["systems"].items():
            i = r["peak_rss_mb"].index(max(r["peak_rss_mb"])) if r["peak_rss_mb"] else 0
            rows.append([case.label, system, f"{r['wall_s_median']:.2f}", f"{r['ok']}/{r['runs']}",
                         f"{r['peak_rss_mb_median']:.0f}",
                         f"{r['peak_anon_mb'][i]:.0f}/{r['peak_file_mb'][i]:.0f}" if r["runs"] else "-",
                         f"{max(r['ru_maxrss_mb']):.0f}" if r["runs"] else "-",
                         f"{r['ratio_to_cp']:.2f}x" if r["ratio_to_cp"] is not None else "-"])
    thead = ["case", "convert/cp time", "target", "", "convert peak RSS MB", "limit 3xT+400", "", "largest tensor T"]
    trows: list[list[str]] = []
    for case in cases:
        t = summary["targets"][case.key]
        ratio = f"{t['time_ratio']:.2f}" if t["time_ratio"] is not None else "-"
        trows.append([case.label, ratio, f"<= {TIME_RATIO_TARGET:.1f}", pf(t["time_pass"]),
                      f"{t['rss_mb']:.0f}" if t["rss_mb"] is not None else "-", f"<= {t['rss_limit_mb']:.0f}",
                      pf(t["rss_pass"]), f"{case.largest_bytes / MB:.1f} MB ({case.largest_name})"])
    flat = summary["targets"].get("flat")
    flat_line = None
    if flat:
        flat_line = (f"flat RSS as shards grow: convert peak RSS {flat['rss_mb'][0]:.0f} MB -> {flat['rss_mb'][1]:.0f} MB "
                     f"({flat['growth_mb']:+.0f} MB, allowed +{flat['allowed_growth_mb']:.0f} MB): {pf(flat['pass'])}")
    if Console is None:
        for h, rs in ((head, rows), (thead, trows)):
            widths = [max(len(str(x)) for x in col) for col in zip(h, *rs)]
            for r in [h] + rs:
                print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
            print()
        if flat_line:
            print(flat_line)
        return
    console = Console(width=200)
    table = Table(title="bf16 -> fp16: wall time and peak RSS (medians)")
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i < 2 else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    ttable = Table(title="targets (convert)")
    for i, h in enumerate(thead):
        ttable.add_column(h, justify="left" if i in (0, 7) else "right")
    for r in trows:
        r = list(r)
        for j in (3, 6):
            r[j] = {"PASS": "[green]PASS[/]", "FAIL": "[red]FAIL[/]"}.get(r[j], r[j])
        ttable.add_row(*r)
    console.print(ttable)
    if flat_line:
        console.print(flat_line.replace("PASS", "[green]PASS[/]").replace("FAIL", "[red]FAIL[/]"))


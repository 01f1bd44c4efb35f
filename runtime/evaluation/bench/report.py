"""The benchmark report for a reader: the issue's targets checked, and the tables `ascendkit bench`
prints (one per workload, or the sweep's) with rich, imported only when printing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from runtime.evaluation.bench.systems import LABELS
from runtime.evaluation.report_output import figure as _f
from runtime.evaluation.report_output import kv_cache_line

# The targets: (workload, what, baseline, ">=" or "<=", bar)
TARGETS = (("single", "throughput", "hf", ">=", 2.0), ("batch64", "throughput", "hf", ">=", 2.0),
           ("batch64", "tpot_spread", None, "<=", 3.0), ("prefix", "ttft_p50", "runtime-no-cache", ">=", 3.0))


def _target_value(entry: dict[str, Any], what: str, baseline: str | None) -> float | None:
    if what == "tpot_spread":  # the runtime's TPOT p99 over its p50: decodes stalled behind prefills
        tpot = entry.get("systems", {}).get("runtime", {}).get("tpot_ms", {})
        return tpot["p99"] / tpot["p50"] if tpot.get("p99") and tpot.get("p50") else None
    return entry.get("ratios", {}).get(baseline, {}).get(what)


def targets(results: dict[str, dict]) -> list[dict[str, Any]]:
    """Each of the issue's targets the workloads measured: its value, its bar, pass or fail."""
    out = []
    for workload, what, baseline, direction, bar in TARGETS:
        value = _target_value(results.get(workload, {}), what, baseline)
        if value is None:
            continue
        text = {"throughput": f"runtime tok/s >= {bar:g}x {LABELS.get(baseline)}",
                "tpot_spread": f"runtime TPOT p99 <= {bar:g}x its p50",
                "ttft_p50": f"TTFT p50 >= {bar:g}x lower with the prefix cache"}[what]
        key, ok = ("at_least", value >= bar) if direction == ">=" else ("at_most", value <= bar)
        out.append({"workload": workload, "target": text, "value": value, key: bar, "pass": ok})
    return out


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _floor_line(floor: dict[str, Any] | None, systems: dict[str, dict]) -> str | None:
    """The weights' floor and each system's batch-1 decode as a share of it."""
    if not floor:
        return None
    if "error" in floor:
        return f"  floor: {floor['error']}"
    formats = " + ".join(f"{b / 1e6:.0f} MB {fmt}" for fmt, b in floor["formats"].items())
    line = (f"  floor: one pass of single-row matmuls over the weights a decode step reads ({formats}) takes "
            f"{_f(floor['ms'])} ms ({floor['gb_per_s']:.1f} GB/s): at most {_f(floor['tok_s'])} tok/s at batch 1")
    shares = [f"{systems[name]['label']} {share:.0%}" for name, share in floor.get("decode_share", {}).items()
              if share is not None]
    return line + ("; batch-1 decode as a share of it: " + ", ".join(shares) if shares else "")


def _system_row(label: str, m: dict[str, Any], ratio: dict | None) -> list[str]:
    t, p = m["ttft_ms"], m["tpot_ms"]
    return [label, _f(m["throughput_tok_s"]), _f(m["latency_ms_per_token"]), _f(m["memory_gb"], 2),
            _f(t["p50"]), _f(t["p99"]), _f(t["std"]), _f(p["p50"]), _f(p["p99"]), _f(p["std"]),
            str(m["generated_tokens"]), _x(ratio["throughput"]) if ratio else "—"]


COLUMNS = ("system", "tok/s", "ms/token", "memory GB", "TTFT p50", "TTFT p99", "TTFT std", "TPOT p50",
           "TPOT p99", "TPOT std", "tokens", "runtime ×")


def print_report(report: dict[str, Any]) -> None:
    """The report as `ascendkit bench` prints it without --json: what ran, then a table per workload
    (or the sweep's) and the targets."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 170)
    v = report["versions"]
    console.print(f"[bold]ascendkit bench[/] {report['model']} · {report['dtype']} · {report['device']} · "
                  f"{report['threads']} threads · median of {report['repeat']} interleaved runs · "
                  f"torch {v['torch']}, transformers {v['transformers']}"
                  + (f", llama-cpp-python {v['llama_cpp_python']}" if v.get("llama_cpp_python") else ""))
    src = report["source"]
    console.print(f"  runtime at {src['git_commit'] or 'an unknown commit'}"
                  + (f" with local changes in {', '.join(src['runtime_local_changes'])}" if src["runtime_local_changes"]
                     else "") + (" [red](its sources changed during the run)[/]" if src["runtime_changed_during_run"]
                                 else ""))
    for name, why in report["skipped"].items():
        console.print(f"  skipped {name}: {why}")
    lc = report["systems"].get("llama-cpp")
    if lc:
        console.print(f"  llama-cpp runs {Path(lc['gguf']).name}"
                      + ("" if lc["same_weights"] else " (its own weights, not MODEL's: compare with care)"))
    rt = report["systems"]["runtime"]
    console.print(f"  runtime KV pool: {rt['kv_pool_gb']:.3f} GB pre-allocated ({rt['kv_blocks']} blocks of "
                  f"{rt['block_size']} tokens), counted in its memory; times in ms; runtime × = runtime tok/s ÷ "
                  f"this system's")
    kv_line = kv_cache_line(rt.get("kv_cache", {}))
    if kv_line:
        console.print(f"  runtime {kv_line}")
    floor_line = _floor_line(report.get("floor"), report["systems"])
    if floor_line:
        console.print(floor_line)
    for name, entry in report.get("workloads", {}).items():
        table = Table(title=f"{name}: {entry['description']}", title_justify="left")
        for i, col in enumerate(COLUMNS):
            table.add_column(col, justify="left" if i == 0 else "right")
        for system, m in entry["systems"].items():
            table.add_row(*_system_row(report["systems"][system]["label"], m, entry["ratios"].get(system)))
        console.print(table)
        if not entry["tokens_equal"]:
            console.print("[red]  the systems generated different numbers of tokens[/]")
        pc = entry.get("prefix_cache")
        if pc:
            console.print(f"  prefix cache: TTFT p50 {_f(pc['ttft_p50_ms_uncached'])} ms without, "
                          f"{_f(pc['ttft_p50_ms_cached'])} ms with ({_x(pc['ttft_speedup'])} lower); "
                          f"{pc['hit_tokens_per_run']:.0f} prompt tokens served from the cache per run")
    for t in report.get("targets", []):
        mark = "[green]PASS[/]" if t["pass"] else "[red]FAIL[/]"
        console.print(f"  target {t['workload']}: {t['target']}: {_x(t['value'])} {mark}")
    sweep = report.get("sweep")
    if sweep:
        table = Table(title=f"sweep: batch sizes, {sweep['prompt_len']} in / {sweep['new_tokens']} out, "
                            f"TPOT ceiling {sweep['tpot_ms_ceiling']:g} ms", title_justify="left")
        for i, col in enumerate(("batch", "runtime tok/s", "TTFT p50", "TPOT p50", "TPOT p99", "memory GB",
                                 "hf tok/s", "runtime ×", "under ceiling")):
            table.add_column(col, justify="right")
        for s in sweep["sizes"]:
            r, hf = s["runtime"], s.get("hf")
            tpot = r["tpot_ms"]["p50"]
            table.add_row(str(s["batch"]), _f(r["throughput_tok_s"]), _f(r["ttft_ms"]["p50"]), _f(tpot),
                          _f(r["tpot_ms"]["p99"]), _f(r["memory_gb"], 2), _f(hf["throughput_tok_s"]) if hf else "—",
                          _x(s["ratios"]["hf"]["throughput"]) if hf else "—",
                          "yes" if tpot is not None and tpot <= sweep["tpot_ms_ceiling"] else "no")
        console.print(table)
        rec = sweep["recommended"]
        if rec["max_num_seqs"] is None:
            console.print(f"  no recommendation: {rec['reason']}")
        else:
            console.print(f"  recommended max_num_seqs = {rec['max_num_seqs']} ({_f(rec['throughput_tok_s'])} tok/s, "
                          f"TPOT p50 {_f(rec['tpot_p50_ms'])} ms: {rec['reason']})")


"""The figures of a benchmark: one run summarized, the medians over the repeats, the runtime's
ratios to each baseline, and the sweep's recommended batch size.

Definitions (per run; the reported figure is the median over the repeats):
- throughput: generated tokens / wall time of the workload (first request in → last token out);
- average latency: mean over requests of (last token time − arrival) / tokens generated;
- TTFT: first token time − arrival, per request; TPOT: every gap between two successive tokens of a
  request, pooled over the requests (so p99 and std show the jitter a decoding client sees);
- memory: what loading the system added (weights; the runtime's pre-allocated KV pool too) plus the
  largest peak above that level during its runs — peak RSS on CPU, the allocator's peak on CUDA/NPU.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field
from typing import Any

from runtime.evaluation.bench.stats import distribution

GB = 10**9


@dataclass
class Run:
    """What one system did on one workload: per request its arrival, token times and tokens."""

    arrivals: list[float]
    token_times: list[list[float]]
    token_ids: list[list[int]]
    start: float
    end: float
    peak_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def summarize(run: Run) -> dict[str, Any]:
    """One run's figures (see the definitions above), and whatever the system added in `extra`."""
    counts = [len(t) for t in run.token_times]
    generated = sum(counts)
    wall = run.end - run.start
    ttft = [(t[0] - a) * 1000 for a, t in zip(run.arrivals, run.token_times) if t]
    gaps = [(b - a) * 1000 for t in run.token_times for a, b in itertools.pairwise(t)]
    latency = [(t[-1] - a) * 1000 / len(t) for a, t in zip(run.arrivals, run.token_times) if t]
    return {"generated_tokens": generated, "tokens_per_request": counts, "wall_s": wall,
            "throughput_tok_s": generated / wall if wall > 0 else None,
            "latency_ms_per_token": statistics.fmean(latency) if latency else None,
            "ttft_ms": distribution(ttft), "tpot_ms": distribution(gaps), **run.extra}


def _median(values: list[Any]) -> Any:
    """The median of numbers, recursively of dicts of them; anything else (a list, a None among
    numbers) is taken from the first run."""
    if all(isinstance(v, dict) for v in values):
        return {k: _median([v.get(k) for v in values]) for k in values[0]}
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers and len(numbers) == len(values):
        return statistics.median(numbers)
    return values[0]


def combine(runs: list[dict[str, Any]], weights_bytes: int | None, peaks: list[int | None]) -> dict[str, Any]:
    """The medians over the repeats, each run's throughput, and the memory figure."""
    merged = _median(runs)
    merged["generated_tokens"] = runs[0]["generated_tokens"]
    merged["tokens_per_request"] = runs[0]["tokens_per_request"]
    merged["runs"] = [{"throughput_tok_s": r["throughput_tok_s"], "wall_s": r["wall_s"]} for r in runs]
    known = [p for p in peaks if p is not None]
    merged["run_peak_gb"] = max(known) / GB if known else None
    merged["memory_gb"] = ((weights_bytes or 0) + max(known, default=0)) / GB if weights_bytes is not None else None
    return merged


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    """How the runtime compares to a baseline: throughput and memory ours/theirs, latency and TTFT
    theirs/ours (so > 1 always reads "the runtime is better" except for memory)."""
    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b not in (None, 0) else None
    return {"throughput": div(ours["throughput_tok_s"], theirs["throughput_tok_s"]),
            "latency": div(theirs["latency_ms_per_token"], ours["latency_ms_per_token"]),
            "ttft_p50": div(theirs["ttft_ms"]["p50"], ours["ttft_ms"]["p50"]),
            "tpot_p50": div(theirs["tpot_ms"]["p50"], ours["tpot_ms"]["p50"]),
            "memory": div(ours["memory_gb"], theirs["memory_gb"])}


def recommend(sweep: list[dict[str, Any]], ceiling_ms: float) -> dict[str, Any]:
    """The batch size with the best runtime throughput whose TPOT p50 stays under the ceiling."""
    ok = [s for s in sweep if s["runtime"]["tpot_ms"]["p50"] is not None and s["runtime"]["tpot_ms"]["p50"] <= ceiling_ms]
    if not ok:
        return {"max_num_seqs": None, "reason": f"even a batch of {sweep[0]['batch']} has a TPOT p50 above "
                                                f"{ceiling_ms:g} ms"}
    best = max(ok, key=lambda s: (s["runtime"]["throughput_tok_s"], -s["batch"]))
    return {"max_num_seqs": best["batch"], "throughput_tok_s": best["runtime"]["throughput_tok_s"],
            "tpot_p50_ms": best["runtime"]["tpot_ms"]["p50"],
            "reason": f"the best throughput among batch sizes with TPOT p50 <= {ceiling_ms:g} ms"}

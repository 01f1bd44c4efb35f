"""The benchmark itself: load every system, run the workloads interleaved, and build the report
(the figures, the machine, the versions and the runtime code that ran).

Runs are interleaved — for each repeat, for each workload, every system back to back, the order
reversed on odd repeats — and the medians are reported, so the noise of a shared machine hits every
system alike. torch and transformers are imported inside `run_bench`, not at import.
"""

from __future__ import annotations

import gc
import logging
import os
import platform as host_platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ascend_common.errors import UserError
from ascend_common.sizes import parse_size
from runtime.evaluation.bench.figures import (
    GB,
    Run,
    combine,
    ratios,
    recommend,
    summarize,
)
from runtime.evaluation.bench.metering import MemoryMeter
from runtime.evaluation.bench.report import targets
from runtime.evaluation.bench.systems import (
    HF_BATCH_PAGE,
    LABELS,
    BenchConfig,
    HFBatchSystem,
    HFStaticSystem,
    LlamaCppSystem,
    RuntimeSystem,
    System,
    unavailable_reason,
)
from runtime.evaluation.bench.workloads import (
    BASELINES,
    WORKLOADS,
    Workload,
    make_workloads,
    sweep_workloads,
)


class _Progress:
    """A rich progress bar on stderr, or nothing: the benchmark calls it the same either way."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("bench", total=total)
            self.bar.start()

    def step(self, description: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=description)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _load(system: System, meter: MemoryMeter, progress: _Progress) -> None:
    """Load `system`, recording the bytes it added (plus any it borrowed): its loaded memory."""
    progress.step(f"loading {system.name}")
    system.meter = meter
    before = meter.current()
    system.load()
    after = meter.current()
    system.weights_bytes = after - before + system.borrowed_bytes if before is not None and after is not None else None


def _timed(system: System, prompts: list[list[int]], new_tokens: int, meter: MemoryMeter) -> Run:
    """One metered run, refused unless every request generated exactly `new_tokens`: the figures
    compare systems only when they did the same work."""
    meter.start()
    run = system.run(prompts, new_tokens)
    run.peak_bytes = meter.stop()
    counts = [len(t) for t in run.token_ids]
    if counts != [new_tokens] * len(prompts) or [len(t) for t in run.token_times] != counts:
        raise RuntimeError(f"{system.name} generated {sum(counts)} tokens, expected {new_tokens} for each of "
                           f"{len(prompts)} requests")
    return run


def run_workloads(systems: list[System], workloads: list[Workload], cfg: BenchConfig, repeat: int, vocab: int,
                  meter: MemoryMeter, progress: _Progress, each_repeat: Callable[[], None] = lambda: None
                  ) -> dict[str, dict]:
    """Interleaved: for each repeat, for each workload, every system back to back (the order
    reversed on odd repeats). The no-cache runtime runs the prefix workload only. `each_repeat` runs
    at the start of every repeat (the floor's measurement, so it sees the same machine)."""
    runs: dict[tuple[str, str], list[Run]] = {}
    for rep in range(repeat):
        progress.step(f"repeat {rep + 1}/{repeat} · the weights' floor")
        each_repeat()
        order = systems if rep % 2 == 0 else systems[::-1]
        for w in workloads:
            prompts = w.prompts(vocab, cfg.seed, rep)
            for system in order:
                if system.name == "runtime-no-cache" and not w.prefix_len:
                    continue
                progress.step(f"repeat {rep + 1}/{repeat} · {w.name} · {system.name}")
                if w.prefix_len:
                    system.prime(w.primer(vocab, cfg.seed, rep))
                runs.setdefault((w.name, system.name), []).append(_timed(system, prompts, w.new_tokens, meter))
                progress.advance()
    results: dict[str, dict] = {}
    for w in workloads:
        entry: dict[str, Any] = {"description": w.description, "requests": w.num_requests,
                                 "prompt_tokens": sum(w.prompt_lens), "prompt_len_min": min(w.prompt_lens),
                                 "prompt_len_max": max(w.prompt_lens), "new_tokens": w.new_tokens,
                                 "prefix_len": w.prefix_len, "systems": {}, "ratios": {}}
        ours_tokens = None
        for system in systems:
            if (w.name, system.name) not in runs:
                continue
            rs = runs[(w.name, system.name)]
            metrics = combine([summarize(r) for r in rs], system.weights_bytes, [r.peak_bytes for r in rs])
            if system.name == "runtime":
                ours_tokens = [r.token_ids for r in rs]
            elif ours_tokens is not None:
                same = sum(a == b for ours, theirs in zip(ours_tokens, rs) for a, b in zip(ours, theirs.token_ids))
                metrics["same_tokens_as_runtime"] = same / (len(rs) * w.num_requests)
            entry["systems"][system.name] = metrics
        ours = entry["systems"].get("runtime")
        for name, theirs in entry["systems"].items():
            if name != "runtime" and ours is not None:
                entry["ratios"][name] = ratios(ours, theirs)
        counts = {m["generated_tokens"] for m in entry["systems"].values()}
        entry["tokens_equal"] = len(counts) == 1
        if w.prefix_len and ours is not None and "runtime-no-cache" in entry["systems"]:
            plain = entry["systems"]["runtime-no-cache"]
            entry["prefix_cache"] = {
                "ttft_p50_ms_cached": ours["ttft_ms"]["p50"], "ttft_p50_ms_uncached": plain["ttft_ms"]["p50"],
                "ttft_mean_ms_cached": ours["ttft_ms"]["mean"], "ttft_mean_ms_uncached": plain["ttft_ms"]["mean"],
                "ttft_speedup": entry["ratios"]["runtime-no-cache"]["ttft_p50"],
                "hit_tokens_per_run": ours.get("prefix_cache_hit_tokens")}
        results[w.name] = entry
    return results


def _kv_bytes_needed(model: Path, dtype: str, workloads: list[Workload], block_size: int = 16) -> int:
    """A KV pool that holds the largest workload at once (with 10 % to spare): no preemption, and no
    more resident memory than the work needs."""
    from runtime.model.loader import open_model

    block = open_model(model).config.kv_block_bytes(block_size, dtype)
    blocks = max(sum(-(-(n + w.new_tokens) // block_size) for n in w.prompt_lens) + 2 for w in workloads)
    return int(blocks * 1.1 + 8) * block


def _source_state() -> dict[str, Any]:
    """The runtime code that ran: git commit, local changes under runtime/, and a hash of its sources
    (the checkout may change under a long run; the report says so)."""
    import hashlib
    import subprocess

    import runtime

    root = Path(runtime.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "--no-optional-locks", "-C", str(root.parent), *args], check=False,
                                  capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    changes = git("status", "--porcelain", "--", "runtime")
    return {"git_commit": (git("rev-parse", "--short", "HEAD") or "").strip() or None,
            "runtime_local_changes": [line[3:] for line in changes.splitlines()] if changes else [],
            "runtime_sha256": digest.hexdigest()[:16]}


def _versions() -> dict[str, str | None]:
    """The versions of what ran (None: not installed), read from metadata without importing them."""
    import importlib.metadata as md

    out = {"python": host_platform.python_version()}
    for dist in ("torch", "transformers", "llama_cpp_python"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def run_bench(model: Path, *, dtype: str | None = None, device: str = "cpu", workloads: list[str] | None = None,
              baselines: list[str] | None = None, prompt_len: int | None = None, new_tokens: int | None = None,
              repeat: int = 3, threads: int | None = None, kv_cache_memory: str | None = None,
              sweep_sizes: list[int] | None = None, tpot_ms: float = 100.0, gguf: Path | None = None,
              seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """The whole benchmark; returns the report (what `--json` prints). With `sweep_sizes`, the sweep
    runs instead of the workloads."""
    model = Path(model)
    if not model.exists():
        raise UserError(f"{model}: no such file or directory")
    source = _source_state()
    if gguf is not None and not Path(gguf).is_file():
        raise UserError(f"--gguf {gguf}: no such file")
    names = workloads or list(WORKLOADS)
    wanted = list(BASELINES) if baselines is None else baselines
    plan = sweep_workloads(sweep_sizes, prompt_len, new_tokens) if sweep_sizes else make_workloads(names, prompt_len, new_tokens)

    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF de-quantizing bar (read when tqdm loads)
    import torch

    from runtime.engine.llm_engine import compute_dtype
    from runtime.evaluation.bench.floor import FloorMeter
    from runtime.model.loader import open_model
    from runtime.platform import resolve

    threads = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    torch.set_num_threads(threads)
    ckpt_cfg = open_model(model).config
    plat = resolve(device)
    dtype = compute_dtype(dtype, ckpt_cfg.dtype, plat.name)  # what the runtime computes in; transformers too
    max_len = max(max(w.prompt_lens) + w.new_tokens for w in plan)
    if max_len > ckpt_cfg.max_position_embeddings:
        raise UserError(f"the longest request ({max_len} tokens) does not fit the model's context of "
                        f"{ckpt_cfg.max_position_embeddings}: lower --prompt-len or --new-tokens")
    kv = parse_size(kv_cache_memory, f"kv_cache_memory {kv_cache_memory!r}: expected bytes or a size such as 2GiB or 512MiB") if kv_cache_memory not in (None, "auto") else \
        _kv_bytes_needed(model, dtype, plan)
    max_seqs = max(64, max(w.num_requests for w in plan))
    if gguf is None and model.is_file() and model.suffix == ".gguf":
        gguf = model
    hf_blocks = max(sum(-(-(n + w.new_tokens) // HF_BATCH_PAGE) for n in w.prompt_lens) for w in plan)
    cfg = BenchConfig(model, dtype, device, threads, kv, max_seqs, max_len, Path(gguf) if gguf else None, seed,
                      int(hf_blocks * 1.1) + 4)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.ERROR)
    skipped = {name: why for name in wanted if (why := unavailable_reason(name, cfg)) is not None}
    if sweep_sizes:
        skipped.update({name: "the sweep compares with the static batch only" for name in wanted
                        if name != "hf" and name not in skipped})
    shared: dict = {}
    systems: list[System] = [RuntimeSystem(cfg)]
    if any(w.prefix_len for w in plan):
        systems.append(RuntimeSystem(cfg, prefix_caching=False))
    for name in wanted:
        if name in skipped:
            continue
        systems.append({"hf": lambda: HFStaticSystem(cfg, shared), "hf-batch": lambda: HFBatchSystem(cfg, shared),
                        "llama-cpp": lambda: LlamaCppSystem(cfg),
                        "runtime-compiled": lambda: RuntimeSystem(cfg, compile_decode=True)}[name]())
    meter = MemoryMeter(plat.name)
    runs_total = repeat * sum(1 + sum(1 for s in systems[1:] if s.name != "runtime-no-cache" or w.prefix_len)
                              for w in plan)
    bar = _Progress(progress, runs_total + len(systems))
    try:
        for system in systems:
            _load(system, meter, bar)
            bar.advance()
        runner = systems[0].llm.engine.runner
        floor = FloorMeter(runner.model, runner.dtype, runner.device)
        gc.collect()
        gc.freeze()  # what is loaded stays: the collection before each run then takes ms, not a second
        results = run_workloads(systems, plan, cfg, repeat, ckpt_cfg.vocab_size, meter, bar, floor.measure)
    finally:
        bar.close()
    report: dict[str, Any] = {
        "model": str(model), "dtype": dtype, "device": plat.name, "threads": threads, "repeat": repeat,
        "seed": seed, "kv_cache_memory_bytes": kv, "versions": _versions(),
        "source": {**source, "runtime_changed_during_run": _source_state()["runtime_sha256"] != source["runtime_sha256"]},
        "machine": {"cpus": os.cpu_count(), "platform": host_platform.platform(),
                    "processor": host_platform.processor() or host_platform.machine()},
        "systems": {s.name: {"label": LABELS[s.name], "loaded_gb": (s.weights_bytes / GB if s.weights_bytes is not None
                                                                      else None), **s.info} for s in systems},
        "skipped": skipped,
    }
    if sweep_sizes:
        sizes = []
        for n, w in zip(sweep_sizes, plan):
            entry = {"batch": n, **{k: v for k, v in results[w.name]["systems"].items()},
                     "ratios": results[w.name]["ratios"]}
            sizes.append(entry)
        report["sweep"] = {"tpot_ms_ceiling": tpot_ms, "prompt_len": plan[0].prompt_lens[0],
                           "new_tokens": plan[0].new_tokens, "sizes": sizes, "recommended": recommend(sizes, tpot_ms)}
        at_batch_1 = next((s for s in sizes if s["batch"] == 1), {})
    else:
        report["workloads"] = results
        report["targets"] = targets(results)
        at_batch_1 = results.get("single", {}).get("systems", {})
    report["floor"] = floor.figures(at_batch_1)
    return report


"""`ascendkit bench MODEL`: the runtime side by side with transformers (and llama.cpp) in one process.

Every system runs the same prompts (seeded token ids) on the same weights, in the same dtype, on the
same threads, and generates exactly the same number of tokens (`ignore_eos` + `min_tokens` here,
`min_new_tokens` in transformers, EOS disabled in `generate_batch`). Runs are interleaved — for each
repeat, for each workload, every system back to back, the order reversed on odd repeats — and the
medians are reported, so the noise of a shared machine hits every system alike. What the seed article's
table shows: throughput (tokens/s), average latency (ms/token), memory (GB), plus TTFT and TPOT
(p50, p99, standard deviation) and the ratio of the runtime to each baseline.

Definitions (per run; the reported figure is the median over the repeats):
- throughput: generated tokens / wall time of the workload (first request in → last token out);
- average latency: mean over requests of (last token time − arrival) / tokens generated;
- TTFT: first token time − arrival, per request; TPOT: every gap between two successive tokens of a
  request, pooled over the requests (so p99 and std show the jitter a decoding client sees);
- memory: what loading the system added (weights; the runtime's pre-allocated KV pool too) plus the
  largest peak above that level during its runs — peak RSS on CPU, the allocator's peak on CUDA/NPU.

Nothing heavy is imported at module level: `ascendkit --help` must stay fast.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import platform as host_platform
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ascend_common.cli_support import debug_option, output_file
from ascend_common.errors import UserError
from ascend_common.sizes import parse_size
from runtime.engine.options import DEVICE_CHOICES, DTYPE_CHOICES
from runtime.evaluation.bench.serving import (
    DEFAULT_CONCURRENCY,
    bench_server,
    bench_started_server,
    print_serving_report,
)
from runtime.evaluation.bench.stats import distribution
from runtime.evaluation.report_output import emit_report
from runtime.evaluation.report_output import figure as _f

WORKLOADS = ("single", "batch16", "batch64", "prefix")
BASELINES = ("hf", "hf-batch", "llama-cpp")
SWEEP_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
DEFAULT_PROMPT_LEN = 128
DEFAULT_NEW_TOKENS = 128
PREFIX_REQUESTS = 16
PREFIX_FACTOR = 4  # the shared prefix is 4 × --prompt-len tokens (512 by default)
LOW_TOKEN_ID = 100  # prompt ids are drawn above the usual special-token range
HF_BATCH_PAGE = 256  # generate_batch's default page (tokens per KV block)
HF_BATCH_TOKENS = 2048  # its token budget per step: the runtime's default
GB = 10**9
LABELS = {
    "runtime": "runtime",
    "runtime-no-cache": "runtime, prefix cache off",
    "hf": "transformers generate (static batch)",
    "hf-batch": "transformers generate_batch",
    "llama-cpp": "llama-cpp-python (sequential)",
}
# The targets: (workload, what, baseline, at least)
TARGETS = (("single", "throughput", "hf", 2.0), ("batch64", "throughput", "hf", 2.0),
           ("prefix", "ttft_p50", "runtime-no-cache", 3.0))


# -- workloads -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """A set of requests submitted together: their prompt lengths and how many tokens each generates."""

    name: str
    description: str
    prompt_lens: tuple[int, ...]
    new_tokens: int
    prefix_len: int = 0  # tokens every prompt shares at its start (part of prompt_lens)

    @property
    def num_requests(self) -> int:
        return len(self.prompt_lens)

    def prompts(self, vocab: int, seed: int, rep: int) -> list[list[int]]:
        """Seeded token ids, new ones each repeat (so no run is served by the previous run's prefix
        cache); the lengths, hence the work, stay the same."""
        rng = random.Random(f"{seed}:{self.name}:{rep}")
        low = min(LOW_TOKEN_ID, vocab // 2)
        prefix = [rng.randrange(low, vocab) for _ in range(self.prefix_len)]
        return [prefix + [rng.randrange(low, vocab) for _ in range(n - self.prefix_len)] for n in self.prompt_lens]

    def primer(self, vocab: int, seed: int, rep: int) -> list[int]:
        """The shared prefix and a suffix of its own: run once, untimed, before the timed requests, as
        earlier traffic with the same system prompt would have."""
        prefix = self.prompts(vocab, seed, rep)[0][: self.prefix_len]
        rng = random.Random(f"{seed}:{self.name}:{rep}:primer")
        low = min(LOW_TOKEN_ID, vocab // 2)
        return prefix + [rng.randrange(low, vocab) for _ in range(max(1, self.prompt_lens[0] - self.prefix_len))]


def _mixed(name: str, count: int, prompt_len: int) -> tuple[int, ...]:
    rng = random.Random(f"lengths:{name}")
    return tuple(rng.randint(max(1, prompt_len // 4), 2 * prompt_len) for _ in range(count))


def make_workloads(names: list[str], prompt_len: int | None = None, new_tokens: int | None = None) -> list[Workload]:
    length = prompt_len or DEFAULT_PROMPT_LEN
    new = new_tokens or DEFAULT_NEW_TOKENS
    out = []
    for name in names:
        if name == "single":
            out.append(Workload(name, f"1 request, {length} in / {new} out", (length,), new))
        elif name in ("batch16", "batch64"):
            count = int(name[5:])
            lens = _mixed(name, count, length)
            out.append(Workload(name, f"{count} requests, {min(lens)}-{max(lens)} in / {new} out", lens, new))
        elif name == "prefix":
            prefix = PREFIX_FACTOR * length
            rng = random.Random("lengths:prefix")
            lens = tuple(prefix + rng.randint(max(1, length // 16), max(1, length // 4)) for _ in range(PREFIX_REQUESTS))
            n = max(2, new // 4)
            out.append(Workload(name, f"{PREFIX_REQUESTS} requests sharing a {prefix}-token prefix, "
                                      f"{min(lens)}-{max(lens)} in / {n} out", lens, n, prefix))
        else:  # parse_list has checked the names
            raise AssertionError(name)
    return out


def sweep_workloads(sizes: list[int], prompt_len: int | None, new_tokens: int | None) -> list[Workload]:
    length = prompt_len or DEFAULT_PROMPT_LEN
    new = new_tokens or DEFAULT_NEW_TOKENS
    return [Workload(f"sweep{n}", f"{n} requests, {length} in / {new} out", (length,) * n, new) for n in sizes]


def parse_list(value: str, allowed: tuple[str, ...], option: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise UserError(f"{option}: give at least one of {', '.join(allowed)}")
    for name in names:
        if name not in allowed:
            raise UserError(f"{option}: unknown name {name!r} (expected {', '.join(allowed)})")
    return list(dict.fromkeys(names))


def parse_sizes(value: str, option: str = "--sweep-sizes") -> list[int]:
    try:
        sizes = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise UserError(f"{option} {value!r}: expected a comma list of sizes, e.g. 1,2,4,8") from None
    if not sizes or sizes[0] < 1:
        raise UserError(f"{option} {value!r}: sizes must be at least 1")
    return sizes


# -- one run and its figures -------------------------------------------------------------------------
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
    def div(a, b):
        return a / b if a is not None and b not in (None, 0) else None
    return {"throughput": div(ours["throughput_tok_s"], theirs["throughput_tok_s"]),
            "latency": div(theirs["latency_ms_per_token"], ours["latency_ms_per_token"]),
            "ttft_p50": div(theirs["ttft_ms"]["p50"], ours["ttft_ms"]["p50"]),
            "tpot_p50": div(theirs["tpot_ms"]["p50"], ours["tpot_ms"]["p50"]),
            "memory": div(ours["memory_gb"], theirs["memory_gb"])}


# -- memory ------------------------------------------------------------------------------------------
def _rss() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss


def _hwm() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _reset_hwm() -> bool:
    """Linux resets the peak RSS (VmHWM) to the current RSS when 5 is written to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Bytes in use, and the peak above the level at `start()`: the allocator's on CUDA/NPU; on CPU
    the process's RSS (its kernel-kept peak where it can be reset, else sampled every 2 ms)."""

    def __init__(self, device_kind: str) -> None:
        self.kind = device_kind
        self._base = 0
        self._peak = 0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._hwm = False

    def _device(self):
        import torch

        return getattr(torch, self.kind)

    def current(self) -> int | None:
        gc.collect()
        if self.kind != "cpu":
            self._device().synchronize()
            return self._device().memory_allocated()
        return _rss()

    def start(self) -> None:
        gc.collect()
        if self.kind != "cpu":
            dev = self._device()
            dev.synchronize()
            dev.reset_peak_memory_stats()
            self._base = dev.memory_allocated()
            return
        self._base = _rss() or 0
        self._peak = self._base
        self._hwm = _reset_hwm() and _hwm() is not None
        if not self._hwm and _rss() is not None:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _rss() or 0)

    def stop(self) -> int | None:
        if self.kind != "cpu":
            dev = self._device()
            dev.synchronize()
            return dev.max_memory_allocated() - self._base
        if self._hwm:
            return max(0, (_hwm() or 0) - self._base)
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        self._thread = None
        return max(0, max(self._peak, _rss() or 0) - self._base)


# -- the systems -------------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    model: Path
    dtype: str  # float32 | float16 | bfloat16
    device: str
    threads: int
    kv_cache_memory: int
    max_num_seqs: int
    max_len: int  # longest prompt + new tokens of any workload
    gguf: Path | None
    seed: int = 0
    hf_batch_blocks: int = 0  # generate_batch's KV blocks: what the largest workload needs


class System:
    name = ""
    weights_bytes: int | None = None
    borrowed_bytes = 0  # memory of a model another system loaded and this one shares
    meter: MemoryMeter | None = None
    info: dict[str, Any]

    def load(self) -> None:
        raise NotImplementedError

    def run(self, prompts: list[list[int]], new_tokens: int) -> Run:
        raise NotImplementedError

    def prime(self, prompt: list[int]) -> None:
        """Run a request untimed (the prefix workload's earlier traffic); only a cache remembers it."""


class RuntimeSystem(System):
    def __init__(self, cfg: BenchConfig, prefix_caching: bool = True) -> None:
        self.cfg = cfg
        self.name = "runtime" if prefix_caching else "runtime-no-cache"
        self.prefix_caching = prefix_caching
        self.info = {}

    def load(self) -> None:
        from runtime import LLM

        cfg = self.cfg
        self.llm = LLM(cfg.model, device=cfg.device, dtype=cfg.dtype, kv_cache_memory=cfg.kv_cache_memory,
                       max_num_seqs=cfg.max_num_seqs, enable_prefix_caching=self.prefix_caching)
        engine = self.llm.engine
        stats = engine.stats()
        self.info = {"kv_pool_gb": stats["kv_blocks_total"] * engine.runner.block_bytes / GB,
                     "kv_blocks": stats["kv_blocks_total"], "block_size": engine.runner.block_size,
                     "max_num_seqs": cfg.max_num_seqs, "prefix_caching": self.prefix_caching}

    def _params(self, new_tokens: int):
        from runtime import SamplingParams

        return SamplingParams(temperature=0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)

    def prime(self, prompt: list[int]) -> None:
        if self.prefix_caching:
            self.llm.generate([prompt], self._params(1), progress=False)

    def run(self, prompts: list[list[int]], new_tokens: int) -> Run:
        engine = self.llm.engine
        before = engine.stats()
        params = self._params(new_tokens)
        start = time.perf_counter()
        outs = self.llm.generate(prompts, params, progress=False)
        end = time.perf_counter()
        after = engine.stats()
        extra = {key: after[key] - before[key] for key in ("prefix_cache_hit_tokens", "preemptions")}
        return Run([o.arrival_time for o in outs], [list(o.token_times) for o in outs],
                   [list(o.token_ids) for o in outs], start, end, extra=extra)


class HFModel:
    """One transformers model, shared by the `generate` and `generate_batch` baselines."""

    def __init__(self, cfg: BenchConfig, meter: MemoryMeter | None) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from ascend_common.model_paths import pretrained_args
        from runtime.platform import resolve

        before = meter.current() if meter is not None else None
        self.device = resolve(cfg.device).device
        dtype = getattr(torch, cfg.dtype)
        model = AutoModelForCausalLM.from_pretrained(**pretrained_args(cfg.model), dtype=dtype)
        self.model = model.to(self.device).eval()
        config = self.model.config
        eos = self.model.generation_config.eos_token_id or config.eos_token_id
        self.eos = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        pad = self.model.generation_config.pad_token_id or config.pad_token_id
        self.pad = pad if pad is not None else (self.eos[0] if self.eos else 0)
        after = meter.current() if meter is not None else None
        self.load_bytes = after - before if before is not None and after is not None else 0


class _StepClock:
    """A streamer that only notes when each step's tokens come out (the first `put` is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


class _SharedHFSystem(System):
    """A transformers baseline: both share one loaded model (loaded by whichever comes first; the
    other records the bytes it borrowed), and warm up with a tiny request."""

    def __init__(self, cfg: BenchConfig, shared: dict) -> None:
        self.cfg, self.shared = cfg, shared
        self.info = {}

    def load(self) -> None:
        if "hf" in self.shared:
            self.borrowed_bytes = self.shared["hf"].load_bytes
        else:
            self.shared["hf"] = HFModel(self.cfg, self.meter)
        self.hf = self.shared["hf"]
        self.run([[LOW_TOKEN_ID % self.hf.model.config.vocab_size] * 8], 2)  # warm-up


class HFStaticSystem(_SharedHFSystem):
    """`model.generate` on the whole workload as one left-padded static batch, greedy, exactly n
    tokens each (`min_new_tokens`); every request's token times are the batch's step times."""

    name = "hf"

    def load(self) -> None:
        super().load()
        self.info = {"attn_implementation": getattr(self.hf.model.config, "_attn_implementation", None)}

    def run(self, prompts: list[list[int]], new_tokens: int) -> Run:
        import torch
        from transformers.generation.streamers import BaseStreamer

        clock = type("StepClock", (_StepClock, BaseStreamer), {})()
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), self.hf.pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(self.hf.device), mask.to(self.hf.device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.hf.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=self.hf.pad,
                                         eos_token_id=self.hf.eos or None, streamer=clock)
        end = time.perf_counter()
        new = out[:, width:].tolist()
        return Run([start] * len(prompts), [list(clock.times) for _ in prompts], new, start, end)


class HFBatchSystem(_SharedHFSystem):
    """transformers' continuous batching, `model.generate_batch`, greedy, EOS disabled so every request
    runs to n tokens. The time starts when the requests are created (its manager's set-up, like the
    runtime's engine construction, is not counted)."""

    name = "hf-batch"

    def run(self, prompts: list[list[int]], new_tokens: int) -> Run:
        from transformers import ContinuousBatchingConfig, GenerationConfig

        gen = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=self.hf.pad)
        # Sized like the runtime (its KV pool's tokens, its token budget, its max_num_seqs): left to
        # itself on a CPU, it sizes its cache from the free RAM and spends ~20 s a call resetting masks.
        cb = ContinuousBatchingConfig(num_blocks=self.cfg.hf_batch_blocks, max_batch_tokens=HF_BATCH_TOKENS,
                                      max_requests_per_batch=self.cfg.max_num_seqs)
        outs = self.hf.model.generate_batch(prompts, generation_config=gen, continuous_batching_config=cb,
                                            record_timestamps=True, progress_bar=False, persistent_manager=True)
        end = time.perf_counter()
        results = list(outs.values())
        if len(results) != len(prompts) or any(r.error for r in results):
            errors = [r.error for r in results if r.error]
            raise RuntimeError(f"generate_batch returned {len(results)} of {len(prompts)} requests "
                               f"({errors[0] if errors else 'missing results'})")
        arrivals = [r.created_time for r in results]
        times = [list(r.timestamps or []) for r in results]
        return Run(arrivals, times, [list(r.generated_tokens) for r in results], min(arrivals),
                   max((t[-1] for t in times if t), default=end))


class LlamaCppSystem(System):
    """llama-cpp-python on a GGUF, greedy, one request after another (it has no batching): request k
    waits for the k−1 before it, which its TTFT shows."""

    name = "llama-cpp"

    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self.info = {"gguf": str(cfg.gguf), "same_weights": cfg.gguf == cfg.model}

    def load(self) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(self.cfg.gguf), n_ctx=self.cfg.max_len + 16, n_threads=self.cfg.threads,
                         n_threads_batch=self.cfg.threads, n_batch=512, seed=self.cfg.seed, verbose=False)
        self.run([[LOW_TOKEN_ID] * 8], 2)  # warm-up

    def run(self, prompts: list[list[int]], new_tokens: int) -> Run:
        start = time.perf_counter()
        times: list[list[float]] = []
        tokens: list[list[int]] = []
        for prompt in prompts:
            t: list[float] = []
            ids: list[int] = []
            for token in self.llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                           reset=True):
                t.append(time.perf_counter())
                ids.append(int(token))
                if len(ids) == new_tokens:
                    break
            times.append(t)
            tokens.append(ids)
        end = time.perf_counter()
        return Run([start] * len(prompts), times, tokens, start, end)


def _available(name: str, cfg: BenchConfig) -> str | None:
    """Why a baseline cannot run here, or None."""
    import importlib.util

    if name == "llama-cpp":
        if importlib.util.find_spec("llama_cpp") is None:
            return "llama-cpp-python is not installed"
        if cfg.gguf is None:
            return "needs a GGUF: MODEL is a directory (pass --gguf FILE)"
        if cfg.device not in ("cpu", "auto"):
            return f"runs on the CPU only, not {cfg.device}"
    if name == "hf-batch":
        from transformers import GenerationMixin

        if not hasattr(GenerationMixin, "generate_batch"):
            return "this transformers has no generate_batch"
    return None


# -- the benchmark ----------------------------------------------------------------------------------
class _Progress:
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
    progress.step(f"loading {system.name}")
    system.meter = meter
    before = meter.current()
    system.load()
    after = meter.current()
    system.weights_bytes = after - before + system.borrowed_bytes if before is not None and after is not None else None


def _timed(system: System, prompts: list[list[int]], new_tokens: int, meter: MemoryMeter) -> Run:
    meter.start()
    run = system.run(prompts, new_tokens)
    run.peak_bytes = meter.stop()
    counts = [len(t) for t in run.token_ids]
    if counts != [new_tokens] * len(prompts) or [len(t) for t in run.token_times] != counts:
        raise RuntimeError(f"{system.name} generated {sum(counts)} tokens, expected {new_tokens} for each of "
                           f"{len(prompts)} requests")
    return run


def run_workloads(systems: list[System], workloads: list[Workload], cfg: BenchConfig, repeat: int, vocab: int,
                  meter: MemoryMeter, progress: _Progress) -> dict[str, dict]:
    """Interleaved: for each repeat, for each workload, every system back to back (the order
    reversed on odd repeats). The no-cache runtime runs the prefix workload only."""
    runs: dict[tuple[str, str], list[Run]] = {}
    for rep in range(repeat):
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


def _kv_bytes_needed(model: Path, dtype: str, workloads: list[Workload], block_size: int = 16) -> int:
    """A KV pool that holds the largest workload at once (with 10 % to spare): no preemption, and no
    more resident memory than the work needs."""
    import torch

    from runtime.model.loader import open_model

    c = open_model(model).config
    block = 2 * c.num_layers * block_size * c.kv_size * torch.empty((), dtype=getattr(torch, dtype)).element_size()
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
    skipped = {name: why for name in wanted if (why := _available(name, cfg)) is not None}
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
                        "llama-cpp": lambda: LlamaCppSystem(cfg)}[name]())
    meter = MemoryMeter(plat.name)
    runs_total = repeat * sum(1 + sum(1 for s in systems[1:] if s.name != "runtime-no-cache" or w.prefix_len)
                              for w in plan)
    bar = _Progress(progress, runs_total + len(systems))
    try:
        for system in systems:
            _load(system, meter, bar)
            bar.advance()
        gc.collect()
        gc.freeze()  # what is loaded stays: the collection before each run then takes ms, not a second
        results = run_workloads(systems, plan, cfg, repeat, ckpt_cfg.vocab_size, meter, bar)
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
    else:
        report["workloads"] = results
        report["targets"] = _targets(results)
    return report


def _targets(results: dict[str, dict]) -> list[dict[str, Any]]:
    out = []
    for workload, what, baseline, at_least in TARGETS:
        value = results.get(workload, {}).get("ratios", {}).get(baseline, {}).get(what)
        if value is None:
            continue
        text = {"throughput": f"runtime tok/s >= {at_least:g}x {LABELS[baseline]}",
                "ttft_p50": f"TTFT p50 >= {at_least:g}x lower with the prefix cache"}[what]
        out.append({"workload": workload, "target": text, "value": value, "at_least": at_least,
                    "pass": value >= at_least})
    return out


# -- output ------------------------------------------------------------------------------------------
def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _system_row(label: str, m: dict[str, Any], ratio: dict | None) -> list[str]:
    t, p = m["ttft_ms"], m["tpot_ms"]
    return [label, _f(m["throughput_tok_s"]), _f(m["latency_ms_per_token"]), _f(m["memory_gb"], 2),
            _f(t["p50"]), _f(t["p99"]), _f(t["std"]), _f(p["p50"]), _f(p["p99"]), _f(p["std"]),
            str(m["generated_tokens"]), _x(ratio["throughput"]) if ratio else "—"]


COLUMNS = ("system", "tok/s", "ms/token", "memory GB", "TTFT p50", "TTFT p99", "TTFT std", "TPOT p50",
           "TPOT p99", "TPOT std", "tokens", "runtime ×")


def print_report(report: dict[str, Any]) -> None:
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


# -- the command -------------------------------------------------------------------------------------
@click.command("bench")
@click.argument("model", metavar="MODEL", required=False)
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto",
              show_default=True, help="auto: the dtype the checkpoint's config names.")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="cpu", show_default=True)
@click.option("--workloads", default=",".join(WORKLOADS), show_default=True,
              help="Comma list of: single (1 request), batch16, batch64 (mixed lengths), prefix (16 requests "
                   "sharing a long prefix, runtime with and without its prefix cache).")
@click.option("--baselines", default=",".join(BASELINES), show_default=True,
              help="Comma list of: hf (generate, static padded batch), hf-batch (generate_batch), llama-cpp "
                   "(llama-cpp-python on a GGUF). Unavailable ones are skipped with a note.")
@click.option("--prompt-len", type=click.IntRange(min=1), default=None,
              help=f"Prompt length of `single` and the sweep; mixed lengths are 1/4x-2x it, the shared prefix "
                   f"{PREFIX_FACTOR}x it. [default: {DEFAULT_PROMPT_LEN}]")
@click.option("--new-tokens", type=click.IntRange(min=2), default=None,
              help=f"Tokens each request generates (the prefix workload: a quarter). [default: {DEFAULT_NEW_TOKENS}]")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
              help="Interleaved runs of every system; medians are reported.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads [default: all cores].")
@click.option("--kv-cache-memory", default="auto", show_default=True,
              help="The runtime's KV pool (e.g. 2GiB); auto: what the largest workload needs.")
@click.option("--gguf", type=click.Path(path_type=Path), default=None,
              help="GGUF for the llama-cpp baseline [default: MODEL when it is a GGUF].")
@click.option("--sweep", is_flag=True, help="Instead of the workloads: batch sizes 1..128, and the max_num_seqs "
                                            "to use for a TPOT ceiling.")
@click.option("--sweep-sizes", default=",".join(map(str, SWEEP_SIZES)), show_default=True)
@click.option("--tpot-ms", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True,
              help="The sweep's ceiling on TPOT p50.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, callback=output_file, metavar="FILE.png",
              help="With --sweep: also draw throughput and TPOT against the batch size, the ceiling and the "
                   "recommendation, to this PNG (needs matplotlib: the [plot] extra).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prompts' token ids.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--output", type=click.Path(path_type=Path), default=None, callback=output_file,
              help="Also write the JSON report here.")
@click.option("--progress/--no-progress", default=True, help="Show progress (on a terminal).")
@click.option("--server", "server_url", default=None, metavar="URL",
              help="Instead: vLLM's serving benchmark against the `ascendkit serve` at URL (no MODEL).")
@click.option("--serve", is_flag=True, help="Instead: the serving benchmark against MODEL served in this process.")
@click.option("--concurrency", default=",".join(map(str, DEFAULT_CONCURRENCY)), show_default=True,
              help="Serving benchmark: concurrency levels, request rate unbounded.")
@click.option("--num-prompts", type=click.IntRange(min=1), default=None,
              help="Serving benchmark: requests per level [default: max(8, 4 x concurrency)].")
@click.option("--api-key", envvar="ASCENDKIT_API_KEY", default=None, help="Serving benchmark: the server's key.")
@debug_option
def bench_command(model: str | None, dtype: str, device: str, workloads: str, baselines: str, prompt_len: int | None,
                  new_tokens: int | None, repeat: int, threads: int | None, kv_cache_memory: str, gguf: Path | None,
                  sweep: bool, sweep_sizes: str, tpot_ms: float, plot: Path | None, seed: int, as_json: bool,
                  output: Path | None, progress: bool, server_url: str | None, serve: bool, concurrency: str,
                  num_prompts: int | None, api_key: str | None) -> int:
    """Benchmark the runtime against transformers (and llama.cpp) on MODEL (a directory or a GGUF):
    throughput, latency, memory, TTFT and TPOT, side by side in one process. With --server URL or
    --serve: vLLM's serving metrics (TTFT, TPOT, ITL, E2E, throughput) at each concurrency."""
    if plot is not None:
        _check_plot(sweep, server_url is not None or serve)  # its path: checked by output_file
    if server_url or serve:
        report = _serving(model, server_url, dtype, device, kv_cache_memory, threads, concurrency, num_prompts,
                          prompt_len, new_tokens, seed, api_key)
        emit_report(report, as_json, output, print_serving_report)
        return 0
    if model is None:
        raise UserError("missing MODEL (or --server URL)")
    names = parse_list(workloads, WORKLOADS, "--workloads")
    wanted = parse_list(baselines, BASELINES, "--baselines") if baselines.strip() else []
    sizes = parse_sizes(sweep_sizes) if sweep else None
    report = run_bench(Path(model), dtype=None if dtype == "auto" else dtype, device=device, workloads=names,
                       baselines=wanted, prompt_len=prompt_len, new_tokens=new_tokens, repeat=repeat,
                       threads=threads, kv_cache_memory=kv_cache_memory, sweep_sizes=sizes, tpot_ms=tpot_ms,
                       gguf=gguf, seed=seed, progress=progress and sys.stderr.isatty())
    if plot is not None:
        report["sweep"]["plot"] = str(plot)
    emit_report(report, as_json, output, print_report)
    if plot is not None:  # after the report: a failed drawing never costs the numbers
        from runtime.evaluation.bench.sweep_plot import plot_sweep

        plot_sweep(report["sweep"], plot, _plot_title(report))
        click.echo(f"wrote plot {plot}", err=True)
    return 0


def _check_plot(sweep: bool, serving: bool) -> None:
    """--plot's other mistakes, found before the minutes of benchmarking rather than after them."""
    if serving:
        raise UserError("--plot draws the batch-size sweep, not the serving benchmark: drop --server/--serve")
    if not sweep:
        raise UserError("--plot draws the sweep: add --sweep")
    try:
        import matplotlib  # noqa: F401 - only whether it is there; the drawing imports what it uses
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'ascend-deploy-kit[plot]'") from None


def _plot_title(report: dict[str, Any]) -> str:
    """What ran, in a line: the plot may travel without its JSON report."""
    return (f"ascendkit bench --sweep: {Path(report['model']).name} · {report['dtype']} · {report['device']} · "
            f"{report['threads']} threads · median of {report['repeat']}")


def _serving(model: str | None, server_url: str | None, dtype: str, device: str, kv_cache_memory: str,
             threads: int | None, concurrency: str, num_prompts: int | None, prompt_len: int | None,
             new_tokens: int | None, seed: int, api_key: str | None) -> dict[str, Any]:
    """The serving benchmark (runtime.serving_bench), against a running server or one started here."""
    levels = parse_sizes(concurrency, "--concurrency")
    kwargs = {"concurrency": levels, "num_prompts": num_prompts, "prompt_len": prompt_len or DEFAULT_PROMPT_LEN,
              "new_tokens": new_tokens or DEFAULT_NEW_TOKENS, "seed": seed, "api_key": api_key}
    if server_url:
        if model is not None:
            raise UserError("--server URL benchmarks a running server: give no MODEL")
        return bench_server(server_url, **kwargs)
    if model is None:
        raise UserError("--serve needs MODEL")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    engine_kwargs = {"device": device, "dtype": None if dtype == "auto" else dtype, "max_num_seqs": max(levels),
                     "kv_cache_memory": None if kv_cache_memory == "auto" else kv_cache_memory}
    return bench_started_server(Path(model), engine_kwargs, **kwargs)

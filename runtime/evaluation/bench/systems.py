"""The systems `ascendkit bench` compares, each behind the same `load` / `run` / `prime`: the runtime,
transformers' `generate` (static batch) and `generate_batch` (continuous batching), and
llama-cpp-python — and why a baseline cannot run here.

Every system generates exactly the requested number of tokens (`ignore_eos` + `min_tokens` in the
runtime, `min_new_tokens` in transformers, EOS disabled in `generate_batch`) and returns a `Run`
with each request's arrival and token times. torch, transformers and llama_cpp are imported when a
system loads, never at import.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runtime.evaluation.bench.figures import GB, Run
from runtime.evaluation.bench.metering import MemoryMeter
from runtime.evaluation.bench.workloads import LOW_TOKEN_ID
from runtime.evaluation.report_output import kv_cache_figures

HF_BATCH_PAGE = 256  # generate_batch's default page (tokens per KV block)
HF_BATCH_TOKENS = 2048  # its token budget per step: the runtime's default
LABELS = {
    "runtime": "runtime",
    "runtime-no-cache": "runtime, prefix cache off",
    "runtime-compiled": "runtime, compiled decode",
    "hf": "transformers generate (static batch)",
    "hf-batch": "transformers generate_batch",
    "llama-cpp": "llama-cpp-python (sequential)",
}


@dataclass
class BenchConfig:
    """What every system is built from: the same model, dtype, device and threads for all, and the
    sizes run_bench derived from the workloads."""

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
    """A benchmarked system: loaded once, then run on each workload's prompts; the runner fills in
    `meter` and `weights_bytes`."""

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
    """The runtime's `LLM`, with or without its prefix cache (the prefix workload runs both), and with
    `compile_decode` when asked for (`runtime-compiled`)."""

    def __init__(self, cfg: BenchConfig, prefix_caching: bool = True, compile_decode: bool = False) -> None:
        self.cfg = cfg
        self.name = "runtime-compiled" if compile_decode else "runtime" if prefix_caching else "runtime-no-cache"
        self.prefix_caching = prefix_caching
        self.compile_decode = compile_decode
        self.info = {}

    def load(self) -> None:
        from runtime import LLM

        cfg = self.cfg
        self.llm = LLM(cfg.model, device=cfg.device, dtype=cfg.dtype, kv_cache_memory=cfg.kv_cache_memory,
                       max_num_seqs=cfg.max_num_seqs, enable_prefix_caching=self.prefix_caching,
                       compile_decode=self.compile_decode)
        engine = self.llm.engine
        stats = engine.stats()
        self.info = {"kv_pool_gb": stats["kv_blocks_total"] * engine.runner.block_bytes / GB,
                     "kv_blocks": stats["kv_blocks_total"], "block_size": engine.runner.block_size,
                     "max_num_seqs": cfg.max_num_seqs, "prefix_caching": self.prefix_caching,
                     "kv_cache": kv_cache_figures(asdict(engine.info))}

    def _params(self, new_tokens: int) -> Any:
        """Greedy, exactly `new_tokens` tokens (EOS ignored), like every baseline."""
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

    def put(self, value: Any) -> None:
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


def unavailable_reason(name: str, cfg: BenchConfig) -> str | None:
    """Why a baseline cannot run here, or None."""
    import importlib.util

    if name == "llama-cpp":
        if importlib.util.find_spec("llama_cpp") is None:
            return "llama-cpp-python is not installed"
        if cfg.gguf is None:
            return "needs a GGUF: MODEL is a directory (pass --gguf FILE)"
        if cfg.device not in ("cpu", "auto"):
            return f"runs on the CPU only, not {cfg.device}"
    from ascend_convert.quant_layout import read_description

    if name in ("hf", "hf-batch") and read_description(cfg.model) is not None:
        return ("transformers cannot load msModelSlim's int8 layout (quant_model_weights*.safetensors): bench the "
                "float conversion for its ratio to transformers")
    if name == "runtime-compiled":
        from runtime.engine.compiled_decode import refusal
        from runtime.model.loader import open_model
        from runtime.platform import resolve

        ckpt = open_model(cfg.model)
        return refusal(resolve(cfg.device).name, ckpt.packed, ckpt.config)
    if name == "hf-batch":
        from transformers import GenerationMixin

        if not hasattr(GenerationMixin, "generate_batch"):
            return "this transformers has no generate_batch"
        from runtime.model.loader import open_model

        if open_model(cfg.model).config.mla is not None:
            # transformers 5.24's paged cache writes per-head keys; MLA's are a [1, kv_lora_rank] latent
            return "transformers' generate_batch has no multi-head latent attention (its paged cache holds per-head keys)"
    return None


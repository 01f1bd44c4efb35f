"""The engine: requests in, tokens out, one scheduled step at a time. It owns the scheduler, the block
manager, the model runner and the sampler, decides when a request is finished (EOS, stop tokens,
stop strings, max_tokens, the context), and keeps the counters the server and benchmarks report."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ascend_common.errors import UserError
from ascend_common.sizes import parse_size
from runtime.detokenizer import IncrementalDetokenizer
from runtime.engine import compiled_decode
from runtime.engine.block_manager import BlockManager
from runtime.engine.model_runner import ModelRunner, gather_slots
from runtime.engine.sampler import Sampler, logprob_entries, make_generator
from runtime.engine.scheduler import DEFAULT_PREFILL_WITH_DECODES, ScheduledBatch, Scheduler
from runtime.engine.sequence import Sequence
from runtime.model.config import MLA_DECODE
from runtime.model.loader import open_model
from runtime.platform import resolve
from runtime.sampling_params import SamplingParams

log = logging.getLogger("runtime")
GiB = 1 << 30
DEFAULT_KV_CACHE_MEMORY = 1 * GiB
DEFAULT_BATCHED_TOKENS = 2048  # a step's token budget: prompts longer than this are prefilled in chunks
DYNAMIC_CHUNKS = 8  # memory_policy="dynamic" starts with 1/8 of the budget and grows by as much


@dataclass
class RequestOutput:
    """A request's state after a step: what vLLM's `RequestOutput` holds, flattened to one completion.

    While the request runs, `text` is the part of the output that can no longer change, so a
    streaming server can send `text[len(sent):]`; once it is finished, `text` is all of it."""

    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None
    logprobs: list[dict[int, float]] | None
    num_cached_tokens: int
    arrival_time: float
    first_token_time: float | None
    token_times: list[float] = field(default_factory=list)
    prompt_logprobs: list[dict[int, float] | None] | None = None


@dataclass(frozen=True)
class EngineInfo:
    """What an engine serves, fixed once it is built: what the server's /v1/models and its start-up
    line report, read without touching the scheduler or the model."""

    max_model_len: int
    vocab_size: int
    dtype: str  # the compute dtype: float32, float16 or bfloat16
    device: str  # the platform's name: cpu, cuda or npu
    max_num_seqs: int
    kv_bytes_per_token: int = 0  # the KV cache a token takes, all layers (MLA: its latent and rope key)
    full_kv_bytes_per_token: int = 0  # what per-head keys and values would take (equal but for MLA)
    attention_working_set_bytes: int = 0  # the most one layer's attention gathers beside the pool


@dataclass
class _Request:
    seq: Sequence
    prompt: str | None
    params: SamplingParams
    detok: IncrementalDetokenizer | None
    generator: torch.Generator | None
    logprobs: list[dict[int, float]] | None
    arrival: float
    token_times: list[float] = field(default_factory=list)
    # vLLM's shape: None for the first prompt token (nothing before it to score it), then one entry per
    # prompt token. A preempted request recomputes its prompt; the entries already here are kept.
    prompt_logprobs: list[dict[int, float] | None] | None = None


def compute_dtype(requested: str | None, weights: str, platform: str) -> str:
    """The dtype a model runs in: the one asked for, else its weights' — except fp16 weights on a CPU,
    computed in fp32 (torch has no fast fp16 matmul on CPUs: SmolLM2 decodes ~60x slower in fp16 than
    in bf16 here; vLLM's CPU backend swaps fp16 for bf16). fp32 holds every fp16 value exactly, so the
    answers stay those of the weights. An explicit "float16" is obeyed."""
    if requested is None and weights == "float16" and platform == "cpu":
        return "float32"
    return requested or weights


class LLMEngine:
    def __init__(self, model: str | Path, device: str = "auto", dtype: str | None = None,
                 memory_policy: str = "static", tensor_parallel_size: int = 1, block_size: int = 16,
                 kv_cache_memory: int | str | None = None, max_num_seqs: int = 64,
                 max_num_batched_tokens: int | None = None, max_model_len: int | None = None,
                 enable_prefix_caching: bool = True, trust_remote_code: bool = False,
                 mla_decode: str = "auto",
                 prefill_tokens_with_decodes: int | None = DEFAULT_PREFILL_WITH_DECODES,
                 compile_decode: bool = False) -> None:
        if not isinstance(tensor_parallel_size, int) or isinstance(tensor_parallel_size, bool) \
                or tensor_parallel_size < 1:
            raise UserError(f"tensor_parallel_size {tensor_parallel_size!r}: expected an integer >= 1")
        if memory_policy not in ("static", "dynamic"):
            raise UserError(f"memory_policy {memory_policy!r}: expected 'static' or 'dynamic'")
        mla_decode = "absorbed" if mla_decode == "auto" else mla_decode
        if mla_decode not in MLA_DECODE:
            raise UserError(f"mla_decode {mla_decode!r}: expected 'auto' or {' or '.join(map(repr, MLA_DECODE))}")
        self.platform = resolve(device)
        ckpt = open_model(model)
        ckpt = replace(ckpt, config=replace(ckpt.config, mla_decode=mla_decode))
        self.config = cfg = ckpt.config
        name = compute_dtype(dtype, cfg.dtype, self.platform.name)
        if name != (dtype or cfg.dtype):
            log.info("float16 weights computed in float32 on the CPU (torch has no fast float16 matmul there)")
        if name not in ("float32", "float16", "bfloat16"):
            raise UserError(f"dtype {name!r}: expected float32, float16 or bfloat16")
        self.dtype = getattr(torch, name)
        self.max_model_len = min(max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        self.tokenizer = load_tokenizer(Path(model), trust_remote_code)
        tensor_parallel = tensor_parallel_size > 1 or ckpt.packed
        if compile_decode and (why := compiled_decode.refusal(self.platform.name, tensor_parallel, cfg)):
            raise UserError(why)
        if tensor_parallel:
            from runtime.engine.tp_executor import TPExecutor

            self.runner = TPExecutor(Path(model), ckpt, tensor_parallel_size, self.platform.device, name, block_size,
                                     self.platform.kernels())
        else:
            self.runner = ModelRunner(ckpt, self.platform.device, self.dtype, block_size, self.platform.kernels(),
                                      compile_decode)
        budget = DEFAULT_KV_CACHE_MEMORY if kv_cache_memory is None else parse_size(
            kv_cache_memory, f"kv_cache_memory {kv_cache_memory!r}: expected bytes or a size such as 2GiB or 512MiB")
        self.max_blocks = budget // self.runner.block_bytes
        if self.max_blocks < 1:
            raise UserError(f"kv_cache_memory {budget} bytes holds no KV block (one is {self.runner.block_bytes} bytes)")
        self.grow_step = max(1, self.max_blocks // DYNAMIC_CHUNKS) if memory_policy == "dynamic" else self.max_blocks
        self.runner.allocate(self.grow_step)
        self.block_manager = BlockManager(self.grow_step, block_size, enable_prefix_caching)
        budget_tokens = max_num_batched_tokens or max(DEFAULT_BATCHED_TOKENS, max_num_seqs)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs, budget_tokens, grow=self._grow,
                                   max_blocks=self.max_blocks,
                                   prefill_tokens_with_decodes=prefill_tokens_with_decodes)
        self.sampler = Sampler()
        self.requests: dict[int, _Request] = {}
        self.num_generated_tokens = 0
        self.num_prompt_tokens = 0
        self._warm_up()

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers, if any (also done at interpreter exit)."""
        stop = getattr(self.runner, "shutdown", None)
        if stop is not None:
            stop()

    # -- memory --------------------------------------------------------------------------------
    def _grow(self) -> bool:
        """memory_policy="dynamic": add a chunk of KV blocks while the budget allows."""
        extra = min(self.grow_step, self.max_blocks - self.runner.num_blocks)
        if extra <= 0:
            return False
        self.runner.allocate(extra)
        self.block_manager.grow(extra)
        return True

    def _warm_up(self) -> None:
        """One real forward pass before any request: kernels load (and compile, on an NPU) here,
        not in the first user's latency."""
        seq = Sequence([0] * min(8, self.max_model_len), SamplingParams(max_tokens=1))
        if not self.block_manager.ensure_slots(seq, seq.num_tokens):
            raise UserError("the KV pool cannot hold an 8-token warm-up request; raise kv_cache_memory")
        try:
            self.runner.run(ScheduledBatch([seq], [seq.num_tokens]))
            self.platform.synchronize()
        finally:
            self.block_manager.free(seq)
        if getattr(self.runner, "compiled", None) is not None:
            self._warm_up_compiled()
        log.info("%s kernel launch success", self.platform.name)
        if self.platform.fused_ops:
            log.info("ASCEND_OP_FUSION=1: RMSNorm, RoPE and SwiGLU run as torch_npu fused kernels")

    def _warm_up_compiled(self) -> None:
        """`compile_decode` builds its two graphs here (`compiled_decode`): decode steps of one and of
        two sequences. A pool too small for them leaves that to the first requests."""
        context = min(2, self.max_model_len)
        seqs = [Sequence([0] * context, SamplingParams(max_tokens=1)) for _ in range(2)]
        start = time.perf_counter()
        try:
            if all(self.block_manager.ensure_slots(seq, context) for seq in seqs):
                for count in (1, 2):
                    for seq in seqs:
                        seq.num_computed_tokens = context - 1
                    self.runner.run(ScheduledBatch(seqs[:count], [1] * count))
                self.platform.synchronize()
                log.info("compile_decode: torch.compile built the decode graphs in %.0f s", time.perf_counter() - start)
        finally:
            for seq in seqs:
                self.block_manager.free(seq)

    # -- requests ------------------------------------------------------------------------------
    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None) -> int:
        params = params or SamplingParams()
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise UserError("this model has no tokenizer: give prompts as token ids")
            ids, text = self.tokenizer.encode(prompt), prompt
        else:
            ids, text = list(prompt), None
        self.check_request(ids, params)
        seq = Sequence(ids, params)
        room = self.max_model_len - len(ids)
        seq.max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        self.scheduler.add(seq)
        detok = (IncrementalDetokenizer(self.tokenizer, ids, params.skip_special_tokens)
                 if self.tokenizer is not None else None)
        self.requests[seq.seq_id] = _Request(seq, text, params, detok, make_generator(params.seed, self.platform.device),
                                             [] if params.logprobs is not None else None, time.perf_counter(),
                                             prompt_logprobs=[None] if params.prompt_logprobs is not None else None)
        self.num_prompt_tokens += len(ids)
        return seq.seq_id

    def check_request(self, ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError if a request cannot be served. Reads only the config and the tokenizer,
        so the server calls it on its own thread and answers 400 before the request is queued."""
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt of {len(ids)} tokens does not fit max_model_len {self.max_model_len} "
                             f"(at least one token must be generated)")
        if any(not 0 <= t < self.config.vocab_size for t in ids):
            raise ValueError(f"prompt token ids must be in [0, {self.config.vocab_size})")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this model has none")

    def abort(self, request_id: int) -> None:
        if self.scheduler.abort(request_id) is not None:
            self.requests.pop(request_id, None)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # -- one step --------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run the model, sample, and return the requests that got a token this step."""
        batch = self.scheduler.schedule()
        if batch.is_empty:
            return []
        step = self.runner.run(batch)
        for i, (first, logits) in step.prompt.items():
            self._score_prompt(self.requests[batch.seqs[i].seq_id], first, logits)
        sampling = [i for i in range(len(batch.seqs)) if batch.samples(i)]
        requests = [self.requests[batch.seqs[i].seq_id] for i in sampling]
        suppress = [self._suppressed(r) for r in requests]
        out = self.sampler(step.sample, [r.params for r in requests], [r.generator for r in requests], suppress)
        tokens: list[int | None] = [None] * len(batch.seqs)
        for row, i in enumerate(sampling):
            tokens[i] = out.token_ids[row]
        self.scheduler.postprocess(batch, tokens)
        now = time.perf_counter()
        outputs = []
        for row, request in enumerate(requests):
            token = out.token_ids[row]
            request.token_times.append(now)
            if request.logprobs is not None:
                request.logprobs.append(out.logprobs[row])
            if request.detok is not None:
                request.detok.append(token)
            self.num_generated_tokens += 1
            reason = self._finish_reason(request, token)
            if reason is not None:
                self.scheduler.finish(request.seq, reason)
                request.seq.finish_reason = reason
                del self.requests[request.seq.seq_id]
            outputs.append(self._output(request))
        return outputs

    @staticmethod
    def _score_prompt(request: _Request, first: int, logits: torch.Tensor) -> None:
        """Logits at prompt positions first.. score the prompt tokens first+1.."""
        scored = request.prompt_logprobs
        assert scored is not None
        skip = len(scored) - 1 - first  # positions a run before a preemption already scored
        if skip >= logits.shape[0]:
            return
        targets = request.seq.token_ids[first + 1 + max(skip, 0):first + 1 + logits.shape[0]]
        rows = logits[max(skip, 0):]
        wanted = request.params.prompt_logprobs or 0
        scored.extend(logprob_entries(rows, torch.tensor(targets, device=rows.device), [wanted] * len(targets)))

    def _suppressed(self, request: _Request) -> list[int] | None:
        """EOS and stop tokens are barred until the request has `min_tokens`."""
        if request.seq.num_completion_tokens >= request.params.min_tokens:
            return None
        return [*self.config.eos_token_ids, *(request.params.stop_token_ids or [])]

    def _finish_reason(self, request: _Request, token: int) -> str | None:
        params, seq = request.params, request.seq
        if token in (params.stop_token_ids or ()):
            return "stop"
        if not params.ignore_eos and token in self.config.eos_token_ids:
            return "stop"
        if params.stop and request.detok is not None and request.detok.check_stop(params.stop) is not None:
            return "stop"
        if seq.num_completion_tokens >= seq.max_tokens:
            return "length"
        return None

    def _output(self, request: _Request) -> RequestOutput:
        seq = request.seq
        return RequestOutput(
            request_id=seq.seq_id, prompt=request.prompt, prompt_token_ids=seq.prompt_token_ids,
            text=_text(request.detok, seq.finish_reason is not None), token_ids=list(seq.completion_token_ids),
            finished=seq.finish_reason is not None, finish_reason=seq.finish_reason,
            logprobs=list(request.logprobs) if request.logprobs is not None else None,
            num_cached_tokens=seq.num_cached_tokens, arrival_time=request.arrival,
            first_token_time=request.token_times[0] if request.token_times else None,
            token_times=list(request.token_times),
            prompt_logprobs=list(request.prompt_logprobs) if request.prompt_logprobs is not None else None)

    # -- what the server and benchmarks report ------------------------------------------------------
    @property
    def info(self) -> EngineInfo:
        return EngineInfo(max_model_len=self.max_model_len, vocab_size=self.config.vocab_size,
                          dtype=str(self.dtype).removeprefix("torch."), device=self.platform.name,
                          max_num_seqs=self.scheduler.max_num_seqs,
                          kv_bytes_per_token=self.config.kv_token_bytes(self.dtype),
                          full_kv_bytes_per_token=self.config.kv_token_bytes(self.dtype, full=True),
                          attention_working_set_bytes=self.config.attention_gather_bytes(
                              gather_slots(self.max_model_len, self.block_manager.block_size), self.dtype))

    def stats(self) -> dict:
        """Counts the server's /metrics and the benchmarks report: running and waiting requests, the
        KV pool's use, prefix-cache lookups and hits, preemptions, tokens in and out, device memory."""
        bm = self.block_manager
        return {"running": self.scheduler.num_running, "waiting": self.scheduler.num_waiting,
                "kv_cache_usage": bm.usage(), "kv_blocks_total": bm.num_blocks, "kv_blocks_free": bm.num_free_blocks,
                "prefix_cache_hit_tokens": self.scheduler.prefix_hits,
                "prefix_cache_query_tokens": self.scheduler.prefix_queries,
                "preemptions": self.scheduler.num_preemptions, "prompt_tokens": self.num_prompt_tokens,
                "generation_tokens": self.num_generated_tokens,
                "device_memory_peak_bytes": self.platform.memory_allocated()}


def _text(detok: IncrementalDetokenizer | None, finished: bool) -> str:
    """A finished request's whole text; while it runs, only the text that can no longer change (a
    character still waiting for its last bytes is held back), so a stream of deltas is exact."""
    if detok is None:
        return ""
    return detok.text if finished else detok.emitted


def chat_token_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """A conversation rendered with the tokenizer's chat template, as the prompt's token ids."""
    encoded = tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt,
                                            tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


def load_tokenizer(model: Path, trust_remote_code: bool = False):
    """The checkpoint's tokenizer (a GGUF's is built from its metadata), or None if it has none.
    A tokenizer that is remote code runs only with trust_remote_code."""
    from transformers import AutoTokenizer

    from ascend_common.model_paths import pretrained_args

    try:
        return AutoTokenizer.from_pretrained(**pretrained_args(model), trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None

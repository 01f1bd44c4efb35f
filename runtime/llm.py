"""`LLM`: the offline API of the seed article and vLLM — build the engine once, `generate` a batch.

    from runtime import LLM, SamplingParams
    llm = LLM(model="./llama-2-7b-ascend", device="ascend", memory_policy="static")
    outputs = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=32))
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from pathlib import Path

from runtime.engine.llm_engine import LLMEngine, RequestOutput, chat_token_ids
from runtime.sampling_params import SamplingParams

PROGRESS_FROM = 8  # batches at least this long get a progress bar


class LLM:
    def __init__(self, model: str | Path, **engine_args) -> None:
        """`engine_args` are `LLMEngine`'s: device, dtype, memory_policy, tensor_parallel_size,
        block_size, kv_cache_memory, max_num_seqs, max_num_batched_tokens, max_model_len,
        enable_prefix_caching, trust_remote_code, mla_decode, prefill_tokens_with_decodes,
        compile_decode."""
        self.engine = LLMEngine(model, **engine_args)

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: str | list[int] | Seq[str] | Seq[list[int]],
                 sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
                 progress: bool = True) -> list[RequestOutput]:
        """One output per prompt, in the order given. A prompt is text or a list of token ids."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params or SamplingParams()] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"{len(params)} sampling params for {len(prompts)} prompts")
        ids = [self.engine.add_request(p, sp) for p, sp in zip(prompts, params)]
        finished: dict[int, RequestOutput] = {}
        bar = _progress(len(prompts)) if progress and len(prompts) >= PROGRESS_FROM else None
        try:
            while self.engine.has_unfinished():
                for out in self.engine.step():
                    if out.finished:
                        finished[out.request_id] = out
                        if bar is not None:
                            bar[0].advance(bar[1])
        finally:
            if bar is not None:
                bar[0].stop()
        return [finished[i] for i in ids]


    def chat(self, conversations: list[dict] | Seq[list[dict]],
             sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
             progress: bool = True) -> list[RequestOutput]:
        """`generate` on conversations ([{"role", "content"}, ...], or a list of them) rendered with
        the checkpoint's chat template and the generation prompt, as vLLM's `LLM.chat` does."""
        tokenizer = self.engine.tokenizer
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("this model has no chat template: use generate() with a prompt")
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        prompts = [chat_token_ids(tokenizer, c) for c in conversations]
        return self.generate(prompts, sampling_params, progress)


def _progress(total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    progress = Progress("generating", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
    task = progress.add_task("generate", total=total)
    progress.start()
    return progress, task

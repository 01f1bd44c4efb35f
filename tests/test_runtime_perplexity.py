"""Prompt logprobs (vLLM's `prompt_logprobs`) and the perplexity built on them: each prompt token's
logprob equals transformers' log-softmax at the position before it, through chunked prefill and with
the prefix cache warm; perplexity of a text equals transformers' over the same windows."""

from __future__ import annotations

import math

import pytest
import torch
from greedy_reference import hf_model

from runtime import LLM, SamplingParams
from runtime.evaluation.perplexity import DEFAULT_TEXT, perplexity, windows

PROMPT = [(i * 37 + 11) % 250 + 3 for i in range(70)]


def _reference_logprobs(path, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = hf_model(str(path), torch.float32)(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, -1)


def test_prompt_logprobs_equal_transformers_through_chunks_and_a_warm_prefix_cache(checkpoint):
    path = checkpoint("llama")
    llm = LLM(path, device="cpu", dtype="float32", block_size=4, kv_cache_memory="1MiB", max_num_batched_tokens=32)
    ref = _reference_logprobs(path, PROMPT)
    llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=2))  # its blocks are now in the cache
    out, plain = llm.generate([PROMPT, PROMPT[:9]], [SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=3),
                                                     SamplingParams(temperature=0, max_tokens=1)])
    assert plain.prompt_logprobs is None
    assert out.num_cached_tokens == 0  # scoring the prompt needs its logits, which a cached block lacks
    scored = out.prompt_logprobs
    assert len(scored) == len(PROMPT) and scored[0] is None
    for pos, entry in enumerate(scored[1:], start=1):
        token = PROMPT[pos]
        assert next(iter(entry)) == token
        assert entry[token] == pytest.approx(ref[pos - 1, token].item(), abs=1e-4)
        top = ref[pos - 1].topk(3)
        assert set(top.indices.tolist()) <= set(entry) and len(entry) <= 4
        for t, value in zip(top.indices.tolist(), top.values.tolist()):
            assert entry[t] == pytest.approx(value, abs=1e-4)
    llm.engine.block_manager.check_whole()
    with pytest.raises(ValueError, match=r"prompt_logprobs must be an integer >= 0 or None, got -1"):
        SamplingParams(prompt_logprobs=-1)


def test_perplexity_equals_transformers_over_the_same_windows(checkpoint):
    path = checkpoint("llama")
    llm = LLM(path, device="cpu", dtype="float32", block_size=4, kv_cache_memory="4MiB")
    text = DEFAULT_TEXT.read_text()[:1500]
    result = perplexity(llm, text, window=48)
    ids = llm.get_tokenizer().encode(text, add_special_tokens=False)
    parts = windows(ids, 48)
    assert result.windows == len(parts) > 2 and result.tokens == sum(len(p) - 1 for p in parts)
    nll = 0.0
    for part in parts:
        logprobs = _reference_logprobs(path, part)
        nll -= logprobs[torch.arange(len(part) - 1), torch.tensor(part[1:])].sum().item()
    assert result.value == pytest.approx(math.exp(nll / result.tokens), rel=1e-5)
    with pytest.raises(ValueError, match=r"window of 4096 tokens does not fit max_model_len"):
        perplexity(llm, text, window=4096)
    with pytest.raises(ValueError, match=r"window must be >= 2 tokens, got 1"):
        windows(ids, 1)

"""The runtime on the real SmolLM2-135M-Instruct (GGUF → converted bf16 layout), against transformers
`generate` on the same converted directory, in fp32 and bf16: chat prompts alone and as one batch,
prompts sharing a long system prompt (prefix cache), a long prompt prefilled in chunks, and a KV pool
small enough to preempt. After every run the block pool is whole."""

from __future__ import annotations

import pytest
import torch
from greedy_reference import assert_greedy_equal, hf_greedy

from runtime import LLM, SamplingParams

pytestmark = pytest.mark.slow

NEW = 24
QUESTIONS = ("What is the capital of France?", "Write a haiku about the sea.", "Explain what an NPU is.",
             "List three prime numbers.")
SYSTEM = ("You are a careful assistant for engineers who deploy language models on Huawei Ascend NPUs. "
          "Answer briefly and precisely, name the tool or setting that matters, and say when you are unsure.")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@pytest.fixture(scope="module")
def smol_bf16(smollm2_bf16):
    return smollm2_bf16


@pytest.fixture(scope="module")
def engines(smol_bf16):
    made: dict = {}

    def get(dtype: str, **kwargs) -> LLM:
        key = (dtype, tuple(sorted(kwargs.items())))
        if key not in made:
            made[key] = LLM(smol_bf16, device="cpu", dtype=dtype, kv_cache_memory="64MiB", **kwargs)
        return made[key]
    return get


def chat(llm: LLM, question: str, system: str | None = None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return llm.get_tokenizer().apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]


def run(llm: LLM, prompts, max_tokens: int = NEW):
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=max_tokens))
    llm.engine.block_manager.check_whole()
    return outs


def check(path, dtype: str, prompts, outs, what: str, max_tokens: int = NEW) -> None:
    for prompt, out in zip(prompts, outs):
        assert_greedy_equal(out.token_ids, hf_greedy(path, DTYPES[dtype], prompt, max_tokens), DTYPES[dtype],
                            f"{what} ({dtype}, prompt of {len(prompt)})")


@pytest.mark.parametrize("dtype", DTYPES)
def test_chat_prompts_alone_and_batched(engines, smol_bf16, dtype):
    llm = engines(dtype)
    prompts = [chat(llm, q) for q in QUESTIONS]
    alone = run(llm, prompts[0])
    check(smol_bf16, dtype, prompts[:1], alone, "alone")
    assert "Paris" in alone[0].text
    via_chat = llm.chat([{"role": "user", "content": QUESTIONS[0]}], SamplingParams(temperature=0, max_tokens=NEW))
    assert via_chat[0].token_ids == alone[0].token_ids and via_chat[0].prompt_token_ids == prompts[0]
    batch = run(llm, prompts)
    check(smol_bf16, dtype, prompts, batch, "batch")
    assert batch[0].text == alone[0].text


@pytest.mark.parametrize("dtype", DTYPES)
def test_shared_system_prompt_hits_the_prefix_cache(engines, smol_bf16, dtype):
    llm = engines(dtype)
    prompts = [chat(llm, q, SYSTEM) for q in QUESTIONS]
    before = llm.engine.stats()["prefix_cache_hit_tokens"]
    first = run(llm, prompts[0])
    rest = run(llm, prompts[1:])
    shared = next(i for i, (a, b) in enumerate(zip(prompts[0], prompts[1])) if a != b)
    assert all(o.num_cached_tokens == shared // 16 * 16 for o in rest) and shared >= 48
    assert llm.engine.stats()["prefix_cache_hit_tokens"] - before >= 3 * (shared // 16 * 16)
    check(smol_bf16, dtype, prompts, first + rest, "prefix cache")


def test_long_prompt_in_chunks_and_preemption(engines, smol_bf16):
    """fp32: a 300-token prompt prefilled 64 tokens a step beside short ones, then the same batch in a
    pool of 7 blocks of 16 tokens, where sequences must be preempted and recomputed."""
    chunked = engines("float32", max_num_batched_tokens=64)
    long_prompt = chat(chunked, " ".join(["Summarise this log line: the NPU reported an HCCL timeout."] * 20))
    assert len(long_prompt) > 256
    prompts = [long_prompt] + [chat(chunked, q) for q in QUESTIONS[:2]]
    check(smol_bf16, "float32", prompts, run(chunked, prompts), "chunked prefill")

    small = LLM(smol_bf16, device="cpu", dtype="float32", kv_cache_memory=7 * 2 * 30 * 16 * 192 * 4,
                max_num_seqs=4, enable_prefix_caching=False)  # shared blocks would spare the pool
    assert small.engine.block_manager.num_blocks == 7
    short = [chat(small, q) for q in QUESTIONS[1:]]  # ~37 tokens + 24 new: 4 blocks each, 12 for three
    check(smol_bf16, "float32", short, run(small, short), "preemption")
    assert small.engine.stats()["preemptions"] > 0

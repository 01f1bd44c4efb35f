"""The CPU decode-attention kernel (`runtime.layers.cpu_attention`): against SDPA over the gathered
context, on scattered paged caches, for the head layouts and dtypes the families have; as accurate
as SDPA against fp64 in the reduced dtypes; the same greedy tokens as the plain path in fp32 (the
sliding window included); a bad choice refused in one line; no compiler, the plain path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch
from conftest import assert_one_line_error, run_cli

from runtime import LLM, SamplingParams
from runtime.engine.model_runner import prepare_step
from runtime.engine.scheduler import ScheduledBatch
from runtime.engine.sequence import Sequence
from runtime.layers import cpu_attention
from runtime.layers.attention import causal_mask, paged_attention, write_kv

BLOCK = 4


@contextmanager
def attention(choice: str):
    """Run a block with `choice` ("kernel" asserts this machine built it), then restore the previous one."""
    previous = cpu_attention.chosen()
    cpu_attention.use(choice)
    try:
        assert (cpu_attention.kernel() is not None) == (choice == "kernel")
        yield
    finally:
        cpu_attention.use(previous)


def _decode_step(contexts: list[int], heads: int, kv_heads: int, dim: int, dtype: torch.dtype, seed: int = 0):
    """One decode step over scattered blocks: the step's metadata and seeded tensors (fp64 masters)."""
    g = torch.Generator().manual_seed(seed)
    blocks = sum(-(-c // BLOCK) for c in contexts) + 3
    order = torch.randperm(blocks, generator=g).tolist()
    seqs, used = [], 0
    for c in contexts:
        seq = Sequence([1] * c, SamplingParams(max_tokens=2))
        seq.num_computed_tokens = c - 1
        n = -(-c // BLOCK)
        seq.block_table, used = order[used:used + n], used + n
        seqs.append(seq)
    _, meta, rows, _ = prepare_step(ScheduledBatch(seqs, [1] * len(seqs)), BLOCK, torch.device("cpu"))
    master = [torch.randn(blocks, BLOCK, kv_heads, dim, generator=g, dtype=torch.float64) for _ in "kv"]
    master += [torch.randn(len(contexts), heads, dim, generator=g, dtype=torch.float64)]
    master += [torch.randn(len(contexts), kv_heads, dim, generator=g, dtype=torch.float64) for _ in "kv"]
    return meta, rows, master


def _attention(meta, rows, master, dtype, window, heads, kv_heads, choice) -> torch.Tensor:
    """The step through the runtime's `paged_attention` with `choice`, in sequence order."""
    k_cache, v_cache, q, k, v = (t.to(dtype) for t in master)
    order = torch.empty(len(rows), dtype=torch.long)
    order[torch.tensor(rows)] = torch.arange(len(rows))  # token row -> its sequence
    masks = [causal_mask(g, window, dtype, heads // kv_heads) for g in meta.groups]
    with attention(choice):
        out = paged_attention(q[order], k[order], v[order], k_cache, v_cache, meta, masks, 0.17, window)
    return out[torch.tensor(rows)]


LAYOUTS = [(9, 3, 64), (4, 4, 16), (8, 2, 128), (6, 2, 24), (16, 1, 32)]  # SmolLM2, MHA, GQA 4, odd dim, MQA


@pytest.mark.parametrize("window", [None, 7])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: "h{}kv{}d{}".format(*x))
def test_the_kernel_answers_as_sdpa_in_fp32(layout, window):
    heads, kv_heads, dim = layout
    meta, rows, master = _decode_step([1, 5, 9, 30, 17, 64, 3], heads, kv_heads, dim, torch.float32)
    ours = _attention(meta, rows, master, torch.float32, window, heads, kv_heads, "kernel")
    plain = _attention(meta, rows, master, torch.float32, window, heads, kv_heads, "sdpa")
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", LAYOUTS[:3], ids=lambda x: "h{}kv{}d{}".format(*x))
def test_the_kernel_is_as_accurate_as_sdpa_against_fp64(layout, dtype):
    """Reduced dtypes cannot match bit for bit (another order of fp32 additions); what the kernel is
    held to is SDPA's own error against the same step in fp64."""
    heads, kv_heads, dim = layout
    contexts = [40 + 23 * i for i in range(12)]
    meta, rows, master = _decode_step(contexts, heads, kv_heads, dim, dtype, seed=5)
    exact = _attention(meta, rows, master, torch.float64, None, heads, kv_heads, "sdpa")
    errors = {c: (_attention(meta, rows, master, dtype, None, heads, kv_heads, c).double() - exact).abs().mean().item()
              for c in ("kernel", "sdpa")}
    assert errors["kernel"] <= 1.05 * errors["sdpa"], errors


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_decode_step_is_one_call_that_writes_its_keys_and_values(dtype):
    """A step of decodes only writes its new keys and values in the kernel's own call: the caches hold
    the bytes `write_kv` stores, and the output is the kernel's over caches `write_kv` wrote. The keys
    and values come as views of one fused projection, as the model splits them."""
    heads, kv_heads, dim = LAYOUTS[0]
    meta, _, master = _decode_step([1, 5, 9, 30, 17, 64, 3], heads, kv_heads, dim, dtype, seed=3)
    k_cache, v_cache, q, k, v = (t.to(dtype) for t in master)
    fused = torch.cat([q.flatten(1), k.flatten(1), v.flatten(1)], dim=1)
    q, k, v = (part.view(len(part), -1, dim) for part in fused.split((heads * dim, kv_heads * dim, kv_heads * dim), 1))
    one_call = [k_cache.clone(), v_cache.clone()]
    with attention("kernel"):
        ours = paged_attention(q, k, v, *one_call, meta, [], 0.17, None)
        two_calls = [k_cache.clone(), v_cache.clone()]
        write_kv(*two_calls, k, v, meta.slot_mapping)
        group = meta.groups[0]
        theirs = cpu_attention.kernel()(q, *two_calls, group.block_tables, group.query_positions[:, 0] + 1, 0.17, 0)
    assert not torch.equal(one_call[0], k_cache) and not torch.equal(one_call[1], v_cache)  # the step wrote
    assert torch.equal(one_call[0], two_calls[0]) and torch.equal(one_call[1], two_calls[1])
    assert torch.equal(ours, theirs.flatten(1))


@pytest.mark.parametrize("family", ["llama", "mistral"])  # mistral: a 32-token sliding window
def test_greedy_tokens_are_the_plain_paths_in_fp32(checkpoint, family):
    prompts = [list(range(3, 73)), [5, 9, 13], list(range(40, 2, -1))]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    llm = LLM(checkpoint(family), device="cpu", dtype="float32", block_size=4, kv_cache_memory="1MiB")
    tokens = {}
    for choice in ("kernel", "sdpa"):
        with attention(choice):
            tokens[choice] = [o.token_ids for o in llm.generate(prompts, params, progress=False)]
    assert tokens["kernel"] == tokens["sdpa"]


def test_a_bad_choice_is_one_line(checkpoint):
    result = run_cli("smoke", checkpoint("llama"), env={cpu_attention.ENV: "flash"})
    assert_one_line_error(result, f"error: {cpu_attention.ENV}='flash': expected one of kernel, sdpa")


def test_without_a_compiler_the_plain_path_serves(checkpoint, tmp_path):
    """A fresh extensions directory and a compiler that does not exist: one warning, and the same
    tokens as the plain path."""
    script = f"""
import json, logging
logging.basicConfig(level=logging.WARNING)
from runtime import LLM, SamplingParams
from runtime.layers import cpu_attention
llm = LLM({str(checkpoint("llama"))!r}, device="cpu", dtype="float32", block_size=4, kv_cache_memory="1MiB")
params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
print(json.dumps([cpu_attention.kernel() is None, llm.generate([[5, 9, 13]], params, progress=False)[0].token_ids]))
"""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    fallback, tokens = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fallback
    assert "the CPU decode-attention kernel could not be built" in proc.stderr
    llm = LLM(checkpoint("llama"), device="cpu", dtype="float32", block_size=4, kv_cache_memory="1MiB")
    with attention("sdpa"):
        assert llm.generate([[5, 9, 13]], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                            progress=False)[0].token_ids == tokens

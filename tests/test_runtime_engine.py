"""The runtime's engine on every fixture family: greedy tokens against transformers `generate` on the
same weights (alone, in a mixed batch, with a chunked prefill, through the prefix cache, under
preemption), sampling, stops, memory policies, and bad input. After every run the pool is whole."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from greedy_reference import assert_greedy_equal, hf_greedy

import fixtures as fx
from ascend_common.errors import UserError
from ascend_convert.converter import ConvertOptions, convert
from runtime import LLM, SamplingParams
from runtime.engine.model_runner import ModelRunner
from runtime.engine.scheduler import ScheduledBatch
from runtime.engine.sequence import Sequence
from runtime.layers.fused_ops import PLAIN, Kernels, npu_kernels
from runtime.model.loader import open_model
from runtime.platform import resolve

GREEDY = SamplingParams(temperature=0, max_tokens=12)
MLA_FAMILIES = ("deepseek_v3", "deepseek_v2")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def prompts_for(vocab: int, lengths=(5, 17, 3, 70), seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]


def generate(llm: LLM, prompts, params=GREEDY):
    """llm.generate, then the invariant every run must leave behind: every block back in the pool."""
    outs = llm.generate(prompts, params)
    llm.engine.block_manager.check_whole()
    assert not llm.engine.has_unfinished()
    return outs


def make_llm(path, dtype="float32", **kwargs) -> LLM:
    args = {"device": "cpu", "dtype": dtype, "block_size": 4, "kv_cache_memory": "1MiB", **kwargs}
    return LLM(path, **args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", fx.FAMILIES + fx.MOE_FAMILIES + fx.DEEPSEEK_FAMILIES)
def test_greedy_tokens_equal_transformers(checkpoint, fixture_root, family, dtype):
    """Alone, then in one batch of mixed lengths where the 70-token prompt is prefilled in chunks of
    at most 32 tokens (Mistral's and Mixtral's sliding window is 32: the chunk boundary crosses it).
    The MoE families route each chunk's and each batch's tokens together, as transformers does not;
    DeepSeek's MLA decodes with absorbed projections against its latent cache, as transformers does not
    (it decompresses the whole context every step), and prefills chunks from decompressed latents."""
    path = checkpoint(family)
    ref_path = fx.reference(family, fixture_root)
    # MLA in bf16: transformers' op order (see test_runtime_deepseek for the absorbed decode's measure)
    exact = {"mla_decode": "decompressed"} if family in MLA_FAMILIES and dtype == "bfloat16" else {}
    llm = make_llm(path, dtype, max_num_batched_tokens=32, **exact)
    prompts = prompts_for(llm.engine.config.vocab_size)
    torch_dtype = DTYPES[dtype]
    alone = generate(llm, prompts[0])[0]
    assert_greedy_equal(alone.token_ids, hf_greedy(ref_path, torch_dtype, prompts[0], 12), torch_dtype,
                        f"{family} alone")
    batch = generate(llm, prompts)
    for prompt, out in zip(prompts, batch):
        assert out.prompt_token_ids == prompt
        assert_greedy_equal(out.token_ids, hf_greedy(ref_path, torch_dtype, prompt, 12), torch_dtype,
                            f"{family} prompt of {len(prompt)} in a batch")
        assert out.finish_reason == ("stop" if out.token_ids[-1] in llm.engine.config.eos_token_ids else "length")


def test_prefix_cache_hits_are_counted_and_change_no_token(checkpoint):
    path = checkpoint("qwen2")
    prefix = prompts_for(320, (40,), seed=1)[0]
    suffixes = prompts_for(320, (6, 3, 9, 1), seed=2)
    prompts = [prefix + s for s in suffixes]
    cached = make_llm(path)
    first = generate(cached, prompts[0])[0]
    assert first.num_cached_tokens == 0
    rest = generate(cached, prompts[1:])
    assert [o.num_cached_tokens for o in rest] == [40, 40, 40]  # 10 full blocks of 4
    stats = cached.engine.stats()
    assert stats["prefix_cache_hit_tokens"] == 120 + 0  # + the warm-up's 0
    uncached = make_llm(path, enable_prefix_caching=False)
    plain = generate(uncached, prompts)
    assert uncached.engine.stats()["prefix_cache_hit_tokens"] == 0
    assert [o.token_ids for o in plain] == [first.token_ids] + [o.token_ids for o in rest]
    for prompt, out in zip(prompts, plain):
        assert_greedy_equal(out.token_ids, hf_greedy(path, torch.float32, prompt, 12), torch.float32, "prefix")


@pytest.mark.parametrize("family", ("llama", *fx.MOE_FAMILIES, "deepseek_v3"))
def test_a_pool_too_small_for_the_batch_preempts_and_still_answers_right(checkpoint, family):
    path = checkpoint(family)
    cfg = open_model(path).config
    block_bytes = cfg.kv_block_bytes(4, "float32")
    llm = make_llm(path, kv_cache_memory=14 * block_bytes)  # 56 token slots for 4 sequences of ~21
    prompts = prompts_for(cfg.vocab_size, (9, 8, 7, 10), seed=3)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outs = generate(llm, prompts, params)
    assert llm.engine.stats()["preemptions"] > 0
    ref = [hf_greedy(path, torch.float32, p, 12) for p in prompts]
    for prompt, out, expected in zip(prompts, outs, ref):
        # ignore_eos: the runtime goes on after an EOS transformers stops at; compare up to it
        assert out.token_ids[:len(expected.tokens)] == expected.tokens
        assert len(out.token_ids) == 12 and out.finish_reason == "length"


def test_dynamic_memory_grows_the_pool_in_chunks(checkpoint):
    path = checkpoint("llama")
    static = make_llm(path, kv_cache_memory="256KiB")
    dynamic = make_llm(path, kv_cache_memory="256KiB", memory_policy="dynamic")
    total = static.engine.block_manager.num_blocks
    assert dynamic.engine.block_manager.num_blocks == total // 8
    prompts = prompts_for(320, (30, 40, 50, 60, 70, 80), seed=4)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    assert ([o.token_ids for o in generate(dynamic, prompts, params)]
            == [o.token_ids for o in generate(static, prompts, params)])
    assert total // 8 < dynamic.engine.block_manager.num_blocks <= total
    assert dynamic.engine.runner.num_blocks == dynamic.engine.block_manager.num_blocks


def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(checkpoint):
    llm = make_llm(checkpoint("qwen3"))
    prompt, *others = prompts_for(llm.engine.config.vocab_size, (6, 11, 4), seed=5)
    seeded = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=1234, max_tokens=16, ignore_eos=True)
    alone = generate(llm, prompt, seeded)[0].token_ids
    again = generate(llm, [prompt, *others], [seeded, SamplingParams(temperature=1.0, max_tokens=16),
                                              SamplingParams(temperature=0, max_tokens=5)])[0].token_ids
    other_seed = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=4321, max_tokens=16, ignore_eos=True)
    assert alone == again
    assert generate(llm, prompt, other_seed)[0].token_ids != alone
    greedy = generate(llm, prompt, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))[0].token_ids
    assert alone != greedy


def test_stops_logprobs_and_text(checkpoint):
    path = checkpoint("llama")
    llm = make_llm(path)
    tokenizer = llm.get_tokenizer()
    prompt = tokenizer.encode("the quick brown fox")
    base = generate(llm, prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0]
    assert base.text == tokenizer.decode(base.token_ids, skip_special_tokens=True)
    assert len(base.token_ids) == 12 and base.finish_reason == "length"

    stop_id = base.token_ids[4]
    by_id = generate(llm, prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                                                 stop_token_ids=[stop_id]))[0]
    assert by_id.token_ids == base.token_ids[:base.token_ids.index(stop_id) + 1] and by_id.finish_reason == "stop"

    stop = base.text[len(base.text) // 2:len(base.text) // 2 + 2]
    assert stop.strip(), base.text
    by_text = generate(llm, prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop=[stop]))[0]
    assert by_text.text == base.text[:base.text.index(stop)] and by_text.finish_reason == "stop"

    with_lp = generate(llm, prompt, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=3))[0]
    ref = hf_greedy(path, torch.float32, prompt, 6)
    assert with_lp.token_ids == base.token_ids[:6]
    for step, (token, lp) in enumerate(zip(with_lp.token_ids, with_lp.logprobs)):
        top3 = ref.logprobs[step].topk(3).indices.tolist()
        assert set(top3) | {token} == set(lp)
        for t, value in lp.items():
            assert value == pytest.approx(ref.logprobs[step][t].item(), abs=1e-4)


def test_eos_stops_unless_ignored(checkpoint):
    llm = make_llm(checkpoint("llama"))
    eos = llm.engine.config.eos_token_ids[0]
    prompts = prompts_for(320, (3,) * 40, seed=6)
    outs = generate(llm, prompts, SamplingParams(temperature=0, max_tokens=20))
    stopped = [o for o in outs if o.finish_reason == "stop"]
    assert stopped, "no fixture prompt reached EOS within 20 tokens"
    assert all(o.token_ids[-1] == eos and eos not in o.token_ids[:-1] for o in stopped)
    again = generate(llm, [o.prompt_token_ids for o in stopped],
                     SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    assert all(len(o.token_ids) == 20 and o.finish_reason == "length" for o in again)


def test_converted_layouts_and_checkpoint_formats_give_the_same_tokens(checkpoint, tmp_path):
    """The Ascend layout `convert` writes (fp16 for the 910B) answers as transformers does on it, and
    a sharded .bin checkpoint loads to the same model as the plain safetensors directory."""
    src = checkpoint("llama")
    out = tmp_path / "llama-910b"
    convert(src, out, ConvertOptions(soc="ascend910b", dtype="float16"))
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    prompts = prompts_for(320, (5, 9), seed=7)
    converted = make_llm(out)  # config dtype is fp16; run at fp32: fp16 → fp32 is exact
    reference = [hf_greedy(out, torch.float32, p, 12) for p in prompts]
    for o, r in zip(generate(converted, prompts), reference):
        assert_greedy_equal(o.token_ids, r, torch.float32, "ascend layout")
    plain = [o.token_ids for o in generate(make_llm(src), prompts)]
    sharded_bin = [o.token_ids for o in generate(make_llm(checkpoint("llama", "bin-sharded")), prompts)]
    assert plain == sharded_bin


@pytest.mark.parametrize(("requested", "weights", "platform", "runs_in"), [
    (None, "float16", "cpu", "float32"),  # no fast fp16 matmul on a CPU; fp32 holds fp16 exactly
    ("float16", "float16", "cpu", "float16"),  # asked for: obeyed
    (None, "float16", "cuda", "float16"),
    (None, "bfloat16", "cpu", "bfloat16"),
    ("bfloat16", "float32", "cpu", "bfloat16"),
])
def test_compute_dtype(requested, weights, platform, runs_in):
    """The engine's rule, which the benchmark follows too (so its transformers baseline runs alike)."""
    from runtime.engine.llm_engine import compute_dtype

    assert compute_dtype(requested, weights, platform) == runs_in


def test_llama3_rope_scaling(checkpoint, tmp_path):
    path = tmp_path / "llama3"
    shutil.copytree(checkpoint("llama"), path)
    config = json.loads((path / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 64}
    (path / "config.json").write_text(json.dumps(config))
    llm = make_llm(path)
    assert llm.engine.config.rope_type == "llama3"
    prompts = prompts_for(320, (90, 7), seed=8)
    for prompt, out in zip(prompts, generate(llm, prompts)):
        assert_greedy_equal(out.token_ids, hf_greedy(path, torch.float32, prompt, 12), torch.float32, "llama3")


def test_generate_keeps_order_and_logs_the_warm_up(checkpoint, caplog):
    with caplog.at_level(logging.INFO, logger="runtime"):
        llm = make_llm(checkpoint("phi3"), max_num_seqs=3)
    assert "cpu kernel launch success" in caplog.messages
    prompts = prompts_for(320, (30, 2, 15, 4, 9, 1, 22, 3, 12), seed=9)
    outs = generate(llm, prompts, [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
                                   for n in range(1, 10)])
    assert [o.prompt_token_ids for o in outs] == prompts
    assert [len(o.token_ids) for o in outs] == list(range(1, 10))


# -- bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"max_tokens": 0}, "max_tokens must be >= 1 or None, got 0"),
    ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
    ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
    ({"temperature": -1}, "temperature must be >= 0, got -1"),
])
def test_bad_sampling_params(kwargs, message):
    with pytest.raises(ValueError) as err:
        SamplingParams(**kwargs)
    assert str(err.value) == message


def test_bad_requests_are_refused_and_the_engine_keeps_serving(checkpoint):
    path = checkpoint("llama")
    cfg = open_model(path).config
    block_bytes = 2 * cfg.num_layers * 4 * cfg.kv_size * 4
    llm = make_llm(path, kv_cache_memory=8 * block_bytes)  # 32 token slots
    engine = llm.engine
    good = engine.add_request([5, 6, 7], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    engine.step()
    with pytest.raises(ValueError) as err:
        engine.add_request([1] * 600, GREEDY)
    assert str(err.value) == ("prompt of 600 tokens does not fit max_model_len 512 "
                              "(at least one token must be generated)")
    with pytest.raises(ValueError) as err:
        engine.add_request([1] * 10, SamplingParams(max_tokens=100))
    assert str(err.value) == ("a request of 10 prompt tokens and up to 100 new tokens needs 28 KV blocks; "
                              "the pool has 8 (raise kv_cache_memory or lower max_tokens)")
    with pytest.raises(ValueError, match=r"prompt token ids must be in \[0, 320\)"):
        engine.add_request([5, 320], GREEDY)
    with pytest.raises(ValueError, match="the prompt is empty"):
        engine.add_request([], GREEDY)
    finished = {}
    while engine.has_unfinished():
        finished.update({o.request_id: o for o in engine.step() if o.finished})
    assert len(finished[good].token_ids) == 4
    engine.block_manager.check_whole()


def test_abort_frees_the_request_and_others_finish(checkpoint):
    llm = make_llm(checkpoint("llama"))
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    a, b = engine.add_request([1, 2, 3], params), engine.add_request([4, 5, 6], params)
    engine.step()
    engine.step()
    engine.abort(a)
    done = []
    while engine.has_unfinished():
        done += [o for o in engine.step() if o.finished]
    assert [o.request_id for o in done] == [b] and len(done[0].token_ids) == 8
    engine.block_manager.check_whole()


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "tpu"}, "device 'tpu': expected one of auto, cpu, cuda, npu, ascend"),
    ({"tensor_parallel_size": 0}, "tensor_parallel_size 0: expected an integer >= 1"),
    ({"tensor_parallel_size": 3}, "tensor parallel size 3: the model's 4 attention heads are not divisible by 3"),
    ({"memory_policy": "lazy"}, "memory_policy 'lazy': expected 'static' or 'dynamic'"),
    ({"dtype": "int8"}, "dtype 'int8': expected float32, float16 or bfloat16"),
    ({"kv_cache_memory": "lots"}, "kv_cache_memory 'lots': expected bytes or a size such as 2GiB or 512MiB"),
    ({"kv_cache_memory": 100}, "kv_cache_memory 100 bytes holds no KV block (one is 2048 bytes)"),
    ({"kv_cache_memory": 2048}, "the KV pool cannot hold an 8-token warm-up request; raise kv_cache_memory"),
])
def test_bad_engine_arguments(checkpoint, kwargs, message):
    with pytest.raises(UserError) as err:
        make_llm(checkpoint("llama"), **kwargs)
    assert str(err.value) == message


def test_ascend_without_torch_npu_is_a_clear_error(checkpoint):
    """torch_npu is not installable here; where it is installed this case cannot arise."""
    try:
        import torch_npu  # noqa: F401
    except ImportError:
        for device in ("ascend", "npu"):
            with pytest.raises(UserError, match=rf"device '{device}': torch_npu is not importable or sees no NPU"):
                make_llm(checkpoint("llama"), device=device)
    else:
        pytest.skip("torch_npu is installed")


def test_a_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError) as err:
        make_llm(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_the_fused_kernel_slots_carry_every_norm_rope_and_swiglu(checkpoint, monkeypatch):
    """ASCEND_OP_FUSION=1 swaps exactly these three functions for torch_npu's kernels. Here each slot
    is filled with the plain function behind a counter: the model must route every RMSNorm, RoPE and
    SwiGLU through them (and nothing changes: same logits). Off an NPU the flag changes nothing."""
    monkeypatch.setenv("ASCEND_OP_FUSION", "1")
    assert resolve("cpu").kernels() is PLAIN
    calls = {"rms_norm": 0, "rotary": 0, "swiglu": 0}

    def counted(name):
        def call(*args):
            calls[name] += 1
            return getattr(PLAIN, name)(*args)
        return call

    ckpt = open_model(checkpoint("qwen3"))  # q/k norms: 4 RMSNorms per layer
    counting = Kernels(counted("rms_norm"), counted("rotary"), counted("swiglu"), "counting")
    llm = make_llm(checkpoint("qwen3"))
    runner = ModelRunner(ckpt, torch.device("cpu"), torch.float32, 4, counting)
    runner.allocate(32)
    plain_runner = llm.engine.runner
    seq = Sequence([3, 1, 4, 1, 5], GREEDY, 12)
    seq.block_table = [0, 1]
    batch = ScheduledBatch([seq], [5])
    layers = ckpt.config.num_layers
    assert torch.equal(runner.run(batch).sample, plain_runner.run(batch).sample)
    assert calls == {"rms_norm": 4 * layers + 1, "rotary": 2 * layers, "swiglu": layers}


@pytest.mark.skipif(not torch.__dict__.get("npu"), reason="torch_npu's fused kernels need an Ascend NPU")
def test_torch_npu_fused_kernels_match_the_plain_ones():
    fused = npu_kernels()
    x = torch.randn(7, 4, 64, device="npu", dtype=torch.float16)
    cos, sin = torch.randn(7, 1, 64, device="npu", dtype=torch.float16), torch.randn(7, 1, 64, device="npu",
                                                                                      dtype=torch.float16)
    w = torch.randn(64, device="npu", dtype=torch.float16)
    torch.testing.assert_close(fused.rms_norm(x, w, 1e-6), PLAIN.rms_norm(x, w, 1e-6), rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(fused.rotary(x, cos, sin), PLAIN.rotary(x, cos, sin), rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(fused.swiglu(x), PLAIN.swiglu(x), rtol=2e-3, atol=2e-3)


def test_decode_rows_are_not_padded_to_a_prefill_chunk(checkpoint):
    """A step mixing decodes and a prefill chunk is laid out decodes first, as two attention groups;
    the logits come back in the batch's order."""
    llm = make_llm(checkpoint("llama"))
    runner = llm.engine.runner
    decode = Sequence([5, 6, 7, 8], GREEDY, 12)
    decode.block_table, decode.num_computed_tokens = [0], 3
    prefill = Sequence(list(range(1, 11)), GREEDY, 12)
    prefill.block_table = [1, 2, 3]
    batch = ScheduledBatch([prefill, decode], [10, 1])
    ids, meta, rows, prompt_rows = runner.prepare(batch)
    assert ids.tolist() == [8] + list(range(1, 11)) and rows == [10, 0] and prompt_rows == []
    assert [tuple(g.query_index.shape) for g in meta.groups] == [(1, 1), (1, 10)]
    assert [g.max_context_len for g in meta.groups] == [4, 10]
    mixed = runner.run(batch).sample
    alone = [runner.run(ScheduledBatch([s], [n])).sample for s, n in ((prefill, 10), (decode, 1))]
    torch.testing.assert_close(mixed, torch.cat(alone), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [None, 5])
def test_the_step_mask_is_the_stacked_heads_additive_form_of_the_causal_one(window):
    """`causal_mask(..., dtype, query_rows)` is built once per step in the layout `_attend` stacks the
    query heads sharing a KV head in (row h * max_q + q): SDPA given it answers exactly as given the
    bool mask expanded per layer, which is what each layer used to build."""
    import torch.nn.functional as F

    from runtime.engine.model_runner import prepare_step, uniform_batch
    from runtime.layers.attention import causal_mask, gather_context, paged_attention

    batch = uniform_batch(3, 6, 9, 4)  # chunks of 6 queries after 9 cached tokens: causal and windowed
    ids, meta, _, _ = prepare_step(batch, 4, torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    heads, kv_heads, dim, blocks = 6, 2, 8, 3 * 4
    k_cache, v_cache = (torch.randn(blocks, 4, kv_heads, dim, generator=g, dtype=torch.float64).bfloat16() for _ in "kv")
    query = torch.randn(len(ids), heads, dim, generator=g).bfloat16()
    key, value = (torch.randn(len(ids), kv_heads, dim, generator=g).bfloat16() for _ in "kv")
    (group,) = meta.groups
    bool_mask = causal_mask(group, window)
    step_mask = causal_mask(group, window, torch.bfloat16, heads // kv_heads)
    assert step_mask.shape == (3, 1, 3 * 6, 15)
    expected = torch.zeros(3, 1, 6, 15, dtype=torch.bfloat16).masked_fill(~bool_mask, float("-inf"))
    assert torch.equal(step_mask, expected.repeat(1, 1, 3, 1))

    out = paged_attention(query, key, value, k_cache, v_cache, meta, [step_mask], 0.3)
    keys, values = gather_context(k_cache, group), gather_context(v_cache, group)  # written by the call above
    q = query[group.query_index].view(3, 6, kv_heads, 3, dim).permute(0, 2, 3, 1, 4).reshape(3, kv_heads, 18, dim)
    per_layer = bool_mask.unsqueeze(1).expand(3, 3, 1, 6, 15).reshape(3, 1, 18, 15)
    ref = F.scaled_dot_product_attention(q, keys, values, attn_mask=per_layer, scale=0.3)
    ref = ref.view(3, kv_heads, 3, 6, dim).permute(0, 3, 1, 2, 4).reshape(18, heads * dim)
    assert torch.equal(out, ref.index_select(0, group.output_rows))

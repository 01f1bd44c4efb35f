"""DeepSeek-V3, DeepSeek-V2 and GLM-4.5 in the runtime, beyond the greedy tokens every family shares
(test_runtime_engine.py) and the MoE blocks' bits (test_runtime_moe.py): multi-head latent attention's
latent cache and its two ways to decode, YaRN's mscale, RoPE's pairings, MTP layers left out, the
W8A8_DYNAMIC layout served, and what the runtime refuses."""

from __future__ import annotations

import pytest
import torch
from greedy_reference import hf_model

import fixtures as fx
from ascend_common.errors import UserError
from runtime import LLM, SamplingParams
from runtime.engine.model_runner import kv_caches
from runtime.model.loader import open_model

MLA = ("deepseek_v3", "deepseek_v2")


def make_llm(path, dtype="float32", **kwargs) -> LLM:
    return LLM(path, **{"device": "cpu", "dtype": dtype, "block_size": 4, "kv_cache_memory": "1MiB", **kwargs})


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 320, (int(n),), generator=g).tolist() for n in torch.randint(3, 40, (count,), generator=g)]


@pytest.mark.parametrize("family", MLA)
def test_the_kv_cache_holds_a_latent_and_a_rope_key_per_token(checkpoint, family):
    """Per token and layer: kv_lora_rank 32 + qk_rope_head_dim 8 = 40 values, against 4 heads x
    (24 + 16) = 160 for full keys and values (DeepSeek-V3's real sizes: 576 against 40,960)."""
    cfg = open_model(checkpoint(family)).config
    assert (cfg.kv_values_per_token, cfg.full_kv_values_per_token) == (40, 160)
    latent, rope = kv_caches(cfg, 5, 4, torch.bfloat16, torch.device("cpu"))[0]
    assert tuple(latent.shape) == (5, 4, 1, 32) and tuple(rope.shape) == (5, 4, 1, 8)
    assert cfg.kv_block_bytes(4, "bfloat16") == 3 * 4 * 40 * 2  # layers x tokens x values x bytes


@pytest.mark.parametrize("family", ["deepseek_v3"])  # V2's query and RoPE: its greedy tokens, test_runtime_engine
def test_absorbed_and_decompressed_decode_agree_in_fp32(checkpoint, family):
    """The absorbed decode (W_UK into the query, W_UV after the latent output) is the decompressed
    one reassociated: in fp32 the top-5 logprobs of every step of a batch agree to 1e-4 and the tokens are equal."""
    path = checkpoint(family)
    batch = prompts(3, seed=1)
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=5, ignore_eos=True)
    absorbed = make_llm(path).generate(batch, params)
    decompressed = make_llm(path, mla_decode="decompressed").generate(batch, params)
    for a, d in zip(absorbed, decompressed):
        assert a.token_ids == d.token_ids
        for step_a, step_d in zip(a.logprobs, d.logprobs):
            for token, logprob in step_d.items():
                assert abs(step_a[token] - logprob) < 1e-4


def _decode_step(dtype: torch.dtype, absorbed: bool, seqs: int = 6, context: int = 37) -> torch.Tensor:
    """One decode step of MLA attention (4 heads, nope 16, rope 8, v 16, latent 32) for `seqs`
    sequences of `context` cached tokens, from the same seeded values in `dtype`."""
    from runtime.engine.model_runner import prepare_step, uniform_batch
    from runtime.layers.attention import causal_mask
    from runtime.layers.mla import mla_attention

    g = torch.Generator().manual_seed(1)
    _, meta, _, _ = prepare_step(uniform_batch(seqs, 1, context, 4), 4, torch.device("cpu"))
    blocks = seqs * -(-(context + 1) // 4)
    values = [torch.randn(blocks, 4, 1, 32, generator=g), torch.randn(blocks, 4, 1, 8, generator=g),
              torch.randn(seqs, 4, 16, generator=g), torch.randn(seqs, 4, 8, generator=g),
              torch.randn(seqs, 32, generator=g), torch.randn(seqs, 8, generator=g),
              torch.randn(4 * 32, 32, generator=g) * 0.2]
    latents, ropes, q_nope, q_pe, latent, k_pe, kv_b = (v.to(dtype) for v in values)
    masks = [causal_mask(group, None) for group in meta.groups]
    return mla_attention(q_nope, q_pe, latent, k_pe, kv_b, (latents, ropes), meta, masks, 0.2, 16, absorbed)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_absorbed_decode_is_as_accurate_as_transformers_op_order(dtype):
    """bf16 greedy tokens cannot be the absorbed decode's measure: no reassociation is bit-exact, and
    a mixture of experts turns a last-bit difference into another expert. Measured on the
    DeepSeek-V3 fixture, 24 prompts x 16 tokens: transformers' own eager and SDPA attention disagree on
    a real (non-tie) token for 11 prompts, the absorbed decode with transformers (SDPA) for 3, the
    decompressed one for none. What holds is accuracy: against fp64, the absorbed decode's error is
    the decompressed (transformers') order's, within 25% (measured: 4% more in bf16, 8% in fp16)."""
    exact = _decode_step(torch.float64, absorbed=False)
    absorbed = (_decode_step(dtype, absorbed=True).double() - exact).abs().mean()
    decompressed = (_decode_step(dtype, absorbed=False).double() - exact).abs().mean()
    assert torch.allclose(_decode_step(torch.float64, absorbed=True), exact, atol=1e-12)
    assert absorbed <= 1.25 * decompressed, (absorbed, decompressed)


@pytest.mark.parametrize("family", [*MLA, "glm4_moe"])
def test_rope_and_softmax_scale_are_transformers(checkpoint, family):
    """YaRN's attention factor on cos/sin and, for MLA, mscale(factor, mscale_all_dim)^2 in the softmax
    scale (DeepSeek-V3's fixture: mscale 1; V2's: 0.707); GLM-4.5 rotates half of each head."""
    from runtime.engine.model_runner import build_model

    path = checkpoint(family)
    ckpt = open_model(path)
    model = build_model(ckpt, torch.device("cpu"), torch.float32)
    hf = hf_model(str(path), torch.float32).model
    assert model.rotary.scaling == pytest.approx(hf.rotary_emb.attention_scaling, rel=1e-12)
    assert torch.equal(model.rotary.inv_freq, hf.rotary_emb.inv_freq.float())
    assert model.cfg.scale == pytest.approx(hf.layers[0].self_attn.scaling, rel=1e-12)
    assert model.cfg.rope_style == {"deepseek_v3": "interleave", "deepseek_v2": "complex", "glm4_moe": "neox"}[family]
    if family == "glm4_moe":
        assert (model.cfg.rotary_dim, model.cfg.head_dim) == (8, 16)


@pytest.mark.parametrize("family", ["deepseek_v3", "glm4_moe"])
def test_the_mtp_layer_is_not_served(checkpoint, family):
    """The checkpoint's layer 3 (num_nextn_predict_layers 1) is read by no module: the runtime has no
    speculative decoding to use it for, and serves the 3 decoder layers."""
    llm = make_llm(checkpoint(family))
    model = llm.engine.runner.model
    assert len(model.model.layers) == 3
    assert not any(".layers.3." in name for name, _ in model.named_parameters())


def test_tensor_parallel_refuses_mla_in_one_line(checkpoint):
    with pytest.raises(UserError, match=r"^tensor parallel does not split multi-head latent attention yet "
                                        r"\(deepseek_v3\); serve it with tensor_parallel_size=1$"):
        open_model(checkpoint("deepseek_v3")).with_tensor_parallel(2, 0)


@pytest.mark.parametrize("family", fx.DEEPSEEK_FAMILIES)
def test_w8a8_dynamic_perplexity_is_within_two_percent_of_float(checkpoint, tmp_path, family):
    """`convert --quantize w8a8-dynamic`: MLA's q_a/q_b (or q_proj), kv_a and o, the dense MLP, the
    shared and routed experts int8 with per-token activations; kv_b_proj, the router and its bias
    float. The prompt-logprob perplexity of the fixture text stays within 2% of the float model's."""
    from ascend_convert.converter import ConvertOptions, convert
    from runtime.evaluation.perplexity import DEFAULT_TEXT, perplexity
    from runtime.layers.quant_linear import QuantLinear

    src = checkpoint(family)
    out = tmp_path / "w8a8-dynamic"
    convert(src, out, ConvertOptions(quantize="w8a8-dynamic", dtype="float32", engine="none"))
    args = {"device": "cpu", "dtype": "float32", "kv_cache_memory": "16MiB"}
    quantized = LLM(out, **args)
    model = quantized.engine.runner.model
    attention, sparse = model.model.layers[1].self_attn, model.model.layers[1].mlp
    assert sparse.experts.gate_up.quantized and isinstance(sparse.shared_expert.gate_up, QuantLinear)
    assert sparse.gate.weight.dtype == torch.float32
    if family in MLA:
        assert isinstance(attention.kv_a_proj_with_mqa, QuantLinear) and isinstance(attention.o, QuantLinear)
        assert type(attention.kv_b_proj) is torch.nn.Linear
    text = DEFAULT_TEXT.read_text()[:6000]
    base = perplexity(LLM(src, **args), text, window=256).value
    value = perplexity(quantized, text, window=256).value
    assert value != base and abs(value / base - 1) < 0.02, (family, base, value)


def test_bench_skips_generate_batch_for_mla_with_the_reason(checkpoint):
    """transformers 5.24's `generate_batch` writes per-head keys into its paged cache and fails on MLA's
    latent (`index_copy_(): ... shapes`): bench leaves that baseline out with a note, and keeps it for
    GLM-4.5 (grouped-query attention)."""
    from runtime.evaluation.bench.systems import BenchConfig, unavailable_reason

    def reason(family: str) -> str | None:
        return unavailable_reason("hf-batch", BenchConfig(checkpoint(family), "float32", "cpu", 1, 1 << 20, 4, 64, None))

    assert reason("deepseek_v3") == ("transformers' generate_batch has no multi-head latent attention (its paged "
                                     "cache holds per-head keys)")
    assert reason("glm4_moe") is None

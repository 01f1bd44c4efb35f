"""The benchmark's floor on quantized and MoE models: one pass reads each weight a batch-1 decode step
reads, in the format it is served in — int8 for msModelSlim's quantized linears (float where a layer
kept float), the `num_experts_per_tok` experts a token reaches — and computes what that layer computes."""

from __future__ import annotations

import pytest
import torch
from conftest import conversion_cache
from safetensors.torch import load_file

from runtime import LLM
from runtime.evaluation.bench.floor import floor_pass, measure_floor


@pytest.fixture(scope="module")
def converted(checkpoint, tmp_path_factory):
    return conversion_cache(tmp_path_factory.mktemp("floor"), checkpoint)


def _served(model_dir):
    runner = LLM(model_dir, device="cpu", kv_cache_memory="4MiB").engine.runner
    return runner.model, runner.dtype


@pytest.mark.parametrize("kind", ["w8a16", "w8a8"])
def test_a_quantized_floor_reads_the_int8_weights_and_the_float_ones_in_the_model_dtype(converted, kind):
    out = converted("llama", quantize=kind, dtype="float32")
    weights = load_file(out / "quant_model_weights.safetensors")
    int8 = sum(t.numel() for name, t in weights.items() if t.dtype == torch.int8)
    floats = sum(t.numel() * 4 for name, t in weights.items()
                 if name.endswith(".weight") and t.dtype == torch.float32 and t.dim() == 2
                 and "embed_tokens" not in name)  # down_proj (W8A8 keeps it float) and lm_head
    model, dtype = _served(out)
    floor = floor_pass(model, dtype)
    assert floor.formats == {kind.upper(): int8, "float32": floats}
    assert floor.weight_bytes == int8 + floats
    assert len(measure_floor(floor, torch.device("cpu"), passes=2)) == 2


def test_an_moe_floor_reads_the_experts_one_token_reaches(checkpoint):
    model, dtype = _served(checkpoint("qwen2_moe"))
    cfg = model.cfg
    everything = sum(p.numel() for name, p in model.named_parameters() if p.dim() >= 2 and "embed_tokens" not in name)
    experts = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 3)
    assert cfg.num_experts_per_tok < cfg.num_experts
    head = model.lm_head.weight.numel() if not cfg.tie_word_embeddings else model.model.embed_tokens.weight.numel()
    want = everything - experts + experts * cfg.num_experts_per_tok // cfg.num_experts
    assert floor_pass(model, dtype).weight_bytes == (want + (head if cfg.tie_word_embeddings else 0)) * dtype.itemsize


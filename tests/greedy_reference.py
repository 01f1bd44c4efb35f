"""transformers `generate` as the reference for the runtime's greedy tokens, and the comparison
(`runtime.evaluation.greedy_check`: tokens equal, or a divergence only where transformers' top two are a tie),
with the reference cached per session."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from runtime.evaluation.greedy_check import compare_greedy
from runtime.evaluation.greedy_check import hf_greedy as _generate


@dataclass(frozen=True)
class Reference:
    tokens: list[int]
    logits: list[torch.Tensor]  # transformers' logits (fp32) at each generated position

    @property
    def logprobs(self) -> list[torch.Tensor]:
        return [torch.log_softmax(step, -1) for step in self.logits]


def dequantized_checkpoint(quantized: Path, out: Path) -> Path:
    """A float32 checkpoint transformers loads, made from a `convert --quantize` output alone: every int8
    weight dequantized (`(q + offset) * scale`, per channel or group), every float tensor as converted
    (norms with SmoothQuant's scales folded in, for W8A8), the converted config (an int8 head untied)."""
    shutil.copytree(quantized, out, ignore=shutil.ignore_patterns("quant_model_*"))
    q = load_file(quantized / "quant_model_weights.safetensors")
    weights = {}
    for name, tensor in q.items():
        stem = name.removesuffix(".weight")
        if not name.endswith((".weight", ".bias")):
            continue  # a quantized layer's scales, offsets and W8A8's activation parts
        if tensor.dtype == torch.int8:
            scale, offset = q[f"{stem}.weight_scale"], q[f"{stem}.weight_offset"]
            groups = scale.shape[1]
            tensor = (tensor.float().view(tensor.shape[0], groups, -1) + offset.unsqueeze(-1)) * scale.unsqueeze(-1)
        weights[name] = tensor.float().reshape(q[name].shape)
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config))
    return out


@lru_cache(maxsize=4)
def hf_model(path: str, dtype: torch.dtype):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


_CACHE: dict[tuple, Reference] = {}


def hf_greedy(path: str | Path, dtype: torch.dtype, prompt: list[int], max_new_tokens: int) -> Reference:
    """transformers' greedy continuation of one prompt (stopping at EOS, as the runtime does)."""
    key = (str(path), dtype, tuple(prompt), max_new_tokens)
    if key not in _CACHE:
        _CACHE[key] = Reference(*_generate(hf_model(str(path), dtype), prompt, max_new_tokens))
    return _CACHE[key]


def assert_greedy_equal(ours: list[int], ref: Reference, dtype: torch.dtype, what: str = "") -> None:
    result = compare_greedy(ours, ref.tokens, ref.logits, dtype)
    assert result.ok, (f"{what}: token {result.index} differs from transformers (logit gap {result.gap}, not a tie)"
                       f"\nours:         {ours}\ntransformers: {ref.tokens}")

"""transformers `generate` as the reference for the runtime's greedy tokens, and the comparison
(`runtime.evaluation.greedy_check`: tokens equal, or a divergence only where transformers' top two are a tie),
with the reference cached per session."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
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

"""transformers `generate` as the reference for the runtime's greedy tokens, and the comparison.

Tokens must be equal. The one allowance is vLLM's (its `check_logprobs_close`): in a batch, the
runtime pads each sequence's keys to the step's longest context, which changes the order of the
floating-point sums inside attention, so where transformers' top two tokens are a near-tie the
last bit can pick the other one. A divergence is accepted only where transformers' own log-probs of
the two tokens are within `TIE` of each other, and the comparison stops there (from then on the
contexts differ). Any other difference fails, with both sequences in the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

MANTISSA_BITS = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}
TIE_ULPS = {torch.float32: 2**23 * 1e-4, torch.bfloat16: 2, torch.float16: 2}


def tie_tolerance(top_logit: float, dtype: torch.dtype) -> float:
    """How far apart two logits near `top_logit` may be and still be a tie at `dtype`'s precision."""
    ulp = 2.0 ** (torch.tensor(abs(top_logit) or 1.0).log2().floor().item() - MANTISSA_BITS[dtype])
    return TIE_ULPS[dtype] * ulp


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
        model = hf_model(str(path), dtype)
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True,
                                 pad_token_id=model.generation_config.eos_token_id)
        tokens = out.sequences[0, len(prompt):].tolist()
        _CACHE[key] = Reference(tokens, [step[0].float() for step in out.logits])
    return _CACHE[key]


def assert_greedy_equal(ours: list[int], ref: Reference, dtype: torch.dtype, what: str = "") -> None:
    for i, (got, want) in enumerate(zip(ours, ref.tokens)):
        if got != want:
            top = ref.logits[i][want].item()
            gap = top - ref.logits[i][got].item()
            assert gap <= tie_tolerance(top, dtype), (
                f"{what}: token {i} is {got}, transformers gives {want} (logit gap {gap:.4g} at {top:.4g}, "
                f"not a tie)\nours:         {ours}\ntransformers: {ref.tokens}")
            return
    assert ours == ref.tokens, f"{what}: lengths differ\nours:         {ours}\ntransformers: {ref.tokens}"

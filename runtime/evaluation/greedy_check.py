"""Greedy tokens against transformers `generate` on the same weights: the verdict `smoke` gives and
the tests assert.

Tokens must be equal. The one allowance is vLLM's (its `check_logprobs_close`): a batched runtime
sums attention in another order than transformers, so where transformers' top two tokens are a
near-tie the last bit can pick the other one. A divergence is a tie only where transformers' own
logits of the two tokens are within a couple of ulps of the dtype (1e-4 relative for fp32), and the
comparison stops there (from then on the contexts differ). Any other difference is a mismatch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MANTISSA_BITS = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}
TIE_ULPS = {torch.float32: 2**23 * 1e-4, torch.bfloat16: 2, torch.float16: 2}


def tie_tolerance(top_logit: float, dtype: torch.dtype) -> float:
    """How far apart two logits near `top_logit` may be and still be a tie at `dtype`'s precision."""
    ulp = 2.0 ** (math.floor(math.log2(abs(top_logit) or 1.0)) - MANTISSA_BITS[dtype])
    return TIE_ULPS[dtype] * ulp


@dataclass(frozen=True)
class Agreement:
    """`match`: every token equal; `tie`: equal up to `index`, where transformers' top two were a tie;
    `mismatch`: a real difference at `index` (or different lengths, `gap` None)."""

    status: str
    index: int | None = None
    gap: float | None = None

    @property
    def ok(self) -> bool:
        return self.status != "mismatch"


def compare_greedy(ours: list[int], ref_tokens: list[int], ref_logits: list[torch.Tensor],
                   dtype: torch.dtype) -> Agreement:
    """`ref_logits[i]` are transformers' logits at generated position i."""
    for i, (got, want) in enumerate(zip(ours, ref_tokens)):
        if got != want:
            top = ref_logits[i][want].item()
            gap = top - ref_logits[i][got].item()
            return Agreement("tie" if gap <= tie_tolerance(top, dtype) else "mismatch", i, gap)
    if len(ours) != len(ref_tokens):
        return Agreement("mismatch", min(len(ours), len(ref_tokens)))
    return Agreement("match")


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
    """transformers' greedy continuation (stopping at EOS, as the runtime does) and its fp32 logits."""
    with torch.no_grad():
        ids = torch.tensor([prompt], device=model.device)  # the model's device: smoke's CPU, bench_cuda's GPU
        out = model.generate(ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=model.generation_config.eos_token_id)
    return out.sequences[0, len(prompt):].tolist(), [step[0].float() for step in out.logits]

"""RoPE in the three ways the supported families pair a head's dimensions, each exactly as
transformers computes it (the angles' table stays fp32; see `decoder.Rotary`):

- `neox`: rotate halves (`rotate_half`: Llama, Qwen, Mistral, Phi-3, GLM-4.5 on its rotated part), in
  the model dtype, through `Kernels.rotary` (torch_npu's `npu_rotary_mul` when fused);
- `interleave`: rotate adjacent pairs (x0, x1), (x2, x3), ... in the model dtype, the output
  de-interleaved (evens then odds), as DeepSeek-V3's `apply_rotary_pos_emb_interleave` returns it;
- `complex`: adjacent pairs as complex numbers, multiplied in fp32 and rounded once, the output kept
  interleaved (DeepSeek-V2's `apply_rotary_emb`), written with real arithmetic: torch_npu has no
  complex kernels.

Queries and keys go through the same function, so their dot products are the model's whatever layout
a style leaves them in; the cache stores keys in that layout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from runtime.layers.fused_ops import Kernels


def interleave(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, d]; cos/sin [T, 1, d] (`cat(freqs, freqs)`, model dtype) → [T, heads, d]."""
    half = cos.shape[-1] // 2
    cos, sin = cos[..., :half], sin[..., :half]
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.cat((even * cos - odd * sin, odd * cos + even * sin), dim=-1)


def complex_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, d]; cos/sin [T, 1, d] fp32 → x's dtype: (a + ib)(cos + i sin) per pair, in fp32."""
    half = cos.shape[-1] // 2
    cos, sin = cos[..., :half], sin[..., :half]
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)


def rotation(style: str, kernels: Kernels) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The function that rotates queries and keys of a `ModelConfig.rope_style`."""
    return {"neox": kernels.rotary, "interleave": interleave, "complex": complex_pairs}[style]


def partial(rotate: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
            cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the first `cos.shape[-1]` dimensions of each head, the rest passed through (GLM-4.5
    rotates half of each head: `partial_rotary_factor` 0.5)."""
    width = cos.shape[-1]
    if width == x.shape[-1]:
        return rotate(x, cos, sin)
    return torch.cat((rotate(x[..., :width], cos, sin), x[..., width:]), dim=-1)

"""Checked dtype casts: every value that a cast would lose is counted, never silently changed.

Works in chunks so a large embedding costs one output tensor plus a few MB of temporaries.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

CHUNK_ELEMENTS = 1 << 20  # ~2 MB of bf16: the checking passes run in cache (2.4x faster than 8M)


@dataclass
class CastStats:
    overflow: int = 0  # finite source values beyond the target's largest finite value (±65504 for fp16)
    underflow: int = 0  # non-zero source values that become zero
    nan: int = 0  # NaN in the source
    inf: int = 0  # ±Inf in the source
    clamped: int = 0  # overflowed values saturated by --on-overflow clamp
    max_abs_error: float = 0.0  # over values that neither overflowed nor are NaN/Inf

    def to_dict(self) -> dict:
        return asdict(self)

    def merge(self, other: CastStats) -> None:
        for key in ("overflow", "underflow", "nan", "inf", "clamped"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        self.max_abs_error = max(self.max_abs_error, other.max_abs_error)


def checked_cast(src: torch.Tensor, target: torch.dtype, on_overflow: str = "fail") -> tuple[torch.Tensor, CastStats]:
    """Cast `src` to `target`, counting overflow/underflow/NaN/Inf and the largest rounding error.

    With `on_overflow="clamp"` overflowed values saturate to ±max; with "fail" they become ±Inf here
    and the caller refuses the conversion (the stats say how many and where).

    Fast because most values cast exactly (every bf16 value in fp16's normal range does): the cast
    is one pass, a round trip finds the few values that changed or are not finite, and only those
    are examined in detail."""
    stats = CastStats()
    if not src.is_floating_point():
        return src, stats
    same = src.dtype == target
    out = src if same else src.to(target)
    flat_src, flat_out = src.reshape(-1), out.reshape(-1)
    if not same and src.element_size() > out.element_size():
        # float32 → 16 bits (a dequantized FP8 or GGUF weight, a float32 checkpoint): nearly every value
        # rounds, so the bit tests below would only send each chunk on to _examine after three passes
        for start in range(0, flat_src.numel(), CHUNK_ELEMENTS):
            _examine(flat_src[start:start + CHUNK_ELEMENTS], flat_out[start:start + CHUNK_ELEMENTS], stats,
                     on_overflow, target)
        return out, stats
    ints = _INT_VIEW[src.element_size()]
    magnitude_mask = torch.iinfo(ints).max  # every bit but the sign
    inf_bits = int(torch.tensor(float("inf"), dtype=src.dtype).view(ints))
    for start in range(0, flat_src.numel(), CHUNK_ELEMENTS):
        s = flat_src[start:start + CHUNK_ELEMENTS]
        d = flat_out[start:start + CHUNK_ELEMENTS]
        # Integer views: tests on bits are many times faster than float predicates (bf16 isfinite
        # is not vectorised on CPU at all).
        s_bits = s.view(ints)
        magnitude = s_bits & magnitude_mask
        special = int(magnitude.max()) >= inf_bits  # NaN or Inf in the source
        if same:
            if special:
                stats.nan += int(torch.count_nonzero(magnitude > inf_bits))
                stats.inf += int(torch.count_nonzero(magnitude == inf_bits))
            continue
        changed = d.to(s.dtype).view(ints).ne(s_bits)  # rounded or overflowed
        if special:  # NaN/Inf can survive the round trip unchanged
            changed |= magnitude >= inf_bits
        count = int(torch.count_nonzero(changed))
        if count == 0:
            continue
        if count * 4 > s.numel():  # mostly inexact (a float32 source): examine the chunk whole
            _examine(s, d, stats, on_overflow, target)
        else:
            idx = changed.nonzero().squeeze(1)
            sub_d = d[idx]
            _examine(s[idx], sub_d, stats, on_overflow, target)
            if on_overflow == "clamp":
                d[idx] = sub_d
    return out, stats


_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _examine(s: torch.Tensor, d: torch.Tensor, stats: CastStats, on_overflow: str, target: torch.dtype) -> None:
    """Detailed stats for values `s` already cast into `d` (modified in place when clamping).

    The common case costs four passes of whole-tensor reductions: when the source's extremes are
    finite and within the target's range there is no NaN, Inf or overflow, so the only stats are the
    underflows (a zero source casts to zero and nothing else does but an underflow, so the non-zero
    counts differ by exactly those) and the largest error. Boolean masks, and indexing with them,
    cost several times more on CPU; they are left to chunks that need them."""
    limit = torch.finfo(target).max
    wide = s.to(torch.float64) if s.dtype == torch.float64 else s.float()  # bf16 would round 65504 up to 65536
    # before any clamping, which leaves values non-zero anyway (NaN and ±Inf stay non-zero too)
    stats.underflow += int(torch.count_nonzero(wide)) - _nonzero(d)
    if wide.numel():
        lo, hi = (float(v) for v in torch.aminmax(wide))  # NaN anywhere makes both NaN
        if math.isfinite(lo) and math.isfinite(hi) and max(-lo, hi) <= limit:
            err = d.to(wide.dtype).sub_(wide).abs_()
            stats.max_abs_error = max(stats.max_abs_error, float(err.max()))
            return
    finite = torch.isfinite(wide)
    if not bool(finite.all()):
        stats.nan += int(torch.isnan(wide).sum())
        stats.inf += int(torch.isinf(wide).sum())
    over = finite & (wide.abs() > limit)
    n_over = int(over.sum())
    if n_over:
        stats.overflow += n_over
        if on_overflow == "clamp":
            stats.clamped += n_over
            d[over] = wide[over].clamp(-limit, limit).to(target)
    keep = finite & ~over
    if bool(keep.any()):
        err = d.to(wide.dtype).sub_(wide).abs_().masked_fill_(~keep, 0.0)
        stats.max_abs_error = max(stats.max_abs_error, float(err.max()))


def _nonzero(t: torch.Tensor) -> int:
    """Values of `t` that are not ±0, counted on its bits shifted past the sign (twice as fast as
    count_nonzero on bf16)."""
    return int(torch.count_nonzero(t.view(_INT_VIEW[t.element_size()]) << 1))


def cast_error_bound(value: float, dtype: str) -> float:
    """Largest round-to-nearest error casting a value of this magnitude to `dtype` (half an ulp)."""
    info = torch.finfo(getattr(torch, dtype))
    mantissa_bits = {"float16": 10, "bfloat16": 7, "float32": 23, "float64": 52}[dtype]
    return max(abs(value) * 2.0 ** -(mantissa_bits + 1), info.smallest_normal * 2.0 ** -(mantissa_bits + 1))

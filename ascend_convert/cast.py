"""Checked dtype casts: every value that a cast would lose is counted, never silently changed.

Works in chunks so a large embedding costs one output tensor plus a few MB of temporaries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

CHUNK_ELEMENTS = 1 << 22
OVERFLOW_POLICIES = ("fail", "clamp")


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

    def merge(self, other: "CastStats") -> None:
        for key in ("overflow", "underflow", "nan", "inf", "clamped"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        self.max_abs_error = max(self.max_abs_error, other.max_abs_error)


def checked_cast(src: torch.Tensor, target: torch.dtype, on_overflow: str = "fail") -> tuple[torch.Tensor, CastStats]:
    """Cast `src` to `target`, counting overflow/underflow/NaN/Inf and the largest rounding error.

    With `on_overflow="clamp"` overflowed values saturate to ±max; with "fail" they become ±Inf here
    and the caller refuses the conversion (the stats say how many and where)."""
    stats = CastStats()
    if not src.is_floating_point():
        return src, stats
    flat_src = src.reshape(-1)
    same = src.dtype == target
    out = src if same else torch.empty(src.shape, dtype=target)
    flat_out = out.reshape(-1)
    limit = torch.finfo(target).max
    narrowing = torch.finfo(target).max < torch.finfo(src.dtype).max
    for start in range(0, flat_src.numel(), CHUNK_ELEMENTS):
        s = flat_src[start:start + CHUNK_ELEMENTS]
        finite = torch.isfinite(s)
        if not bool(finite.all()):
            stats.nan += int(torch.isnan(s).sum())
            stats.inf += int(torch.isinf(s).sum())
        if same:
            continue
        wide = s.to(torch.float64) if src.dtype == torch.float64 else s.float()  # compare outside the source dtype:
        over = (wide.abs() > limit) & finite if narrowing else None  # bf16 would round 65504 up to 65536
        n_over = int(over.sum()) if over is not None else 0
        if n_over:
            stats.overflow += n_over
            if on_overflow == "clamp":
                stats.clamped += n_over
                wide = torch.where(over, wide.clamp(-limit, limit), wide)  # source ±Inf stays Inf
        d = flat_out[start:start + CHUNK_ELEMENTS]
        d.copy_(wide)  # one rounding from the exact widened value: the same bits as a direct cast
        stats.underflow += int(((wide != 0) & (d == 0)).sum())
        err = (d.to(wide.dtype) - wide).abs()
        keep = finite if over is None or not n_over else finite & ~over
        if not bool(keep.all()):
            err = err[keep]
        if err.numel():
            stats.max_abs_error = max(stats.max_abs_error, float(err.max()))
    return out, stats


def cast_error_bound(value: float, dtype: str) -> float:
    """Largest round-to-nearest error casting a value of this magnitude to `dtype` (half an ulp)."""
    info = torch.finfo(getattr(torch, dtype))
    mantissa_bits = {"float16": 10, "bfloat16": 7, "float32": 23, "float64": 52}[dtype]
    return max(abs(value) * 2.0 ** -(mantissa_bits + 1), info.smallest_normal * 2.0 ** -(mantissa_bits + 1))

"""checked_cast: the counts it reports, and that its values are exactly torch's own cast."""

import math

import pytest
import torch

from ascend_convert.cast import CHUNK_ELEMENTS, cast_error_bound, checked_cast


def test_bf16_to_fp16_equals_torch_cast_bit_for_bit_across_chunks():
    torch.manual_seed(0)
    src = (torch.randn(CHUNK_ELEMENTS + 12345) * 300).bfloat16()
    out, stats = checked_cast(src, torch.float16)
    assert torch.equal(out.view(torch.int16), src.half().view(torch.int16))
    assert stats.overflow == stats.nan == stats.inf == stats.clamped == 0
    assert stats.max_abs_error == pytest.approx(float((src.half().float() - src.float()).abs().max()))


def test_counts_overflow_underflow_nan_inf():
    src = torch.tensor([1.0, 65536.0, -70000.0, 1e-9, float("nan"), float("inf"), 3.14159, 0.0],
                       dtype=torch.bfloat16)
    out, stats = checked_cast(src, torch.float16)
    assert (stats.overflow, stats.underflow, stats.nan, stats.inf, stats.clamped) == (2, 1, 1, 1, 0)
    assert math.isinf(out[1]) and math.isinf(out[2])  # fail policy: the caller refuses the result


def test_overflow_boundary_is_65504_even_for_bf16_sources():
    # 65504 itself is representable; bf16 cannot hold it, its neighbours are 65280 and 65536.
    src = torch.tensor([65280.0, 65536.0], dtype=torch.bfloat16)
    _, stats = checked_cast(src, torch.float16)
    assert stats.overflow == 1


def test_clamp_saturates_overflow_only_and_keeps_source_inf():
    src = torch.tensor([70000.0, -1e6, float("inf"), 2.0], dtype=torch.float32)
    out, stats = checked_cast(src, torch.float16, "clamp")
    assert out.tolist() == [65504.0, -65504.0, float("inf"), 2.0]
    assert (stats.overflow, stats.clamped, stats.inf) == (2, 2, 1)
    assert stats.max_abs_error == 0.0  # clamped values are counted, not folded into the rounding error


def test_widening_and_integers_are_exact():
    src = torch.randn(1000).half()
    out, stats = checked_cast(src, torch.float32)
    assert torch.equal(out, src.float()) and stats.max_abs_error == 0.0
    ints = torch.arange(10)
    out, stats = checked_cast(ints, torch.float16)
    assert out is ints and stats.overflow == 0


def test_error_bound_is_half_an_ulp():
    assert cast_error_bound(1.0, "float16") == 2.0 ** -11
    assert cast_error_bound(1.0, "bfloat16") == 2.0 ** -8

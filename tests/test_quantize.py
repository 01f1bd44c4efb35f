"""The int8 quantization math of `ascend_convert.quantize` in msModelSlim's conventions: shapes,
ranges, the rounding bound, asymmetric zero points, per-group scales, and W8A8's integer matmul
against the float one, including quant_bias and the int64 deq_scale of fp16 models."""

from __future__ import annotations

import pytest
import torch

from ascend_common.errors import UserError
from ascend_convert.quantize import (
    ActivationQuant,
    loaded_deq_scale,
    quant_error,
    quantize_w8a8,
    quantize_weight,
    stored_deq_scale,
)


def weight(out: int = 24, width: int = 64, seed: int = 0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(out, width, generator=g) * 0.05 + shift).to(torch.bfloat16)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [0, 16])
def test_dequantized_weight_is_within_half_a_step(symmetric, group_size):
    w = weight(shift=0.02)  # off-centre rows, where asymmetric gains
    qw = quantize_weight(w, symmetric=symmetric, group_size=group_size)
    groups = 1 if group_size == 0 else 64 // group_size
    assert qw.weight.dtype == torch.int8 and qw.weight.shape == (24, 64)
    assert qw.scale.shape == qw.offset.shape == (24, groups) and qw.scale.dtype == torch.float32
    if symmetric:
        assert torch.all(qw.offset == 0) and qw.weight.min() >= -127
    error = (w.float() - qw.dequantize()).abs().view(24, groups, -1)
    assert torch.all(error <= qw.scale.unsqueeze(-1) / 2 * (1 + 1e-5))
    stats = quant_error(w, qw.dequantize())
    assert stats.max_abs == pytest.approx(error.max().item())
    assert stats.max_rel == pytest.approx(stats.max_abs / w.float().abs().max().item())


def test_asymmetric_uses_the_whole_int8_range_and_keeps_zero_exact():
    w = torch.tensor([[0.0, 0.1, 0.2, 0.3], [-0.4, 0.0, 0.0, 0.1], [0.0, 0.0, 0.0, 0.0]])
    qw = quantize_weight(w, symmetric=False)
    deq = qw.dequantize()
    assert qw.weight[0].min() == -128 and qw.weight[0].max() >= 126  # 254 steps: no end is clamped
    assert torch.all(deq[w == 0] == 0)  # zero weights stay zero
    assert torch.all(deq[2] == 0) and qw.scale[2].item() == 1.0  # an all-zero row
    assert (w - deq).abs().max() <= qw.scale.max() / 2


def test_a_group_size_that_does_not_divide_the_width_is_refused():
    with pytest.raises(UserError, match=r"q_proj.weight: --group-size 24 does not divide its 64 input columns"):
        quantize_weight(weight(), group_size=24, name="q_proj.weight")
    with pytest.raises(UserError, match=r"only 2-D linear weights"):
        quantize_weight(torch.zeros(4), name="norm.weight")


def test_activation_params_map_the_observed_range_onto_int8():
    act = ActivationQuant.from_range(-2.0, 6.0)
    assert act.scale == pytest.approx(8.0 / 254) and act.offset == round(2.0 / act.scale) - 128
    x = torch.tensor([-2.0, 0.0, 6.0, 100.0])
    q = act.quantize(x).tolist()
    assert q[:2] == [-128, act.offset] and q[3] == 127
    assert abs((q[2] - act.offset) * act.scale - 6.0) <= act.scale * (0.5 + 1e-4)  # not clamped (fp32 scale: ~1e-5 steps)
    positive = ActivationQuant.from_range(0.5, 4.0)  # widened to hold 0
    assert positive.offset == -128
    assert ActivationQuant.from_range(0.0, 0.0).scale == 1.0


@pytest.mark.parametrize("with_bias", [True, False])
def test_w8a8_integer_matmul_matches_the_float_one(with_bias):
    g = torch.Generator().manual_seed(1)
    w = weight(32, 96, seed=2)
    bias = torch.randn(32, generator=g) * 0.1 if with_bias else None
    x = torch.randn(5, 96, generator=g) * 1.5 + 0.3
    act = ActivationQuant.from_range(x.min().item(), x.max().item())
    layer = quantize_w8a8(w, bias, act)
    assert layer.weight.dtype == torch.int8 and layer.quant_bias.dtype == torch.int32
    assert layer.deq_scale.shape == (32,) and layer.input_scale.shape == layer.input_offset.shape == (1,)
    assert torch.all(layer.weight_offset == 0)
    assert torch.allclose(layer.deq_scale, layer.input_scale * layer.weight_scale.squeeze(1))
    row_sums = layer.weight.double().sum(1)
    want_bias = torch.round((bias.double() if with_bias else 0) / layer.deq_scale.double()
                            - act.offset * row_sums)
    assert torch.equal(layer.quant_bias, want_bias.to(torch.int32))
    reference = x @ w.float().t() + (bias if with_bias else 0)
    got = layer.matmul(x)
    # each product carries at most half an activation step and half a weight step of error
    bound = (act.scale / 2 * w.float().abs().sum(1) + layer.weight_scale.squeeze(1) / 2 * x.abs().sum(1, keepdim=True)
             + act.scale * layer.weight_scale.squeeze(1) * 96 / 4 + layer.deq_scale / 2)
    assert torch.all((got - reference).abs() <= bound)
    assert (got - reference).abs().max() < 0.05 * reference.abs().max()


def test_deq_scale_is_an_int64_bit_cast_for_fp16_and_fp32_for_bf16():
    deq = torch.tensor([1.5e-4, 3.0e-3, 0.25], dtype=torch.float32)
    as_int = stored_deq_scale(deq, torch.float16)
    assert as_int.dtype == torch.int64
    assert as_int.tolist() == [int.from_bytes(v.numpy().tobytes(), "little") for v in deq]
    assert torch.equal(loaded_deq_scale(as_int), deq)
    as_float = stored_deq_scale(deq, torch.bfloat16)
    assert as_float.dtype == torch.float32 and torch.equal(loaded_deq_scale(as_float), deq)


def test_quantizing_leaves_torchs_thread_count_as_it_was():
    """quantized_tensors caps torch's intra-op threads while it works (a core stays free for the
    write loop's hash thread) and must give the caller's setting back, even after an error."""
    from ascend_convert.quantize import quantized_tensors

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        quantized_tensors("w", torch.randn(8, 16), symmetric=True, group_size=0, act=None, bias=None,
                          model_dtype="bfloat16")
        assert torch.get_num_threads() == 2
        with pytest.raises(UserError):
            quantized_tensors("w", torch.randn(8, 16), symmetric=True, group_size=5, act=None, bias=None,
                              model_dtype="bfloat16")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

"""The floor of a batch-1 decode step on this machine: one pass of single-row matmuls over every weight
matrix such a step reads, in the dtype and format the model is served in, timed in the benchmark's
own run.

A decode step at batch 1 is bound by reading the weights: whatever attention, norms, sampling and the
engine add comes on top. So `1000 / floor_ms` tokens/s is what no system could beat on these
weights here, and each system's batch-1 decode (`floor_ms / its TPOT p50`) reads as a share of it —
how far from the machine's limit, not only from a peer.

What one pass covers, per kind of module of the served model:
- float linears (and a float router): `F.linear` of one row in the model's dtype;
- W8A16 (int8 weight-only): `torch._weight_int8pack_mm`, the int8 kernel the runtime's per-channel
  layers call (per-group layers have no faster CPU kernel: the per-channel one is their floor too);
  off the CPU, a float matmul over the dequantized weight, as the runtime's host path computes it;
- W8A8 / W8A8_DYNAMIC: the row quantized per token, then `torch._int_mm` on the [in, out] int8 weight;
- routed experts: the `num_experts_per_tok` experts one token reads (their gate/up and down);
- the output projection: `lm_head`, or the tied embedding, in the format it is served in.
Embedding lookups, norms and attention read a few KB per token at batch 1: left out.

On a device other than the CPU the same calls run there and the device is synchronized per pass.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Passes per measurement after two warm-up passes; the median is the figure.
PASSES = 5


@dataclass
class FloorPass:
    """The matmuls of one pass and what they read."""

    calls: list[Callable[[], torch.Tensor]]
    weight_bytes: int
    formats: dict[str, int]  # format -> bytes of weights read in it


def _float_call(weight: torch.Tensor, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    x = torch.randn(1, weight.shape[1], dtype=dtype, device=weight.device)
    w = weight if weight.dtype == dtype else weight.to(dtype)
    return lambda: F.linear(x, w)


def _int8_weight_only_call(weight: torch.Tensor, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    x = torch.randn(1, weight.shape[1], dtype=dtype, device=weight.device)
    scale = torch.ones(weight.shape[0], dtype=dtype, device=weight.device)
    return lambda: torch._weight_int8pack_mm(x, weight, scale)


def _int8_activation_call(weight: torch.Tensor, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    from runtime.layers.quant_linear import dynamic_quant

    x = torch.randn(1, weight.shape[1], dtype=dtype, device=weight.device)
    weight_t = weight.t().contiguous()

    def call() -> torch.Tensor:
        xq, _ = dynamic_quant(x)
        return torch._int_mm(xq, weight_t)
    return call


def _call_for(kind: str, weight: torch.Tensor, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    if kind == "W8A16":
        return _int8_weight_only_call(weight, dtype)
    if kind in ("W8A8", "W8A8_DYNAMIC"):
        return _int8_activation_call(weight, dtype)
    return _float_call(weight, dtype)


def floor_pass(model: nn.Module, dtype: torch.dtype) -> FloorPass:
    """The single-row matmuls over the weights a batch-1 decode step of `model` (a runtime
    `CausalLM`) reads. Built once: the inputs and any transposed copies are made here, not timed."""
    from runtime.layers.moe import ExpertWeights, Router
    from runtime.layers.quant_linear import QuantLinear

    cfg = model.cfg
    calls: list[Callable[[], torch.Tensor]] = []
    formats: dict[str, int] = {}

    def add(kind: str, weight: torch.Tensor) -> None:
        if kind == "W8A16" and weight.device.type != "cpu":
            # off the CPU torch has no int8 weight-only matmul: the runtime's host path multiplies by
            # the dequantized float weight (an NPU runs torch_npu's kernel: not measured here)
            kind, weight = "FLOAT", weight.to(dtype)
        label = kind if kind in ("W8A16", "W8A8", "W8A8_DYNAMIC") else str(dtype).removeprefix("torch.")
        calls.append(_call_for(kind, weight, dtype))
        formats[label] = formats.get(label, 0) + weight.numel() * (1 if weight.dtype == torch.int8 else dtype.itemsize)

    for module in model.model.layers.modules():
        if isinstance(module, QuantLinear):
            add(module.kind, module.weight.data)
        elif isinstance(module, (nn.Linear, Router)):
            add("FLOAT", module.weight.data)
        elif isinstance(module, ExpertWeights):
            kind = "W8A8_DYNAMIC" if module.quantized else "FLOAT"
            for e in range(min(cfg.num_experts_per_tok or 1, module.weight.shape[0])):
                add(kind, module.weight.data[e])
    head = model.model.embed_tokens if cfg.tie_word_embeddings else model.lm_head
    add(head.kind if isinstance(head, QuantLinear) else "FLOAT", head.weight.data)
    return FloorPass(calls, sum(formats.values()), formats)


def _time_pass(floor: FloorPass, sync: Callable[[], None]) -> float:
    start = time.perf_counter()
    for call in floor.calls:
        call()
    sync()
    return (time.perf_counter() - start) * 1000


@torch.inference_mode()
def measure_floor(floor: FloorPass, device: torch.device, passes: int = PASSES) -> list[float]:
    """`passes` timed passes (ms each) after two warm-up ones."""
    sync = (lambda: torch.accelerator.synchronize()) if device.type != "cpu" else (lambda: None)
    for _ in range(2):
        _time_pass(floor, sync)
    return [_time_pass(floor, sync) for _ in range(passes)]


def floor_figures(floor: FloorPass, times_ms: list[float]) -> dict:
    """The report's `floor`: the median pass, the bytes it read (per format), the bandwidth that
    makes, and the tokens/s no batch-1 decode can beat here."""
    ms = statistics.median(times_ms)
    return {"ms": ms, "min_ms": min(times_ms), "passes": len(times_ms), "weight_bytes": floor.weight_bytes,
            "formats": floor.formats, "gb_per_s": floor.weight_bytes / ms / 1e6,
            "tok_s": 1000 / ms}


class FloorMeter:
    """The floor measured once per benchmark repeat (`measure`), then the report's entry (`figures`).
    A kernel the device lacks (torch's int8 matmuls on an NPU) leaves the entry an error that says
    why, and later repeats do not try again, instead of failing the benchmark."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        self.floor = floor_pass(model, dtype)
        self.device = device
        self.times_ms: list[float] = []
        self.error: str | None = None

    def measure(self) -> None:
        if self.error is not None:
            return
        try:
            self.times_ms.extend(measure_floor(self.floor, self.device))
        except (RuntimeError, NotImplementedError) as e:
            first = str(e).splitlines()[0] if str(e) else ""
            self.error = f"not measured on {self.device.type}: {type(e).__name__}: {first}"

    def figures(self, at_batch_1: dict[str, object]) -> dict:
        """The report's `floor`, with each system's batch-1 decode as a share of it (`decode_shares`)."""
        if self.error is not None:
            return {"error": self.error}
        figures = floor_figures(self.floor, self.times_ms)
        return {**figures, "decode_share": decode_shares(figures["ms"], at_batch_1)}


def decode_shares(floor_ms: float, at_batch_1: dict[str, object]) -> dict[str, float | None]:
    """Each system's batch-1 decode as a share of the floor: floor ms / its TPOT p50 (`at_batch_1`:
    the single workload's systems, or the sweep's batch-1 entry, whose other keys are skipped)."""
    return {name: (floor_ms / m["tpot_ms"]["p50"] if m["tpot_ms"]["p50"] else None)
            for name, m in at_batch_1.items() if isinstance(m, dict) and "tpot_ms" in m}

"""W8A8's inputs to the write, decided once before it: every quantized linear's activation range
(after smoothing) and the SmoothQuant scales. Calibration runs the source model (calibrate.py);
`--resume` takes both from the interrupted run's journal instead, so a resumed conversion
quantizes exactly as the first one did."""

from __future__ import annotations

from pathlib import Path

import torch

from .plan import ConversionPlan, TensorJob
from .smoothing import SMOOTH_GROUPS, Smoothing, smoothed_range, smoothing_scales
from .workdir import resumable_journal


def calibrate_plan(plan: ConversionPlan) -> None:
    """Fill `plan.calibration` and `plan.smoothing`; before the work directory exists, so a failed
    calibration leaves nothing behind."""
    journal = resumable_journal(plan)
    if journal is not None and "calibration" in journal:
        plan.calibration = {name: (lo, hi) for name, (lo, hi) in journal["calibration"].items()}
        plan.smoothing = Smoothing.from_json(journal.get("smoothing", {"scales": {}, "linear_to_norm": {}}))
        return
    from .calibrate import calibrate, calibration_texts

    texts = calibration_texts(Path(plan.quant.calib) if plan.quant.calib else None)
    # only the static W8A8 linears: an MoE model's experts are W8A8_DYNAMIC (scaled per token at run time)
    names = {j.info.name for j in plan.jobs if j.quantized and plan.quant.type_of(j.role) == "W8A8"}
    channels = calibrate(plan.src, names, texts, plan.source_dtype, plan.options.trust_remote_code)
    if plan.quant.smooth_alpha:
        plan.smoothing = _smoothing(plan, channels)
    plan.calibration = {name: smoothed_range(lo, hi, plan.smoothing.scales.get(plan.smoothing.linear_to_norm.get(name, "")))
                        for name, (lo, hi) in channels.items()}


def journal_entries(plan: ConversionPlan) -> dict:
    """What the journal keeps of the calibration, for `calibrate_plan` on resume."""
    return {"calibration": {name: list(r) for name, r in plan.calibration.items()},
            "smoothing": plan.smoothing.to_json()}


def _smoothing(plan: ConversionPlan, channels: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Smoothing:
    """SmoothQuant scales for each layer's norm-fed groups (q/k/v after the attention norm, gate/up
    after the MLP norm) whose linears are all quantized."""
    jobs = plan.jobs
    by_layer: dict[tuple[int | None, str], TensorJob] = {(j.layer, j.role): j for j in jobs}
    smoothing = Smoothing()
    for layer in sorted({j.layer for j in jobs if j.layer is not None}):
        for norm_role, linear_roles in SMOOTH_GROUPS:
            norm = by_layer.get((layer, norm_role))
            linears = [by_layer[(layer, r)] for r in linear_roles if (layer, r) in by_layer]
            if norm is None or not linears or not all(plan.quant.type_of(j.role) == "W8A8" and j.quantized
                                                      for j in linears):
                continue
            act = torch.stack([torch.maximum(channels[j.info.name][0].abs(), channels[j.info.name][1].abs())
                               for j in linears]).amax(0)
            weight = torch.stack([plan.reader.load(j.info).float().abs().amax(0) for j in linears]).amax(0)
            if act.shape != norm.info.shape:
                continue  # a norm that does not scale this input channel by channel: nothing to fold into
            smoothing.scales[norm.info.name] = smoothing_scales(act, weight, plan.quant.smooth_alpha)
            smoothing.linear_to_norm.update({j.info.name: norm.info.name for j in linears})
    return smoothing

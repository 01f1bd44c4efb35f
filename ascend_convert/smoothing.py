"""SmoothQuant for W8A8: move activation outliers into the weights before quantizing both.

Static per-tensor activation quantization (msModelSlim's W8A8) gives every channel of a layer's input
one step size, so a few channels that are 100x larger than the rest leave the others a handful of
int8 levels. SmoothQuant (Xiao et al., 2023; msModelSlim's `AntiOutlier` "m1") divides each input
channel c by `s_c = max|x_c|^alpha / max|W_:,c|^(1-alpha)` and multiplies the weight's column c by
it: the product is unchanged, the activation is flatter, the weight a little less so. The division is
folded into the RMSNorm weight in front of the layers (the norm output is the input of q/k/v, or of
gate/up), so nothing is added at run time and the files keep msModelSlim's layout.

Only the norm-fed groups are smoothed: their fold is exact in every family the specs describe.
The other outlier site, down_proj's input (the SwiGLU output, where "massive activations" of a few
hundred to thousands sit on a few tokens), is better left in float (`--keep-float down`, the W8A8
default): on SmolLM2-135M, per-tensor W8A8 of down_proj alone costs +79% perplexity, smoothing it
(folding into up_proj's rows) still +19%, leaving it float +1.3% in all.

The scales are written beside the weights (`ascend_smoothing.json`, covered by the manifest)
so that `verify --source` can redo the conversion exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .layout_names import SMOOTHING_NAME

#: The norm role of a decoder layer and the spec roles of the linear layers it feeds.
SMOOTH_GROUPS = (("attn_norm", ("q", "k", "v", "qkv")), ("mlp_norm", ("gate", "up", "gate_up")))
#: Bounds on a smoothing scale: keep the folded norm weights and the scaled weights far inside fp16's
#: range even for a channel the calibration never saw active.
SCALE_MIN, SCALE_MAX = 1e-2, 1e2
#: Its file (layout_names.SMOOTHING_NAME); fp32 values survive the round trip through Python floats exactly.
SIDE_FILE = SMOOTHING_NAME


@dataclass
class Smoothing:
    """`scales[norm weight name]`, and which norm each smoothed linear weight is paired with (names
    are the checkpoint's own)."""

    scales: dict[str, torch.Tensor] = field(default_factory=dict)
    linear_to_norm: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.scales)

    def transform(self, name: str) -> str | None:
        """The manifest's name for what smoothing does to tensor `name` (None: nothing)."""
        if name in self.scales:
            return "smooth:divide"
        if name in self.linear_to_norm:
            return f"smooth:multiply:{self.linear_to_norm[name]}"
        return None

    def apply(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` as smoothing changes it: a norm weight divided by its scales, a linear weight's
        columns multiplied by its norm's (fp32 arithmetic, whatever the stored dtype)."""
        if name in self.scales:
            return tensor.float() / self.scales[name]
        norm = self.linear_to_norm.get(name)
        if norm is None:
            return tensor
        return tensor.float() * self.scales[norm].unsqueeze(0)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Smoothing:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))

    def to_json(self) -> dict:
        return {"scales": {n: s.tolist() for n, s in self.scales.items()}, "linear_to_norm": self.linear_to_norm}

    @classmethod
    def from_json(cls, data: dict) -> Smoothing:
        return cls({n: torch.tensor(s, dtype=torch.float32) for n, s in data["scales"].items()},
                   dict(data["linear_to_norm"]))


def smoothing_scales(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-channel scales for an input whose channels peak at `act_absmax` feeding
    weights whose columns peak at `weight_absmax`."""
    a, w = act_absmax.float().clamp(min=1e-5), weight_absmax.float().clamp(min=1e-5)
    return (a.pow(alpha) / w.pow(1 - alpha)).clamp(SCALE_MIN, SCALE_MAX)


def smoothed_range(lo: torch.Tensor, hi: torch.Tensor, scales: torch.Tensor | None) -> tuple[float, float]:
    """The per-tensor (min, max) of an input with per-channel minima `lo` and maxima `hi`, once each
    channel is divided by its (positive) scale."""
    if scales is not None:
        lo, hi = lo / scales, hi / scales
    return float(lo.min()), float(hi.max())

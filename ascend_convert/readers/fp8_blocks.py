"""Block-FP8 sources (`quantization_config.quant_method = "fp8"` with `weight_block_size`), as
DeepSeek-V3/R1, Qwen3-FP8 and others publish them: each linear weight in float8_e4m3fn and beside it
`<name>_scale_inv`, one float32 per [bo, bi] block (edge blocks cut short), the weight's value being
fp8 x scale_inv (DeepSeek's `weight_dequant`). No Ascend chip computes in FP8, so the reader
presents each such weight dequantized to float32 (`dequantize:fp8_e4m3_block{bo}x{bi}`), one tensor at
a time, and hides the scales; the cast to the SoC's dtype, quantization and verify then see an
ordinary float weight."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ascend_common.errors import UserError

if TYPE_CHECKING:
    import torch

    from .base import TensorInfo

FP8 = "float8_e4m3fn"
SCALE_SUFFIX = "_scale_inv"
#: How a dequantized weight's transform begins (then the block: `block128x128`).
FP8_TRANSFORM = "dequantize:fp8_e4m3_block"


def block_size(config: dict, where: Path) -> tuple[int, int] | None:
    """[bo, bi] of a block-FP8 checkpoint's config, or None when it is not one."""
    qcfg = config.get("quantization_config")
    if not isinstance(qcfg, dict) or qcfg.get("quant_method") != "fp8":
        return None
    block = qcfg.get("weight_block_size")
    if not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
        raise UserError(f"{where}: quantization_config.weight_block_size {block!r}: expected [rows, cols] of the FP8 "
                        "scale blocks (per-tensor FP8 is not supported)")
    return block[0], block[1]


def present_fp8(infos: list[TensorInfo], config: dict, root: Path
                ) -> tuple[list[TensorInfo], dict[str, TensorInfo], tuple[int, int] | None]:
    """(the tensors as presented, each dequantized weight's name → its scale's TensorInfo, the block)."""
    by_name = {info.name: info for info in infos}
    fp8 = [info for info in infos if info.dtype == FP8]
    if not fp8:
        return infos, {}, None
    block = block_size(config, root / "config.json")
    if block is None:
        raise UserError(f"{root / fp8[0].file}: tensor {fp8[0].name} is {FP8}, but config.json has no block-FP8 "
                        "quantization_config (quant_method fp8 with weight_block_size) to dequantize it with")
    scales: dict[str, TensorInfo] = {}
    for info in fp8:
        scale = by_name.get(info.name + SCALE_SUFFIX)
        if scale is None:
            raise UserError(f"{root / info.file}: tensor {info.name} is {FP8} without its {info.name}{SCALE_SUFFIX} "
                            f"(one float32 scale per {block[0]}x{block[1]} block)")
        want = tuple(math.ceil(d / b) for d, b in zip(info.shape, block)) if len(info.shape) == 2 else None
        if want is None or scale.shape != want or scale.dtype != "float32":
            raise UserError(f"{root / scale.file}: tensor {scale.name} is {scale.dtype} {list(scale.shape)}; the "
                            f"{list(info.shape)} weight's {block[0]}x{block[1]} blocks need float32 "
                            f"{list(want) if want else '[rows, cols]'}")
        scales[info.name] = scale
    hidden = {s.name for s in scales.values()}
    transform = f"{FP8_TRANSFORM}{block[0]}x{block[1]}"
    presented = [replace(info, dtype="float32", transforms=(*info.transforms, transform)) if info.name in scales
                 else info for info in infos if info.name not in hidden]
    return presented, scales, block


def dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """fp8 [out, in] x float32 scale per [bo, bi] block → float32 [out, in] (edge blocks cut short).

    In place on the one float32 copy, a band of `bo` rows at a time times that band's scales widened
    to one row: a full-size widened scale tensor and a product beside it would hold three float32
    copies of the weight at once (1.6 GB for a DeepSeek-V3 dense MLP's 18432 x 7168), where this holds
    one. Each element is multiplied by its own block's scale either way, so the bytes are the same."""
    import torch

    rows, cols = weight.shape
    out = weight.to(torch.float32)
    (bo, bi), (nr, nc) = block, scale_inv.shape
    if rows == nr * bo and cols == nc * bi:  # whole blocks (DeepSeek-V3's 128x128 mostly): one broadcast
        out.view(nr, bo, nc, bi).mul_(scale_inv.view(nr, 1, nc, 1))
        return out
    for i, start in enumerate(range(0, rows, block[0])):
        out[start:start + block[0]].mul_(scale_inv[i].repeat_interleave(block[1])[:cols])
    return out

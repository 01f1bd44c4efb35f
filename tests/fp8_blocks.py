"""Block-FP8 checkpoints as DeepSeek publishes V3/R1 (and Qwen3-FP8): the tests' writer of that format
from a fixture, and the block-by-block dequantization they compare the converter's with."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def to_fp8_blocks(w: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek's weight_quant: per block, scale = amax / 448, fp8 = w / scale."""
    rows, cols = w.shape
    nb = (math.ceil(rows / block[0]), math.ceil(cols / block[1]))
    scale = torch.empty(nb, dtype=torch.float32)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(nb[0]):
        for j in range(nb[1]):
            rows_, cols_ = slice(i * block[0], (i + 1) * block[0]), slice(j * block[1], (j + 1) * block[1])
            part = w[rows_, cols_].float()
            scale[i, j] = part.abs().max().clamp(min=1e-12) / 448
            q[rows_, cols_] = (part / scale[i, j]).to(q.dtype)
    return q, scale


def dequantized(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """The reference, block by block (no broadcasting tricks)."""
    out = q.float()
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            out[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]] *= scale[i, j]
    return out


def fp8_copy(src: Path, dst: Path, is_fp8: Callable[[str], bool], block: tuple[int, int]) -> Path:
    """A copy of the one-file checkpoint `src` at `dst` with the weights `is_fp8` names in FP8 blocks
    (each with its `<name>_scale_inv`) and DeepSeek's `quantization_config` in its config.json."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    for name in [n for n in tensors if is_fp8(n)]:
        tensors[name], tensors[f"{name}_scale_inv"] = to_fp8_blocks(tensors[name], block)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                     "weight_block_size": list(block)}
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst

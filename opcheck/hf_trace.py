"""Export a Hugging Face model from its config.json alone: built on the meta device, no weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ascend_convert.errors import UserError, first_line


def config_dtype(model_dir: Path) -> str:
    """The dtype the checkpoint says it computes in (`dtype` or `torch_dtype`), float32 if unsaid."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    value = config.get("dtype") or config.get("torch_dtype") or "float32"
    return value if value in ("float16", "bfloat16", "float32") else "float32"


def load_config(model_dir: Path, trust_remote_code: bool = False):
    from transformers import AutoConfig

    path = model_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{path}: missing (check_ops reads only config.json, and needs it)")
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: invalid JSON ({exc})") from None
    try:
        return AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers 5 validates configs eagerly; any failure is the config's
        raise UserError(f"{path}: transformers cannot read this config ({type(exc).__name__}: {first_line(exc)})") from None


def export_prefill(model_dir: Path, config, dtype: str, batch: int, seq_len: int,
                   trust_remote_code: bool = False) -> torch.export.ExportedProgram:
    """`config` from `load_config(model_dir)`: read once, used for the dtype and the model."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype),
                                                     trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any failure of a model's constructor is the model's
        raise UserError(f"{model_dir / 'config.json'}: transformers cannot build a model from it "
                        f"({type(exc).__name__}: {first_line(exc)})") from None
    ids = torch.zeros((batch, seq_len), dtype=torch.long, device="meta")
    try:
        return torch.export.export(model.eval(), (), {"input_ids": ids, "use_cache": False}, strict=False)
    except Exception as exc:  # noqa: BLE001 - name the module the trace died in
        raise UserError(f"{model_dir}: tracing {type(model).__name__} failed "
                        f"({type(exc).__name__}: {first_line(exc)})") from None

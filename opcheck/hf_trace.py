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


class DecodeStep(torch.nn.Module):
    """One decode step against a KV cache. torch.export takes tensors, not a `Cache` object, so the
    past keys and values come in as tensors and the `DynamicCache` is built inside the step."""

    def __init__(self, model: torch.nn.Module, config) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, input_ids: torch.Tensor, past_keys: list[torch.Tensor], past_values: list[torch.Tensor]):
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=list(zip(past_keys, past_values)), config=self.config)
        return self.model(input_ids=input_ids, past_key_values=cache, use_cache=True).logits


def _past(config, dtype: torch.dtype, batch: int, past_len: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Meta tensors shaped like a filled cache: [batch, kv_heads, past_len, head_dim] per layer."""
    text = config.get_text_config()
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    shape = (batch, kv_heads, past_len, head_dim)
    layers = range(text.num_hidden_layers)
    return ([torch.zeros(shape, dtype=dtype, device="meta") for _ in layers],
            [torch.zeros(shape, dtype=dtype, device="meta") for _ in layers])


def export_hf(model_dir: Path, config, dtype: str, batch: int, seq_len: int,
              trust_remote_code: bool = False) -> dict[str, torch.export.ExportedProgram]:
    """The prefill step (`seq_len` tokens, no cache) and a decode step (one token after `seq_len`
    cached ones), both exported from one model built on meta. `config` from `load_config`."""
    from transformers import AutoModelForCausalLM

    from .export import export

    torch_dtype = getattr(torch, dtype)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any failure of a model's constructor is the model's
        raise UserError(f"{model_dir / 'config.json'}: transformers cannot build a model from it "
                        f"({type(exc).__name__}: {first_line(exc)})") from None
    model.eval()
    what = f"{model_dir} ({type(model).__name__})"
    ids = torch.zeros((batch, seq_len), dtype=torch.long, device="meta")
    prefill = export(model, (), {"input_ids": ids, "use_cache": False}, f"{what} prefill")
    keys, values = _past(config, torch_dtype, batch, seq_len)
    step = torch.zeros((batch, 1), dtype=torch.long, device="meta")
    decode = export(DecodeStep(model, config), (step, keys, values), None, f"{what} decode", model=model)
    return {"prefill": prefill, "decode": decode}

"""Export a Hugging Face model from its config.json alone: built on the meta device, no weights."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ascend_common.errors import UserError, first_line


def config_dtype(model_dir: Path) -> str:
    """The dtype the checkpoint says it computes in (`dtype` or `torch_dtype`), float32 if unsaid."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    value = config.get("dtype") or config.get("torch_dtype") or "float32"
    return value if value in ("float16", "bfloat16", "float32") else "float32"


_ROUTED_EXPERT = re.compile(r"\.experts\.\d+\.")  # Hub names: mlp.experts.{E}.*, block_sparse_moe.experts.{E}.*


def dynamic_experts(model_dir: Path) -> bool:
    """Whether a converted checkpoint's routed experts are W8A8_DYNAMIC (msModelSlim's
    `w8a8_dynamic`, and its Qwen3-MoE `w8a8` recipe's experts): their tokens are quantized per token
    at run time, which the float model built from config.json does not show. False without a
    description."""
    from ascend_convert.quant_layout import read_description

    description = read_description(model_dir) or {}
    return any(t == "W8A8_DYNAMIC" and _ROUTED_EXPERT.search(name) for name, t in description.items())


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


def _past(config, dtype: torch.dtype, batch: int, past_len: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Meta tensors shaped like a filled cache: [batch, kv_heads, past_len, head_dim] per layer."""
    text = config.get_text_config()
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    shape = (batch, kv_heads, past_len, head_dim)
    layers = range(text.num_hidden_layers)
    return ([torch.zeros(shape, dtype=dtype, device="meta") for _ in layers],
            [torch.zeros(shape, dtype=dtype, device="meta") for _ in layers])


# The experts implementation an MoE model is traced with: transformers' "batched_mm" (each (token,
# expert) pair gathers its expert's weights, `aten.index`, and runs `aten.bmm`) exports on meta in
# every dtype, as plain aten ops that torch_npu has. The others do not: "eager" loops over the
# experts that got tokens (`nonzero()`, data-dependent: torch.export cannot guard on it); the default
# "grouped_mm" exports only in bf16, because `aten._grouped_mm`'s meta kernel rejects any other dtype
# and, while exporting, transformers swaps in its own `transformers::grouped_mm_fallback` custom op
# for non-bf16 weights (a trace artefact: eager on an NPU runs `aten._grouped_mm`'s composite kernel,
# one `mm` per expert, in any dtype).
TRACED_EXPERTS = "batched_mm"


def experts_modules(model: torch.nn.Module) -> list[str]:
    """Paths of the model's MoE experts modules: those transformers' `use_experts_implementation`
    wraps (it gives them `has_gate` and `is_transposed`, and dispatches on the experts implementation)."""
    return [name for name, m in model.named_modules() if hasattr(m, "has_gate") and hasattr(m, "is_transposed")]


def build_model(model_dir: Path, config, dtype: str, trust_remote_code: bool = False) -> torch.nn.Module:
    """The model on the meta device: shapes and dtypes, no memory, no weights read. An MoE model's
    experts run `TRACED_EXPERTS`."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype),
                                                     trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any failure of a model's constructor is the model's
        raise UserError(f"{model_dir / 'config.json'}: transformers cannot build a model from it "
                        f"({type(exc).__name__}: {first_line(exc)})") from None
    if experts_modules(model):
        try:
            model.set_experts_implementation(TRACED_EXPERTS)
        except (ValueError, KeyError) as exc:  # a model class that does not dispatch on the implementation
            raise UserError(f"{model_dir / 'config.json'}: transformers cannot run this model's experts as "
                            f"{TRACED_EXPERTS}, the one implementation that exports on meta "
                            f"({type(exc).__name__}: {first_line(exc)})") from None
    return model.eval()


def experts_implementation(model: torch.nn.Module) -> str | None:
    """The experts implementation an MoE model was traced with; None for a dense model."""
    return model.config._experts_implementation if experts_modules(model) else None


def export_prefill(model: torch.nn.Module, model_dir: Path, batch: int, seq_len: int) -> torch.export.ExportedProgram:
    from .export import export

    ids = torch.zeros((batch, seq_len), dtype=torch.long, device="meta")
    return export(model, (), {"input_ids": ids, "use_cache": False}, f"{model_dir} ({type(model).__name__}) prefill")


def export_decode(model: torch.nn.Module, config, model_dir: Path, batch: int,
                  past_len: int) -> torch.export.ExportedProgram:
    """One token against `past_len` cached ones. torch.export takes tensors, not a `Cache`, so the
    step takes the past keys and values and builds the `DynamicCache` itself; it is exported as the
    model's own forward (swapped in for the export) so module paths in the graph stay the model's."""
    from transformers import DynamicCache

    from .export import export

    forward = model.forward

    def step(input_ids: torch.Tensor, past_keys: list[torch.Tensor], past_values: list[torch.Tensor]):
        cache = DynamicCache(ddp_cache_data=list(zip(past_keys, past_values)), config=config)
        return forward(input_ids=input_ids, past_key_values=cache, use_cache=True).logits

    keys, values = _past(config, next(model.parameters()).dtype, batch, past_len)
    ids = torch.zeros((batch, 1), dtype=torch.long, device="meta")
    model.forward = step
    try:
        return export(model, (ids, keys, values), None, f"{model_dir} ({type(model).__name__}) decode")
    finally:
        del model.forward


def export_hf(model_dir: Path, config, dtype: str, batch: int, seq_len: int,
              trust_remote_code: bool = False) -> dict[str, torch.export.ExportedProgram]:
    """The prefill step (`seq_len` tokens, no cache) and a decode step (one token after `seq_len`
    cached ones), both exported from one model built on meta. `config` from `load_config`."""
    model = build_model(model_dir, config, dtype, trust_remote_code)
    return {"prefill": export_prefill(model, model_dir, batch, seq_len),
            "decode": export_decode(model, config, model_dir, batch, seq_len)}


def trace_hf(model_dir: Path, config, dtype: str, batch: int, seq_len: int,
             trust_remote_code: bool = False) -> tuple[dict, torch.export.ExportedProgram, str | None]:
    """(the ops of both steps, the prefill program, the experts implementation traced or None for a
    dense model): `export_hf`, with the decode export run in a forked child while this process
    exports the prefill. Each export of a 7B config takes ~3.5 s of one core and they share nothing,
    so on two cores this halves the check."""
    from .parallel import in_child
    from .trace import merge_uses, ops_in

    model = build_model(model_dir, config, dtype, trust_remote_code)
    decode = in_child(lambda: ops_in({"decode": export_decode(model, config, model_dir, batch, seq_len)}))
    prefill = export_prefill(model, model_dir, batch, seq_len)
    return merge_uses(ops_in({"prefill": prefill}), decode()), prefill, experts_implementation(model)

"""Export a Hugging Face model from its config.json alone: built on the meta device, no weights."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ascend_common.errors import UserError, first_line

from .layers import LayerSample, sample_layers


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
        config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers 5 validates configs eagerly; any failure is the config's
        raise UserError(f"{path}: transformers cannot read this config ({type(exc).__name__}: {first_line(exc)})") from None
    check_fields(json.loads(path.read_text(encoding="utf-8")), path)
    # The checkpoint's quantization (DeepSeek-V3's FP8 blocks, say) is not what runs on the NPU: convert
    # dequantizes it (or requantizes to W8A8), so the graph to check is the float model. Dropping the
    # field also keeps transformers from setting up its own quantizer for a model built from config.
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    return config


def quant_method(model_dir: Path) -> str | None:
    """The source checkpoint's `quantization_config.quant_method` ("fp8", ...), which the trace ignores."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    quant = config.get("quantization_config")
    return quant.get("quant_method", "unknown") if isinstance(quant, dict) else None


def check_fields(raw: dict, path: Path) -> None:
    """Fields transformers takes without a word but that break (or silently change) the model — the
    expert groups of group-limited routing, MLA's latent sizes — checked as `convert` checks them
    (the family's spec, `ArchSpec.canonical_config`): one line naming the field. A model of no
    family `convert` knows is traced unchecked."""
    from ascend_convert.arch import find_spec

    try:
        spec = find_spec(raw, where=str(path))
    except UserError:
        return  # check_ops traces any transformers model; only the families convert knows have rules
    spec.canonical_config(raw, str(path))


def _past(model: torch.nn.Module, batch: int, past_len: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Meta tensors shaped like a filled cache, as the model itself fills it: one meta forward of
    `past_len` tokens. A cache is not always [batch, kv_heads, past_len, head_dim] per layer: MLA
    (DeepSeek-V2/V3) caches its compressed latent and rope key, [batch, 1, past_len, kv_lora_rank] and
    [batch, 1, past_len, qk_rope_head_dim]; asking the model covers every layout."""
    from .export import failing_module

    ids = torch.zeros((batch, past_len), dtype=torch.long, device="meta")
    try:
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True)
    except Exception as exc:  # noqa: BLE001 - the model's own code failed on meta: name where
        where = failing_module(exc, model)
        raise UserError(f"{type(model).__name__} cannot run a {past_len}-token step on meta"
                        f"{f' in {where}' if where else ''}: {type(exc).__name__}: {first_line(exc)}") from None
    layers = (out.cache if "cache" in out else out.past_key_values).layers
    return ([torch.zeros_like(layer.keys) for layer in layers], [torch.zeros_like(layer.values) for layer in layers])


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

    keys, values = _past(model, batch, past_len)
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


@dataclass
class HFTrace:
    """A config-only trace: the ops of both steps, the prefill program, the experts implementation
    (None for a dense model), which layers were traced (`layers.LayerSample`, None: all of them), and
    the model's MoE layers and routed experts per layer as built (0 for a dense model)."""

    uses: dict
    program: torch.export.ExportedProgram
    experts: str | None
    sample: LayerSample | None
    moe_layers: int
    routed_experts: int

    def weight(self, node) -> int:
        return self.sample.weight(node) if self.sample else 1


def _routed_experts(model: torch.nn.Module) -> tuple[int, int]:
    """(MoE layers, routed experts per layer) of the whole model, before any layer is cut."""
    paths = experts_modules(model)
    if not paths:
        return 0, 0
    experts = model.get_submodule(paths[0])
    count = getattr(experts, "num_experts", None) or next(experts.parameters()).shape[0]
    return len(paths), int(count)


def trace_model(model_dir: Path, config, dtype: str, batch: int, seq_len: int,
                trust_remote_code: bool = False) -> HFTrace:
    """The prefill and decode exports of the model of `config`, one layer of each kind traced
    (`layers.sample_layers`) and its ops counted for every layer of that kind. The decode export runs
    in a forked child while this process exports the prefill: they share nothing, so on two cores
    this halves the check."""
    from .parallel import in_child
    from .trace import merge_uses, ops_in

    model = build_model(model_dir, config, dtype, trust_remote_code)
    moe_layers, routed = _routed_experts(model)
    sample = sample_layers(model)
    weight = sample.weight if sample else None
    config = model.config
    decode = in_child(lambda: ops_in({"decode": export_decode(model, config, model_dir, batch, seq_len)}, weight))
    prefill = export_prefill(model, model_dir, batch, seq_len)
    uses = merge_uses(ops_in({"prefill": prefill}, weight), decode())
    return HFTrace(uses, prefill, experts_implementation(model), sample, moe_layers, routed)


def trace_hf(model_dir: Path, config, dtype: str, batch: int, seq_len: int,
             trust_remote_code: bool = False) -> tuple[dict, torch.export.ExportedProgram, str | None]:
    """(the ops of both steps, the prefill program, the experts implementation traced or None for a
    dense model): `trace_model`'s, for callers that need no more."""
    trace = trace_model(model_dir, config, dtype, batch, seq_len, trust_remote_code)
    return trace.uses, trace.program, trace.experts

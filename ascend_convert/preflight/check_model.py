"""Model rules: the engine supports the SoC, knows the architecture, lists the model type in its
support matrix for that SoC, and every tensor is in a dtype the SoC has (the config's claim and the
tensors themselves: a bf16 norm left in an fp16 checkpoint counts)."""

from __future__ import annotations

from .checkpoint import Checkpoint
from .findings import ERROR, WARNING, Collector
from .target import Deployment

HALF = ("bfloat16", "float16")


def check_model(ckpt: Checkpoint, target: Deployment, facts: dict, out: Collector) -> None:
    soc = target.soc.name
    engine_soc = facts["socs"].get(soc, {"tier": "not listed", "why": "not in the engine's hardware list"})
    if engine_soc["tier"] == "unsupported":
        out.add("model.soc", soc, f"{target.soc.product} is not supported by the engine ({engine_soc['why']})")
    elif engine_soc["tier"] != "supported":
        out.note(f"{soc}: {engine_soc['tier']} in the engine ({engine_soc['why']})")
    _architecture(ckpt, facts, out)
    _support(ckpt, soc, facts, out)
    model_dtype = target.model_dtype(ckpt.text_config())
    if not target.soc.supports(model_dtype):
        declared = ckpt.text_config().get("torch_dtype") or ckpt.text_config().get("dtype")
        out.add("model.dtype", "config.json torch_dtype" if target.dtype == "auto" else "--dtype",
                f"{model_dtype} ({declared!r} in config.json): {target.soc.product} computes in "
                f"{', '.join(d for d in target.soc.dtypes)} only; serve with --dtype float16 and convert to it")
    _tensor_dtypes(ckpt, target, model_dtype, out)


def _architecture(ckpt: Checkpoint, facts: dict, out: Collector) -> None:
    aliases = facts["model_type_aliases"]
    if ckpt.model_type in aliases:
        out.add("model.type", "config.json model_type", f"{ckpt.model_type!r} is not a model type transformers or "
                                                        f"vLLM knows: {aliases[ckpt.model_type]}")
    elif not ckpt.model_type:
        out.add("model.type", "config.json model_type", "missing: the engine cannot pick a model class")
    removed = facts["removed_architectures"]
    architectures = ckpt.config.get("architectures")
    for arch in architectures if isinstance(architectures, list) else []:
        if isinstance(arch, str) and arch in removed:
            out.add("model.architecture", f"config.json architectures {arch}",
                    f"vLLM supported {arch} until v{removed[arch]}; the engine runs on vLLM {facts['vllm_release']}")


def _support(ckpt: Checkpoint, soc: str, facts: dict, out: Collector) -> None:
    for row in facts["models"]:
        if ckpt.model_type in row["model_types"]:
            tier = row["tiers"].get(soc)
            if tier is None:
                out.add("model.support", f"model_type {ckpt.model_type}",
                        f"{row['row']} is listed for {', '.join(row['tiers'])}, not for {soc}")
            elif tier in ("supported", "experimental"):
                out.note(f"model_type {ckpt.model_type}: {row['row']}, {tier} on {soc} in the support matrix")
            else:
                out.add("model.support", f"model_type {ckpt.model_type}", f"{row['row']}: {tier} on {soc}")
            return
    out.add("model.support", f"model_type {ckpt.model_type or '?'}",
            "not in the engine's supported-models matrix: vLLM's own model class runs it, untested on NPU")


def _tensor_dtypes(ckpt: Checkpoint, target: Deployment, model_dtype: str, out: Collector) -> None:
    """Half-precision tensors the SoC lacks are errors; a half type other than the model's is cast
    at load (bf16 → fp16 turns values past ±65504 into inf). float32 tensors (scales, routing
    biases) are the loaders' own choice and not judged here; FP8 weights have no NPU kernel on
    A2/A3/310P."""
    odd: dict[str, list[str]] = {}
    for name, t in ckpt.tensors.items():
        if t.dtype.startswith("float8") or (t.dtype in HALF and t.dtype != model_dtype):
            odd.setdefault(t.dtype, []).append(name)
    for dtype, names in sorted(odd.items()):
        listing = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        if dtype.startswith("float8"):
            out.add("model.tensor_dtype", listing, f"{len(names)} {dtype} tensor(s): {target.soc.product} has no FP8 "
                                                   "matmul; quantize from bf16 with msModelSlim (W8A8) instead", ERROR)
        elif not target.soc.supports(dtype):
            out.add("model.tensor_dtype", listing, f"{len(names)} {dtype} tensor(s) in a {model_dtype} model: "
                                                   f"{target.soc.product} has no {dtype}", ERROR)
        else:
            out.add("model.tensor_dtype", listing, f"{len(names)} {dtype} tensor(s) in a {model_dtype} model: cast to "
                                                   f"{model_dtype} at load", WARNING)

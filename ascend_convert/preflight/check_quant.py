"""Quantized-checkpoint rules, as vllm-ascend's ModelSlim loader reads a checkpoint: the description
file under its one name; every weight it looks up described (embeddings, lm_head — tied or not —,
MTP and vision layers included) and every described tensor present; the parts of a fused module and
the experts of a layer in one type; each type one the release registers for the layer kind, with
every tensor its method declares in that dtype and shape; no `quantization_config` left over."""

from __future__ import annotations

from .checkpoint import Checkpoint
from .findings import ERROR, WARNING, Collector
from .headers import TensorHeader
from .names import expert_of, group_of, layer_of, listing, matches_any
from .target import Deployment


def check_quant(ckpt: Checkpoint, target: Deployment, facts: dict, out: Collector) -> None:
    desc_facts = facts["description"]
    _leftover_config(ckpt, out)
    if ckpt.description is None:
        _no_description(ckpt, target, desc_facts, out)
        return
    float_type = desc_facts["float"]
    types = {k: v for k, v in ckpt.description.items() if k not in desc_facts["model_keys"] and isinstance(v, str)}
    _model_keys(ckpt, desc_facts, out)
    _both_ways(ckpt, types, facts, out)
    packed = facts["packed_modules"].get(ckpt.model_type)
    if packed is None:
        packed = facts["vllm_packed_modules"].get(ckpt.model_type, {})
    _fused(ckpt, types, packed, float_type, out)
    _experts(ckpt, types, packed, float_type, out)
    _parts(ckpt, types, target, facts, out)


def _leftover_config(ckpt: Checkpoint, out: Collector) -> None:
    qcfg = ckpt.config.get("quantization_config")
    if qcfg is None:
        return
    method = qcfg.get("quant_method") if isinstance(qcfg, dict) else None
    if not method:
        out.add("quant.leftover_config", "config.json quantization_config",
                "present without quant_method: on an NPU the engine takes this block as the quantization "
                "description and never reads quant_model_description.json; delete it")
    elif method != "ascend":
        out.add("quant.leftover_config", "config.json quantization_config.quant_method",
                f"{method!r}: vLLM loads the checkpoint as {method} (or, with --quantization ascend, refuses: "
                f"the model config's method does not match); delete the block from a ModelSlim checkpoint")


def _no_description(ckpt: Checkpoint, target: Deployment, desc_facts: dict, out: Collector) -> None:
    name = desc_facts["file"]
    others = sorted(p.name for p in ckpt.root.glob("quant_model_description*.json") if p.name != name)
    quant_parts = [n for n, t in ckpt.tensors.items() if t.dtype == "int8"
                   or n.rsplit(".", 1)[-1] in ("deq_scale", "quant_bias", "input_scale", "input_offset")]
    if others:
        out.add("quant.description", others[0], f"the engine reads {name} only: rename {others[0]} to {name}")
    elif quant_parts:
        out.add("quant.description", name, f"missing, but the files hold quantized tensors ({listing(quant_parts)}): "
                                           "the engine builds the model unquantized and refuses them")
    elif target.quantization:
        out.add("quant.description", name, "missing: --quantization ascend reads it (ModelSlim Quantization Config "
                                           "Not Found)")


def _model_keys(ckpt: Checkpoint, desc_facts: dict, out: Collector) -> None:
    desc, where = ckpt.description, ckpt.description_file
    version = desc.get("version")
    if version is None:
        out.add("quant.version", f"{where} version", "missing: msModelSlim's v1 saver writes it; readers cannot "
                                                     "tell the format")
    elif version not in desc_facts["versions"]:
        out.add("quant.version", f"{where} version", f"{version!r} is not a format version the engine was read "
                                                     f"against ({', '.join(desc_facts['versions'])})")
    model_type = desc.get("model_quant_type")
    known = set(desc_facts["model_quant_types"])
    if model_type is None:
        out.add("quant.model_quant_type", f"{where} model_quant_type", "missing")
    elif model_type not in known:
        out.add("quant.model_quant_type", f"{where} model_quant_type", f"{model_type!r} is not a quant type "
                                                                       "msModelSlim writes")


def _looked_up(name: str, t: TensorHeader, facts: dict) -> bool:
    """Whether the loader asks the description for this tensor: the weight of a linear or embedding
    module (2-D), unless the model builds that module without the quant config (routers, gates)."""
    return name.endswith(".weight") and len(t.shape) == 2 and not matches_any(name, facts["unquantized_modules"])


def _why(name: str, ckpt: Checkpoint, facts: dict) -> str:
    """What kind of module an undescribed weight belongs to, in the words of the issues users file."""
    layer = layer_of(name)
    layers = ckpt.text_config().get("num_hidden_layers")
    if layer is not None and isinstance(layers, int) and layer >= layers:
        return (f"the MTP layer (layer {layer} >= num_hidden_layers {layers}; the engine's note: add it to the "
                "description as FLOAT)")
    if matches_any(name, facts["vision_prefixes"]):
        return "the vision tower"
    if "embed_tokens" in name:
        return "the embedding"
    if name.startswith("lm_head") or ".lm_head" in name:
        return "the LM head"
    return "a linear layer"


def _both_ways(ckpt: Checkpoint, types: dict[str, str], facts: dict, out: Collector) -> None:
    where = ckpt.description_file
    undescribed: dict[str, list[str]] = {}
    other: list[str] = []
    for name, t in ckpt.tensors.items():
        if name in types:
            continue
        if _looked_up(name, t, facts):
            undescribed.setdefault(group_of(name), []).append(name)
        else:
            other.append(name)
    tied = ckpt.text_config().get("tie_word_embeddings", ckpt.config.get("tie_word_embeddings"))
    if tied and "lm_head.weight" not in ckpt.tensors and "lm_head.weight" not in types:
        undescribed.setdefault("lm_head", []).append("lm_head.weight")
    for names in undescribed.values():
        why = _why(names[0], ckpt, facts)
        if names == ["lm_head.weight"] and "lm_head.weight" not in ckpt.tensors:
            why = ("the LM head (tied to the embedding: the engine still builds it with the quant config and looks "
                   "its type up)")
        out.add("quant.undescribed", names[0], f"{len(names)} weight(s) of {why} not in {where} "
                                               f"({listing(names)}): KeyError: '{names[0]}' at load")
    if other:
        out.add("quant.undescribed_other", listing(other), f"{len(other)} tensor(s) not in {where}")
    absent: dict[tuple[str, bool], list[str]] = {}
    for name, qtype in types.items():
        if name not in ckpt.tensors and not (name == "lm_head.weight" and tied):
            absent.setdefault((group_of(name), qtype != facts["description"]["float"]), []).append(name)
    for (group, quantized), names in absent.items():
        out.add("quant.absent", names[0], f"{len(names)} tensor(s) {where} lists are in no weight file "
                                          f"({listing(names)})" + (": their quantized parameters stay unset" if quantized
                                                                   else ""), ERROR if quantized else WARNING)


def _fused(ckpt: Checkpoint, types: dict[str, str], packed: dict, float_type: str, out: Collector) -> None:
    """The loader asks for a fused module's type through each of its parts (`qkv_proj` → q/k/v) and
    refuses parts that differ (FLOAT beside a quantized part, or two quantized types)."""
    for fused, parts in packed.items():
        if fused == "experts":
            continue
        groups: dict[str, dict[str, str]] = {}
        for name, qtype in types.items():
            stem, _, last = name.removesuffix(".weight").rpartition(".")
            if name.endswith(".weight") and last in parts:
                groups.setdefault(f"{stem}.{fused}", {})[last] = qtype
        for prefix, got in sorted(groups.items()):
            if len(set(got.values())) < 2:
                continue
            shown = ", ".join(f"{p} {got[p]}" for p in parts if p in got)
            if float_type in got.values():
                message = (f"Detected some but not all shards of {prefix} are quantized ({shown}): "
                           "all parts of a fused module need one precision")
            else:
                message = f"Not all shards of {prefix} are quantized with same quant type ({shown})"
            out.add("quant.fused_mixed", prefix, message)


def _experts(ckpt: Checkpoint, types: dict[str, str], packed: dict, float_type: str, out: Collector) -> None:
    """One fused-MoE method per layer, chosen from expert 0's parts (the packed map's `experts`
    entry); without that entry the loader looks up `<layer>.experts.weight`, which no description has."""
    layers: dict[str, dict[int, set[str]]] = {}
    for name, qtype in types.items():
        expert = expert_of(name)
        if expert is not None and name.endswith(".weight"):
            prefix = name[: name.index(f".experts.{expert}.")] + ".experts"
            layers.setdefault(prefix, {}).setdefault(expert, set()).add(qtype)
    for prefix, experts in sorted(layers.items()):
        quantized = {e for e, t in experts.items() if t - {float_type}}
        if not quantized:
            continue
        if "experts" not in packed:
            if any(float_type in t for t in experts.values()):
                message = (f"some experts FLOAT, others quantized: without an 'experts' entry in the packed map for "
                           f"{ckpt.model_type}, one FLOAT expert weight makes the whole layer unquantized and the int8 "
                           "experts load as floats")
            else:
                message = (f"no 'experts' entry in the engine's packed map for model_type {ckpt.model_type}: it looks "
                           f"up {prefix}.weight, which the description cannot have (KeyError)")
            out.add("quant.experts_lookup", prefix, message)
            continue
        first = experts.get(0, set())
        odd = sorted(e for e, t in experts.items() if t != first)
        if odd:
            shown = ", ".join(f"expert {e} {'/'.join(sorted(experts[e]))}" for e in [0, *odd[:3]])
            out.add("quant.experts_mixed", prefix, f"experts of one layer in different types ({shown}): the engine "
                                                   f"loads them all with expert 0's method")


def _scheme_kind(name: str) -> str:
    return "moe" if expert_of(name) is not None else "linear"


def _parts(ckpt: Checkpoint, types: dict[str, str], target: Deployment, facts: dict, out: Collector) -> None:
    """Each quantized weight's layer: a type the release registers for its kind, every tensor its
    method declares (dtype and shape), nothing its method does not take; FLOAT weights stored as floats."""
    float_type = facts["description"]["float"]
    schemes = facts["schemes"]
    model_dtype = target.model_dtype(ckpt.text_config())
    by_stem: dict[str, list[str]] = {}
    for name in ckpt.tensors:
        stem, _, suffix = name.rpartition(".")
        by_stem.setdefault(stem, []).append(suffix)
    unsupported: dict[tuple[str, str], list[str]] = {}
    kernel_hits: dict[str, list[str]] = {}
    for name, qtype in sorted(types.items()):
        if not name.endswith(".weight") or name not in ckpt.tensors:
            continue
        weight = ckpt.tensors[name]
        stem = name.removesuffix(".weight")
        if qtype == float_type:
            if weight.dtype == "int8":
                out.add("quant.float_int8", name, "described FLOAT but stored int8: the unquantized method copies the "
                                                  "integers into a float weight")
            extra = sorted(s for s in by_stem.get(stem, []) if s in facts["quant_part_names"])
            if extra:
                out.add("quant.part_extra", f"{stem}.{extra[0]}", f"{stem} is FLOAT but has {', '.join(extra)}: the "
                                                                  "unquantized layer has no such parameter")
            continue
        kind = _scheme_kind(name)
        scheme = schemes.get(qtype, {}).get(kind)
        if scheme is None:
            unsupported.setdefault((qtype, kind), []).append(name)
            continue
        for limit in facts["kernel_limits"]:
            if (limit["type"] == qtype and limit["kind"] == kind and model_dtype in limit["model_dtypes"]
                    and target.soc.name in limit["socs"]):
                kernel_hits.setdefault(limit["message"], []).append(name)
        _check_parts(ckpt, stem, weight, scheme, by_stem.get(stem, []), model_dtype, qtype, out)
    for (qtype, kind), names in sorted(unsupported.items()):
        out.add("quant.unsupported_type", names[0], f"{len(names)} {kind} layer(s) in {qtype} ({listing(names)}): the "
                                                    f"engine registers no {qtype} method for {kind} layers")
    for message, names in kernel_hits.items():
        out.add("quant.kernel_dtype", listing(names), f"{len(names)} layer(s): {message}")


def _check_parts(ckpt: Checkpoint, stem: str, weight: TensorHeader, scheme: dict, present: list[str],
                 model_dtype: str, qtype: str, out: Collector) -> None:
    if len(weight.shape) != 2:
        out.add("quant.part_shape", f"{stem}.weight", f"{qtype} weight of shape {list(weight.shape)}: the method "
                                                      "declares [out, in]")
        return
    sizes = {"out": weight.shape[0], "in": weight.shape[1]}
    missing = [p for p in scheme if p not in present]
    if missing:
        out.add("quant.part_missing", f"{stem}.{missing[0]}", f"{qtype} layer {stem} lacks {', '.join(missing)}")
    for part, spec in scheme.items():
        if part in missing:
            continue
        t = ckpt.tensors[f"{stem}.{part}"]
        want_dtype = spec["dtype"][model_dtype] if isinstance(spec["dtype"], dict) else spec["dtype"]
        is_float = t.dtype in ("float32", "float16", "bfloat16")
        ok_dtype = is_float if want_dtype == "params" else t.dtype == want_dtype or (is_float and "float_ok" in spec)
        if not ok_dtype:
            wanted = f"a float ({model_dtype} at load)" if want_dtype == "params" else want_dtype
            extra = f" for a {model_dtype} model" if isinstance(spec["dtype"], dict) else ""
            out.add("quant.part_dtype", t.name, f"{t.dtype}, the {qtype} method declares {wanted}{extra}")
        want_shape = [sizes.get(d, d) if isinstance(d, str) else d for d in spec["shape"]]
        if list(t.shape) != want_shape:
            out.add("quant.part_shape", t.name, f"shape {list(t.shape)}, the {qtype} method declares {want_shape}")
    extra = sorted(s for s in present if s not in scheme and s != "bias")
    if extra:
        out.add("quant.part_extra", f"{stem}.{extra[0]}", f"{qtype} layer {stem} has {', '.join(extra)}, which its "
                                                          "method has no parameter for")

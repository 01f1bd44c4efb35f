"""Quantized-checkpoint rules, as vllm-ascend's ModelSlim loader reads a checkpoint: the description
file under its one name; every weight it looks up described (embeddings, lm_head — tied or not —,
MTP and vision layers included) and every described tensor present; the parts of a fused module and
the experts of a layer in one type; each type one the release registers for the layer kind, with
every tensor its method declares in that dtype and shape; no `quantization_config` left over."""

from __future__ import annotations

from .check_mtp import mtp_layer
from .checkpoint import Checkpoint
from .findings import ERROR, WARNING, Collector
from .headers import TensorHeader
from .names import expert_of, group_of, layer_of, listing, matches_any
from .target import Deployment


def loader_name(target: Deployment, facts: dict) -> str:
    """Which ModelSlim loader the SoC runs: "a2" (A2/A3's) or 310P's own registry and methods."""
    return facts["soc_loader"].get(target.soc.name, "a2")


def loader_of(target: Deployment, facts: dict) -> dict:
    """The facts of the ModelSlim loader the SoC runs."""
    return facts["loaders"][loader_name(target, facts)]


def check_quant(ckpt: Checkpoint, target: Deployment, facts: dict, out: Collector) -> None:
    desc_facts = facts["description"]
    _leftover_config(ckpt, facts, out)
    if ckpt.description is None:
        _no_description(ckpt, target, facts, out)
        return
    float_type = desc_facts["float"]
    loader = loader_of(target, facts)
    types = {k: v for k, v in ckpt.description.items() if k not in desc_facts["model_keys"] and isinstance(v, str)}
    _model_keys(ckpt, desc_facts, loader, out)
    _both_ways(ckpt, types, loader, facts, out)
    packed = facts["packed_modules"].get(ckpt.model_type)
    if packed is None:
        packed = facts["vllm_packed_modules"].get(ckpt.model_type, {})
    _embeddings(ckpt, types, loader, float_type, out)
    _fused(ckpt, types, packed, float_type, out)
    _experts(ckpt, types, packed, float_type, out)
    _parts(ckpt, types, target, loader, facts, out)


def _quant_method(ckpt: Checkpoint) -> str | None:
    qcfg = ckpt.config.get("quantization_config")
    method = qcfg.get("quant_method") if isinstance(qcfg, dict) else None
    return method if isinstance(method, str) and method else None


def _leftover_config(ckpt: Checkpoint, facts: dict, out: Collector) -> None:
    """A `quantization_config` beside a ModelSlim description fights it (#2296, #1270); one of a
    method the NPU has (compressed-tensors, fp8) is that method's own checkpoint, not a leftover."""
    if "quantization_config" not in ckpt.config:
        return
    method = _quant_method(ckpt)
    subject = "config.json quantization_config"
    if method is None:
        out.add("quant.leftover_config", subject,
                "present without quant_method: on an NPU the engine takes this block as the quantization "
                "description" + (" and never reads " + ckpt.description_file if ckpt.description else "")
                + "; delete it")
    elif method == "ascend":
        return
    elif ckpt.description is not None:
        out.add("quant.leftover_config", f"{subject}.quant_method",
                f"{method!r} beside {ckpt.description_file}: vLLM loads the checkpoint as {method}, or with "
                f"--quantization ascend refuses it (the model config's method does not match); delete the block")
    elif method not in facts["supported_quant_methods"]:
        out.add("quant.leftover_config", f"{subject}.quant_method",
                f"{method!r}: not a quantization the engine has on an NPU "
                f"({', '.join(facts['supported_quant_methods'])})")


def _no_description(ckpt: Checkpoint, target: Deployment, facts: dict, out: Collector) -> None:
    name = facts["description"]["file"]
    if _quant_method(ckpt) in facts["supported_quant_methods"]:
        return  # compressed-tensors or fp8: that method's loader reads the config, not a description
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


def _model_keys(ckpt: Checkpoint, desc_facts: dict, loader: dict, out: Collector) -> None:
    desc, where = ckpt.description, ckpt.description_file
    version = desc.get("version")
    if not isinstance(version, (str, type(None))):
        version = repr(version)
    if version is None:
        out.add("quant.version", f"{where} version", "missing: msModelSlim's v1 saver writes it; readers cannot "
                                                     "tell the format")
    elif version not in desc_facts["versions"]:
        out.add("quant.version", f"{where} version", f"{version!r} is not a format version the engine was read "
                                                     f"against ({', '.join(desc_facts['versions'])})")
    model_type = desc.get("model_quant_type")
    known = {desc_facts["float"], *loader["registered"]["linear"], *loader["registered"]["moe"]}
    if model_type is None:
        out.add("quant.model_quant_type", f"{where} model_quant_type", "missing")
    elif not isinstance(model_type, str) or model_type not in known:
        out.add("quant.model_quant_type", f"{where} model_quant_type", f"{model_type!r} is not a quant type the "
                                                                       "engine registers on this SoC")


def _looked_up(name: str, t: TensorHeader, ckpt: Checkpoint, loader: dict, facts: dict) -> bool:
    """Whether the loader asks the description for this tensor: the weight of a linear, MoE or
    embedding module (2-D) that the model builds with the quant config."""
    if not name.endswith(".weight") or len(t.shape) != 2:
        return False
    lookups, model = facts["lookups"], ckpt.model_type
    if matches_any(name, lookups["looked_up"].get(model, [])):
        return True
    if matches_any(name, lookups["not_looked_up"]["*"] + lookups["not_looked_up"].get(model, [])):
        return False
    if not loader["embedding_lookup"] and _is_embedding(name):
        return False
    return not (mtp_layer(name, ckpt) is not None and matches_any(name, lookups["mtp_not_looked_up"]))


def _is_embedding(name: str) -> bool:
    return name.endswith(("embed_tokens.weight", ".lm_head.weight")) or name == "lm_head.weight"


def _why(name: str) -> str:
    """What kind of module an undescribed weight belongs to, in the words of the issues users file."""
    if "embed_tokens" in name:
        return "the embedding"
    if name.startswith("lm_head") or ".lm_head" in name:
        return "the LM head"
    return "a linear layer"


def _both_ways(ckpt: Checkpoint, types: dict[str, str], loader: dict, facts: dict, out: Collector) -> None:
    where, float_type = ckpt.description_file, facts["description"]["float"]
    undescribed: dict[str, list[str]] = {}
    mtp: dict[str, list[str]] = {}
    other: list[str] = []
    without_prefix = ckpt.model_type in facts["lookups"]["embedding_without_prefix"]
    for name, t in ckpt.tensors.items():
        if name in types:
            continue
        if not _looked_up(name, t, ckpt, loader, facts):
            other.append(name)
        elif mtp_layer(name, ckpt) is not None:
            mtp.setdefault(group_of(name), []).append(name)
        elif without_prefix and name == "model.embed_tokens.weight":
            if float_type not in types.values():  # looked up as '': FLOAT if any weight is FLOAT
                out.add("quant.undescribed", name, f"the {ckpt.model_type} embedding is looked up without a name: "
                                                   f"with no FLOAT entry in {where}, KeyError: '.weight' at load")
        else:
            undescribed.setdefault(group_of(name), []).append(name)
    tied = _tied(ckpt)
    if (tied and loader["embedding_lookup"] and "lm_head.weight" not in ckpt.tensors
            and "lm_head.weight" not in types):
        undescribed.setdefault("lm_head", []).append("lm_head.weight")
    for names in undescribed.values():
        why = _why(names[0])
        if names == ["lm_head.weight"] and "lm_head.weight" not in ckpt.tensors:
            why = ("the LM head (tied to the embedding: the engine still builds it with the quant config and looks "
                   "its type up)")
        elif matches_any(names[0], facts["vision_prefixes"]):
            why = "the vision tower"
        out.add("quant.undescribed", names[0], f"{len(names)} weight(s) of {why} not in {where} "
                                               f"({listing(names)}): KeyError: '{names[0]}' at load")
    layers = ckpt.text_config().get("num_hidden_layers")
    for names in mtp.values():
        out.add("quant.undescribed_mtp", names[0], f"{len(names)} weight(s) of the MTP layer (layer "
                                                   f"{layer_of(names[0])} >= num_hidden_layers {layers}) not in "
                                                   f"{where} ({listing(names)}): served with MTP speculative decoding, "
                                                   f"KeyError: '{names[0]}'; add them as FLOAT")
    norm_biases = [n for n in other if n.endswith("norm.bias")]
    if norm_biases and not any("norm.bias" in key for key in ckpt.description):
        out.add("quant.norm_bias", norm_biases[0], f"{len(norm_biases)} norm bias(es) ({listing(norm_biases)}) and no "
                                                   f"key of {where} names norm.bias: the norms get no bias parameter "
                                                   "and the biases are dropped")
        other = [n for n in other if n not in norm_biases]
    if other:
        out.add("quant.undescribed_other", listing(other), f"{len(other)} tensor(s) not in {where}")
    absent: dict[tuple[str, bool], list[str]] = {}
    for name, qtype in types.items():
        if name not in ckpt.tensors and not (name == "lm_head.weight" and tied):
            absent.setdefault((group_of(name), qtype != float_type), []).append(name)
    for (_, quantized), names in absent.items():
        out.add("quant.absent", names[0], f"{len(names)} tensor(s) {where} lists are in no weight file "
                                          f"({listing(names)})" + (": their quantized parameters stay unset" if quantized
                                                                   else ""), ERROR if quantized else WARNING)


def _tied(ckpt: Checkpoint) -> bool:
    return ckpt.text_config().get("tie_word_embeddings", ckpt.config.get("tie_word_embeddings", True))


def _embeddings(ckpt: Checkpoint, types: dict[str, str], loader: dict, float_type: str, out: Collector) -> None:
    """An embedding's lookup is never int8 (the quantized method has no `embedding()`; 310P builds every
    embedding unquantized, the LM head included); an int8 LM head must be a head of its own: a tied one
    becomes the embedding's float weight and its int8 tensors are skipped at load."""
    for name, qtype in sorted(types.items()):
        if qtype == float_type or not _is_embedding(name):
            continue
        head = name == "lm_head.weight" or name.endswith(".lm_head.weight")
        if not loader["embedding_lookup"]:
            out.add("quant.embedding_quantized", name, f"{qtype}, but this SoC's loader builds every embedding and the "
                                                       "LM head unquantized: the int8 values are copied into a float "
                                                       "weight; make it FLOAT")
        elif not head:
            out.add("quant.embedding_quantized", name, f"{qtype}: the engine's quantized embedding method has no "
                                                       "embedding() (AttributeError at the first forward); make it "
                                                       "FLOAT")
        elif _tied(ckpt):
            out.add("quant.tied_head", name, f"{qtype}, but config.json ties the head to the embedding "
                                             "(tie_word_embeddings): the engine makes the head the embedding's float "
                                             "weight and skips lm_head.* at load, so the int8 head is never read; set "
                                             "tie_word_embeddings to false")


def _mixed(prefix: str, parts: list[str], got: dict[str, str], float_type: str) -> str | None:
    """vllm-ascend's own words for a fused module whose parts differ in type, or None."""
    if len(set(got.values())) < 2:
        return None
    shown = ", ".join(f"{p} {got[p]}" for p in parts if p in got)
    if float_type in got.values():
        return (f"Detected some but not all shards of {prefix} are quantized ({shown}): all parts of a fused module "
                "need one precision")
    return f"Not all shards of {prefix} are quantized with same quant type ({shown})"


def _fused(ckpt: Checkpoint, types: dict[str, str], packed: dict, float_type: str, out: Collector) -> None:
    """The loader asks for a fused module's type through each of its parts (`qkv_proj` → q/k/v) and
    refuses parts that differ (FLOAT beside a quantized part, or two quantized types)."""
    for fused, parts in packed.items():
        if fused == "experts":
            continue
        groups: dict[str, dict[str, str]] = {}
        for name, qtype in types.items():
            stem, _, last = name.removesuffix(".weight").rpartition(".")
            if name.endswith(".weight") and last in parts and expert_of(name) is None:
                groups.setdefault(f"{stem}.{fused}", {})[last] = qtype
        for prefix, got in sorted(groups.items()):
            message = _mixed(prefix, parts, got, float_type)
            if message:
                out.add("quant.fused_mixed", prefix, message)


def _experts(ckpt: Checkpoint, types: dict[str, str], packed: dict, float_type: str, out: Collector) -> None:
    """One fused-MoE method per layer, chosen from expert 0's parts (the packed map's `experts`
    entry: those parts must agree, as a fused module's); without that entry the loader looks up
    `<layer>.experts.weight`, which no description has."""
    layers: dict[str, dict[int, dict[str, str]]] = {}
    for name, qtype in types.items():
        expert = expert_of(name)
        if expert is not None and name.endswith(".weight"):
            cut = name.index(f".experts.{expert}.")
            part = name[cut + len(f".experts.{expert}."):].removesuffix(".weight")
            layers.setdefault(name[:cut] + ".experts", {}).setdefault(expert, {})[part] = qtype
    for prefix, experts in sorted(layers.items()):
        if all(set(parts.values()) == {float_type} for parts in experts.values()):
            continue
        if "experts" not in packed:
            if any(float_type in parts.values() for parts in experts.values()):
                message = (f"some experts FLOAT, others quantized: without an 'experts' entry in the packed map for "
                           f"{ckpt.model_type}, one FLOAT expert weight makes the whole layer unquantized and the int8 "
                           "experts load as floats")
            else:
                message = (f"no 'experts' entry in the engine's packed map for model_type {ckpt.model_type}: it looks "
                           f"up {prefix}.weight, which the description cannot have (KeyError)")
            out.add("quant.experts_lookup", prefix, message)
            continue
        first = experts.get(0, {})
        shards = [p.rsplit(".", 1)[-1].removeprefix("experts.0.") for p in packed["experts"]]
        message = _mixed(f"{prefix}.0", shards, first, float_type)
        if message:
            out.add("quant.fused_mixed", f"{prefix}.0", message)
        odd = sorted(e for e, parts in experts.items() if set(parts.values()) != set(first.values()))
        if odd:
            shown = ", ".join(f"expert {e} {'/'.join(sorted(set(experts[e].values())))}" for e in [0, *odd[:3]])
            out.add("quant.experts_mixed", prefix, f"experts of one layer in different types ({shown}): the engine "
                                                   f"loads them all with expert 0's method")


def _scheme_kind(name: str) -> str:
    return "moe" if expert_of(name) is not None else "linear"


def _parts(ckpt: Checkpoint, types: dict[str, str], target: Deployment, loader: dict, facts: dict,
           out: Collector) -> None:
    """Each quantized weight's layer: a type the SoC's loader registers for its kind, every tensor its
    method declares (dtype and shape, where the method was read), nothing its method does not take;
    FLOAT weights stored as floats."""
    float_type = facts["description"]["float"]
    model_dtype = target.model_dtype(ckpt.text_config())
    runs = loader_name(target, facts)
    c8 = any(ckpt.description.get(k) for k in ("kv_cache_type", "kv_quant_type", "fa_quant_type"))
    by_stem: dict[str, list[str]] = {}
    for name in ckpt.tensors:
        stem, _, suffix = name.rpartition(".")
        by_stem.setdefault(stem, []).append(suffix)
    unsupported: dict[tuple[str, str], list[str]] = {}
    unread: set[str] = set()
    kernel_hits: dict[str, list[str]] = {}
    for name, qtype in sorted(types.items()):
        if not name.endswith(".weight") or name not in ckpt.tensors:
            continue
        weight = ckpt.tensors[name]
        stem = name.removesuffix(".weight")
        present = [s for s in by_stem.get(stem, []) if not (c8 and s.startswith("kv_cache_"))]
        if qtype == float_type:
            if weight.dtype == "int8":
                out.add("quant.float_int8", name, "described FLOAT but stored int8: the unquantized method copies the "
                                                  "integers into a float weight")
            extra = sorted(s for s in present if s in facts["quant_part_names"])
            if extra:
                out.add("quant.part_extra", f"{stem}.{extra[0]}", f"{stem} is FLOAT but has {', '.join(extra)}: the "
                                                                  "unquantized layer has no such parameter")
            continue
        kind = _scheme_kind(name)
        if qtype not in loader["registered"][kind]:
            unsupported.setdefault((qtype, kind), []).append(name)
            continue
        for limit in facts["kernel_limits"]:
            if (limit["type"] == qtype and limit["kind"] == kind and model_dtype in limit["model_dtypes"]
                    and limit["loader"] == runs and (not limit.get("with_bias") or "bias" in present)):
                kernel_hits.setdefault(limit["message"], []).append(name)
        scheme = loader["schemes"].get(qtype, {}).get(kind)
        if scheme is None:
            unread.add(f"{qtype} {kind}")
            continue
        _check_parts(ckpt, stem, weight, scheme, present, model_dtype, qtype, out)
    for (qtype, kind), names in sorted(unsupported.items()):
        out.add("quant.unsupported_type", names[0], f"{len(names)} {kind} layer(s) in {qtype} ({listing(names)}): the "
                                                    f"engine registers no {qtype} method for {kind} layers on "
                                                    f"{target.soc.name}")
    for message, names in kernel_hits.items():
        out.add("quant.kernel_dtype", listing(names), f"{len(names)} layer(s): {message}")
    if unread:
        out.note(f"registered, but their tensors not checked (the method's parameters were not read into the rules): "
                 f"{', '.join(sorted(unread))}")


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
        if list(t.shape) != want_shape and not (want_shape == [1] and t.shape == ()):  # vLLM reshapes a 0-d scalar
            out.add("quant.part_shape", t.name, f"shape {list(t.shape)}, the {qtype} method declares {want_shape}")
    extra = sorted(s for s in present if s not in scheme and s != "bias")
    if extra:
        out.add("quant.part_extra", f"{stem}.{extra[0]}", f"{qtype} layer {stem} has {', '.join(extra)}, which its "
                                                          "method has no parameter for")

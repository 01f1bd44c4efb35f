"""Multi-token-prediction (MTP) layer rules: the layers stored after the decoder's
(`layer >= num_hidden_layers`), loaded only when the model is served with MTP speculative decoding.
The parts around the MTP decoder block (eh_proj, the two input norms, the head's norm, its
embedding) are built without a quant method, so they must be floats; a quantized decoder block is
described, but known to fail at run time (vllm-ascend #2771)."""

from __future__ import annotations

from .checkpoint import Checkpoint
from .findings import Collector
from .names import layer_of, listing, matches_any


def mtp_layer(name: str, ckpt: Checkpoint) -> int | None:
    """The layer index of an MTP layer's tensor: one past the model's layers, else None."""
    layer = layer_of(name)
    layers = ckpt.text_config().get("num_hidden_layers")
    return layer if layer is not None and isinstance(layers, int) and layer >= layers else None


def check_mtp(ckpt: Checkpoint, facts: dict, out: Collector) -> None:
    float_modules = facts["mtp"]["float_modules"]
    float_type = facts["description"]["float"]
    quant_parts = set(facts["quant_part_names"])
    described = {k: v for k, v in (ckpt.description or {}).items() if isinstance(v, str) and mtp_layer(k, ckpt) is not None}
    # the float-only parts: quantized in the files (int8, or a quantization parameter) or in the description
    bad: dict[str, str] = {}
    for name, t in ckpt.tensors.items():
        stem, _, suffix = name.rpartition(".")
        if mtp_layer(name, ckpt) is None or not matches_any(stem, float_modules):
            continue
        if suffix in quant_parts:
            bad.setdefault(stem, f"{name} in the files")
        elif t.dtype == "int8":
            bad.setdefault(stem, f"{name} stored int8")
    for name, qtype in described.items():
        stem = name.rpartition(".")[0]
        if qtype != float_type and matches_any(stem, float_modules):
            bad.setdefault(stem, f"{name} described {qtype}")
    for stem, why in sorted(bad.items()):
        out.add("quant.mtp_float_parts", stem, f"{why}: the MTP layer builds {stem.rsplit('.', 1)[-1]} without a "
                                               "quant method; store and describe it FLOAT")
    _quantized_block(ckpt, described, float_modules, float_type, out)


def _quantized_block(ckpt: Checkpoint, described: dict[str, str], float_modules: list[str], float_type: str,
                     out: Collector) -> None:
    """One warning per MTP layer whose decoder block is described in a quantized type."""
    layers: dict[int, list[str]] = {}
    for name, qtype in sorted(described.items()):
        if (name.endswith(".weight") and qtype != float_type
                and not matches_any(name.rpartition(".")[0], float_modules)):
            layers.setdefault(mtp_layer(name, ckpt), []).append(name)
    total = ckpt.text_config().get("num_hidden_layers")
    for layer, names in sorted(layers.items()):
        types = "/".join(sorted({described[n] for n in names}))
        out.add("quant.mtp_quantized", names[0],
                f"{len(names)} weight(s) of the MTP layer (layer {layer} >= num_hidden_layers {total}) described "
                f"{types} ({listing(names)}): served with MTP speculative decoding, a quantized MTP layer fails at "
                "run time on DeepSeek-R1 (vllm-ascend #2771: only W8A8 with a FLOAT MTP layer works); the main model "
                "skips the layer")

"""The small files beside the weights: the source's tokenizer and generation config (copied, or
built from GGUF metadata), config.json with the target dtype (untied where the LM head is quantized
on its own), the shard index past one shard, the
quantized layout's description (each tensor's type as `QuantOptions.type_of` gives its role), and
W8A8's smoothing scales. All rewritten on every run, resumed or
not, so they always match the weights they sit beside."""

from __future__ import annotations

import json
from pathlib import Path

from .layout_names import (
    CONFIG_NAME,
    HF_INDEX_NAME,
    QUANT_DESCRIPTION_NAME,
    QUANT_INDEX_NAME,
    SMOOTHING_NAME,
)
from .plan import ConversionPlan, TensorJob
from .quant_layout import FLOAT, LINEAR_BIAS_ROLES, QuantOptions, bias_type, description
from .workdir import WorkDir


def write_side_files(plan: ConversionPlan, work: WorkDir, weight_files: list[str]) -> list[str]:
    """Clear everything in `work` but the weight files (a resumed run may hold stale small files),
    then write the side files; returns their names, sorted."""
    work.clear_except({name.split("/")[0] for name in weight_files})
    written = plan.reader.write_side_files(work.path)
    config = dict(plan.reader.config())
    config.pop("quantization_config", None)
    keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
    for key in keys:
        config[key] = plan.dtype
    if any(j.role == "lm_head" and j.quantized for j in plan.jobs):
        config["tie_word_embeddings"] = False  # an int8 head of its own: vLLM would tie it to the float embedding
    if (plan.options.mtp == "drop" or plan.packed) and "num_nextn_predict_layers" in config:
        config["num_nextn_predict_layers"] = 0  # no engine may look for the layers left out (packed: never split)
    _write_json(work.path / CONFIG_NAME, config, sort_keys=True)
    written.append(CONFIG_NAME)
    if len(plan.shards) > 1 and not plan.packed:
        index = {"metadata": {"total_size": plan.total_bytes},
                 "weight_map": {p.name: s.name for s in plan.shards for j in s.jobs for p in j.parts}}
        index_name = HF_INDEX_NAME if plan.quant is None else QUANT_INDEX_NAME
        _write_json(work.path / index_name, index, sort_keys=True)
        written.append(index_name)
    if plan.quant is not None:
        quant = plan.quant
        quantized = {j.info.name for j in plan.jobs if j.quantized}
        types = {p.name: quant.type_of(j.role) if j.quantized else _bias_type(j, quant, quantized)
                 if j.role in LINEAR_BIAS_ROLES else FLOAT for j in plan.jobs for p in j.parts}
        if config.get("tie_word_embeddings", True) and "lm_head.weight" not in types:
            # vLLM builds a tied model's lm_head with the quant config all the same and looks its type up
            # (KeyError: 'lm_head.weight', vllm-ascend #8367); msModelSlim lists it, FLOAT
            types["lm_head.weight"] = FLOAT
        _write_json(work.path / QUANT_DESCRIPTION_NAME, description(types, plan.quant))
        written.append(QUANT_DESCRIPTION_NAME)
    if plan.smoothing:
        plan.smoothing.save(work.path / SMOOTHING_NAME)
        written.append(SMOOTHING_NAME)
    return sorted(written)


def _bias_type(job: TensorJob, quant: QuantOptions, quantized: set[str]) -> str:
    """A linear bias's type: its layer's (`bias_type`), FLOAT where the layer's weight stays float (an MTP
    layer kept float, `--keep-float`)."""
    weight = job.info.name.removesuffix(".bias") + ".weight"
    return bias_type(quant.type_of(job.role.removesuffix("_bias"))) if weight in quantized else FLOAT


def _write_json(path: Path, data: dict, sort_keys: bool = False) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=sort_keys)
        f.write("\n")

"""Multi-head latent attention rules (DeepSeek-V2/V3/R1 and the models built like them): the
engine's MLA backend absorbs kv_b_proj from its float weight and has no quantized path, and 310P's
runner has no MLA attention at all. Which models are MLA is the rule set's fact (vLLM's model-type
list and the config key it needs), not a list of names here."""

from __future__ import annotations

from .checkpoint import Checkpoint
from .findings import Collector
from .names import listing, matches_any
from .target import Deployment


def is_mla(ckpt: Checkpoint, facts: dict) -> bool:
    """vLLM's use_mla: a model type it builds with latent attention, and the config's latent rank set."""
    mla = facts["mla"]
    return ckpt.model_type in mla["model_types"] and ckpt.text_config().get(mla["config_key"]) is not None


def check_mla(ckpt: Checkpoint, target: Deployment, facts: dict, out: Collector) -> None:
    if not is_mla(ckpt, facts):
        return
    mla = facts["mla"]
    refused = mla["refused_socs"].get(target.soc.name)
    if refused:
        out.add("model.mla_soc", f"model_type {ckpt.model_type}",
                f"{mla['config_key']} {ckpt.text_config()[mla['config_key']]}: MLA attention; {target.soc.product} "
                f"refuses it when it allocates the KV cache, after loading the weights ({refused})")
    if ckpt.description is None:
        return
    float_type = facts["description"]["float"]
    quantized = sorted(name for name, qtype in ckpt.description.items()
                       if isinstance(qtype, str) and qtype != float_type and matches_any(name, mla["float_weights"]))
    if quantized:
        types = "/".join(sorted({ckpt.description[n] for n in quantized}))
        out.add("quant.mla_kv_b_proj", quantized[0],
                f"{len(quantized)} kv_b_proj weight(s) described {types} ({listing(quantized)}): the MLA backend "
                "absorbs kv_b_proj from its float weight and asserts it unquantized at load; describe and store it "
                "FLOAT (msModelSlim's DeepSeek recipes exclude *kv_b_proj)")

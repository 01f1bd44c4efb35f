"""Tensor- and expert-parallel rules: what a rank's shard must hold whole (heads, KV heads or their
replicas, MLP and expert widths, quantization groups of row-parallel layers), read from the config
and, for groups, from the scales' shapes."""

from __future__ import annotations

from .checkpoint import Checkpoint
from .findings import Collector
from .names import expert_of
from .target import Deployment


def _first(config: dict, keys: list[str]) -> tuple[str, int] | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return key, value
    return None


def check_parallel(ckpt: Checkpoint, target: Deployment, facts: dict, out: Collector) -> None:
    config, keys, tp, ep = ckpt.text_config(), facts["config_keys"], target.tp, target.ep
    heads = _first(config, keys["heads"])
    if heads and heads[1] % tp:
        out.add("tp.heads", f"config.json {heads[0]}", f"{heads[1]} attention heads do not divide by --tp {tp}")
    kv = _first(config, keys["kv_heads"]) or heads
    if kv and not (kv[1] % tp == 0 if kv[1] >= tp else tp % kv[1] == 0):
        how = "split" if kv[1] >= tp else "replicated"
        out.add("tp.kv_heads", f"config.json {kv[0]}", f"{kv[1]} KV heads cannot be {how} over --tp {tp} "
                                                       f"({'kv % tp' if kv[1] >= tp else 'tp % kv'} != 0)")
    experts = _first(config, keys["experts"])
    has_experts = experts is not None and any(expert_of(n) is not None for n in ckpt.tensors)
    widths = [k for k in keys["intermediate"] if isinstance(config.get(k), int)]
    if has_experts and ep > 1:  # with expert parallel the experts are whole on their rank: MoE TP is 1
        widths = [k for k in widths if k not in keys["expert_intermediate"]]
    for key in widths:
        if config[key] % tp:
            out.add("tp.intermediate", f"config.json {key}", f"{config[key]} does not divide by --tp {tp}")
    if ep > 1:
        if not has_experts:
            out.note(f"--ep {ep}: the model has no routed experts; expert parallel does not apply")
        elif experts[1] % ep:
            out.add("ep.experts", f"config.json {experts[0]}", f"{experts[1]} experts do not divide by --ep {ep}")
    _groups(ckpt, tp, ep, facts, out)


def _groups(ckpt: Checkpoint, tp: int, ep: int, facts: dict, out: Collector) -> None:
    """A per-group scale [out, in / g] of a row-parallel layer: each rank takes in / tp inputs, which
    must be whole groups. (Column-parallel layers split rows, which groups do not cross.)"""
    if tp == 1:
        return
    for name, t in ckpt.tensors.items():
        if not name.endswith(".weight_scale") or len(t.shape) != 2 or t.shape[1] <= 1:
            continue
        stem = name.removesuffix(".weight_scale")
        weight = ckpt.tensors.get(f"{stem}.weight")
        if weight is None or len(weight.shape) != 2 or stem.rsplit(".", 1)[-1] not in facts["row_parallel"]:
            continue
        if ep > 1 and expert_of(stem + ".") is not None:
            continue  # with expert parallel an expert is whole on its rank
        width, groups = weight.shape[1], t.shape[1]
        if groups > width or width % groups:
            continue  # not per-group scales of this weight (the part rules say what is wrong with them)
        group = width // groups
        if (width // tp) % group:
            out.add("tp.group", name, f"groups of {group} inputs: a rank's {width // tp} of {width} (--tp {tp}) "
                                      "cut a group")

"""FRACTAL_NZ at load: which weights the engine casts with `npu_format_cast(w, 29)` on the device
(its `_should_trans_nz`: never float32; always on 310P; otherwise quantized weights when the NZ mode
is 1, the default, and float weights too in mode 2; an MoE layer's W8A8 experts always), and the one
shape rule that could be sourced: aclnnMatmulWeightNz takes no weight with a 1 in its last two dims.
The engine reads no NZ from disk; nothing here asks a checkpoint to be tiled."""

from __future__ import annotations

from .checkpoint import Checkpoint
from .findings import Collector
from .names import expert_of, listing
from .target import Deployment


def cast_at_load(ckpt: Checkpoint, target: Deployment, nz_mode: int, facts: dict) -> list[str]:
    """The weights the engine casts to NZ when it loads this checkpoint for `target`."""
    nz = facts["nz"]
    types = ckpt.description or {}
    float_type = facts["description"]["float"]
    cast = []
    for name, t in ckpt.tensors.items():
        if not name.endswith(".weight") or len(t.shape) != 2 or t.dtype in nz["never"]:
            continue
        quantized = types.get(name, float_type) != float_type
        if target.soc.name in nz["soc_always"] or quantized and (nz_mode >= 1 or expert_of(name) is not None) or not quantized and nz_mode >= nz["float_only_in_mode"] and "embed" not in name:
            cast.append(name)
    return cast


def check_nz(ckpt: Checkpoint, target: Deployment, nz_mode: int, facts: dict, out: Collector) -> list[str]:
    cast = cast_at_load(ckpt, target, nz_mode, facts)
    where = (f"on {target.soc.name} every non-float32 linear weight" if target.soc.name in facts["nz"]["soc_always"]
             else f"NZ mode {nz_mode}")
    out.note(f"FRACTAL_NZ at load ({where}): {len(cast)} weight(s) cast on the device; the engine reads no NZ from "
             f"disk. Unsourced, so not checked: {facts['nz']['unsourced']}")
    flat = [n for n in cast if 1 in ckpt.tensors[n].shape]
    if flat:
        out.add("nz.shape", flat[0], f"{len(flat)} weight(s) with a dimension of 1 cast to NZ ({listing(flat)}): "
                                     "aclnnMatmulWeightNz does not support n = 1 or k = 1")
    limit = facts["nz"]["quant_matmul_max_n"]
    big = [n for n in cast if (ckpt.description or {}).get(n) == "W8A8_DYNAMIC" and ckpt.tensors[n].shape[0] >= limit]
    if big:
        out.add("nz.kernel_limit", big[0], f"output dim {ckpt.tensors[big[0]].shape[0]} >= {limit}: npu_quant_matmul "
                                           "does not take it (the engine splits only DeepSeek's wq_b)")
    return cast

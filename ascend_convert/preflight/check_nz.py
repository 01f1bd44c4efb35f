"""FRACTAL_NZ at load: which weights the engine casts with `npu_format_cast(w, 29)` on the device,
as its `_should_trans_nz` decides (never float32; on 310P every other weight, but float weights with
n = 1 or k = 1 stay ND there; on A2/A3 int8 weights when the NZ mode is 1, the default, float linear
weights too in mode 2, and an MoE layer's int8 experts always), and the one shape rule that could be
sourced: aclnnMatmulWeightNz takes no weight with a 1 in its last two dims. The engine reads no NZ
from disk; nothing here asks a checkpoint to be tiled."""

from __future__ import annotations

from .checkpoint import Checkpoint
from .findings import Collector
from .headers import TensorHeader
from .names import expert_of, layer_of, listing, matches_any
from .target import Deployment


def _cast(name: str, t: TensorHeader, on_310p: bool, nz_mode: int, facts: dict) -> bool:
    """Whether the loader casts this weight to NZ (`_should_trans_nz`, line by line)."""
    nz = facts["nz"]
    if not name.endswith(".weight") or len(t.shape) != 2 or t.dtype in nz["never"]:
        return False
    if layer_of(name) is not None and matches_any(name, facts["lookups"]["mtp_not_looked_up"]):
        return False  # an MTP layer's eh_proj is a torch nn.Linear, its embedding a plain one: no NZ method
    embedding = name.endswith(("embed_tokens.weight", "lm_head.weight"))
    flat = 1 in t.shape[-2:]
    if on_310p:  # always NZ, but a float n = 1 / k = 1 weight stays ND (vllm_ascend/ops/linear.py:80-101)
        return t.dtype == "int8" or not flat
    if t.dtype == "int8":
        return nz_mode >= 1 or expert_of(name) is not None  # W8A8 experts: npu_format_cast, mode or not
    return nz_mode >= nz["float_only_in_mode"] and not embedding  # A2 embeddings have no NZ cast


def cast_at_load(ckpt: Checkpoint, target: Deployment, nz_mode: int, facts: dict) -> list[str]:
    """The weights the engine casts to NZ when it loads this checkpoint for `target`."""
    on_310p = target.soc.name in facts["nz"]["soc_always"]
    return [name for name, t in ckpt.tensors.items() if _cast(name, t, on_310p, nz_mode, facts)]


def check_nz(ckpt: Checkpoint, target: Deployment, nz_mode: int, facts: dict, out: Collector) -> None:
    cast = cast_at_load(ckpt, target, nz_mode, facts)
    where = (f"on {target.soc.name} every non-float32 weight" if target.soc.name in facts["nz"]["soc_always"]
             else f"NZ mode {nz_mode}")
    out.note(f"FRACTAL_NZ at load ({where}): {len(cast)} weight(s) cast on the device; the engine reads no NZ from "
             f"disk. Unsourced, so not checked: {facts['nz']['unsourced']}")
    flat = [n for n in cast if 1 in ckpt.tensors[n].shape]
    if flat:
        out.add("nz.shape", flat[0], f"{len(flat)} weight(s) with a dimension of 1 cast to NZ ({listing(flat)}): "
                                     "aclnnMatmulWeightNz does not support n = 1 or k = 1")
    limit = facts["nz"]["quant_matmul_max_n"]
    types = ckpt.description or {}
    big = [n for n, t in ckpt.tensors.items() if types.get(n) in ("W8A8", "W8A8_DYNAMIC") and len(t.shape) == 2
           and t.shape[0] >= limit and expert_of(n) is None]
    if big:
        out.add("nz.kernel_limit", big[0], f"output dim {ckpt.tensors[big[0]].shape[0]} >= {limit}: npu_quant_matmul "
                                           "does not take it (the engine splits only DeepSeek's wq_b)")

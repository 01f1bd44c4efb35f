"""Fusion finder: the op chains in an exported aten graph that torch_npu serves with one fused kernel.

The op check says whether every aten op *runs* on the NPU; this says where it would run *faster*:
RMSNorm, add+RMSNorm, RoPE, SwiGLU and attention written out op by op are a dozen small kernel
launches each, and torch_npu has one kernel for each chain. The graph is the one `torch.export`
gives (not decomposed: `aten.linear`, `aten.silu`, `aten.scaled_dot_product_attention` survive).

Patterns are data (`PATTERNS`): a matcher that says whether a node is the pattern's anchor, the fused
op and a note. Matchers walk producers through `node.args`, stepping over views and casts
(`_PASS`), because HF code upcasts to fp32 around norms and reshapes around attention.

A mixture-of-experts block is found as a whole (`moe_blocks`), then its parts (`MOE_PATTERNS`) are
named against torch_npu's MoE kernels, once per MoE layer: gating (softmax + top-k, renormalised or
not), init routing (the (token, expert) pairs laid out by expert: a sort of the expert ids, or the
tokens repeated top-k times), the experts' matmuls (grouped, batched over gathered expert weights, or
one per expert) and finalize routing (the weighted sum back to one row per token). Each names its
torch_npu kernels newest first; with the target release's custom-op list, the first the release has
is suggested and `in_release` says whether it has any. Group-limited routing (DeepSeek-V3's sigmoid
scores with a correction bias, top-k groups, mask, top-k experts; DeepSeek-V2's group_limited_greedy;
GLM-4.5) is "MoE grouped gating" (npu_moe_gating_top_k, with the arguments the graph shows), plain
softmax top-k stays "MoE gating"; top-k's over groups are stages of the router, not routers.

Custom kernels that several torch_npu releases serve under versioned names (`KERNEL_PATTERNS`) are
named the same way: multi-head latent attention's prolog (q_a/kv_a projections, their RMSNorms, the
rope slices, the cache write: npu_mla_prolog_v3/v2/v1; npu_kv_rmsnorm_rope_cache without
q_lora_rank), its attention over the latent (npu_fused_infer_attention_score_v2/v1), and DeepSeek's
interleaved rope (npu_interleave_rope).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.fx import Node

from .trace import location

A = torch.ops.aten
MAX_LOCATIONS = 3

# Ops that move or relabel data without computing: a pattern may have any number of them between
# its steps (dtype casts around a norm, views around attention, eval-mode dropout).
_PASS = {
    A._to_copy.default, A.to.dtype, A.to.dtype_layout, A.to.device, A.to.other, A.view.default,
    A.reshape.default, A._unsafe_view.default, A.unsqueeze.default, A.squeeze.dim, A.expand.default,
    A.contiguous.default, A.clone.default, A.alias.default, A.dropout.default, A.type_as.default,
}
_SOFTMAX = {A.softmax.int, A._softmax.default, A._safe_softmax.default}
_MATMUL = {A.matmul.default, A.bmm.default, A.baddbmm.default, A.einsum.default}
_SDPA = {
    A.scaled_dot_product_attention.default, A._scaled_dot_product_flash_attention.default,
    A._scaled_dot_product_efficient_attention.default, A._scaled_dot_product_flash_attention_for_cpu.default,
}


@dataclass(frozen=True)
class Fusion:
    """One pattern found in a graph: how often, where (a few anchor locations), and what to use."""

    pattern: str  # "RMSNorm", "add+RMSNorm", "RoPE", "SwiGLU", "attention"
    fused_op: str  # "torch_npu.npu_rms_norm", ...
    count: int
    locations: tuple[str, ...]
    note: str
    in_release: bool | None = None  # MoE kernels: whether the target torch_npu has it (None: not asked)


@dataclass(frozen=True)
class Pattern:
    name: str
    matches: Callable[[Node], bool]  # True on the pattern's anchor node, once per occurrence
    fused_op: str
    note: str


def _is(node: object, *targets: object) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in targets


def _source(node: object) -> object:
    """The producer that computed `node`, through views and casts."""
    while isinstance(node, Node) and node.op == "call_function" and node.target in _PASS and node.args:
        node = node.args[0]
    return node


def _users(node: Node) -> Iterator[Node]:
    """The consumers of `node`, through views and casts (`_assert_tensor_metadata` is not a use)."""
    for user in node.users:
        if user.op == "call_function" and user.target in _PASS:
            yield from _users(user)
        else:
            yield user


def _operands(node: Node) -> list[object]:
    return [_source(a) for a in node.args[:2]]


def _shape(node: object) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


# RMSNorm: x * rsqrt(mean(x^2, -1, keepdim=True) + eps), anchored on the rsqrt.
def _rms_input(rsqrt: Node) -> object | None:
    """The normalised tensor `x` if `rsqrt` is the heart of an RMSNorm, else None."""
    if not _is(rsqrt, A.rsqrt.default):
        return None
    add = _source(rsqrt.args[0])
    if not _is(add, A.add.Tensor, A.add.Scalar):
        return None
    mean = next((a for a in _operands(add) if _is(a, A.mean.dim)), None)
    if mean is None or not (len(mean.args) > 2 and mean.args[2] or mean.kwargs.get("keepdim")):
        return None
    square = _source(mean.args[0])
    if _is(square, A.pow.Tensor_Scalar) and square.args[1] == 2:
        x = _source(square.args[0])
    elif _is(square, A.mul.Tensor) and len(set(_operands(square))) == 1:
        x = _operands(square)[0]
    else:
        return None
    scaled = any(_is(u, A.mul.Tensor) and x in _operands(u) for u in _users(rsqrt))
    return x if scaled else None


def _rms_norm(node: Node) -> bool:
    return _rms_input(node) is not None


def _add_rms_norm(node: Node) -> bool:
    """An RMSNorm whose input is a residual add: two tensors of one shape (not `mean + eps`)."""
    x = _rms_input(node)
    if not _is(x, A.add.Tensor):
        return False
    a, b = x.args[:2]
    return isinstance(a, Node) and isinstance(b, Node) and _shape(a) is not None and _shape(a) == _shape(b)


# RoPE: x * cos + cat(-x[..., h:], x[..., :h]) * sin, anchored on the add.
def _rotated(cat: object) -> object | None:
    """`x` if `cat` is rotate_half(x), else None."""
    if not _is(cat, A.cat.default) or len(cat.args[0]) != 2:
        return None
    neg, low = (_source(a) for a in cat.args[0])
    if not _is(neg, A.neg.default):
        return None
    high = _source(neg.args[0])
    if not (_is(high, A.slice.Tensor) and _is(low, A.slice.Tensor)):
        return None
    x = _source(high.args[0])
    if _source(low.args[0]) is not x:
        return None
    low_start = low.args[2] if len(low.args) > 2 else 0
    low_end = low.args[3] if len(low.args) > 3 else None
    high_start = high.args[2] if len(high.args) > 2 else 0
    return x if low_start in (0, None) and low_end == high_start else None


def _rope(node: Node) -> bool:
    if not _is(node, A.add.Tensor):
        return False
    muls = _operands(node)
    if not all(_is(m, A.mul.Tensor) for m in muls):
        return False
    for rot, plain in (muls, muls[::-1]):
        for operand in _operands(rot):
            x = _rotated(operand)
            if x is not None and x in _operands(plain):
                return True
    return False


# SwiGLU: silu(gate) * up, anchored on the mul.
def _swiglu(node: Node) -> bool:
    if not _is(node, A.mul.Tensor):
        return False
    a, b = _operands(node)
    return _is(a, A.silu.default) != _is(b, A.silu.default) and all(isinstance(o, Node) for o in (a, b))


# Attention: SDPA, or eager matmul → (scale, mask) → softmax → matmul, anchored on SDPA/softmax.
def _from_scores(node: object, depth: int = 6) -> bool:
    """Whether `node` is Q·Kᵀ, possibly scaled (mul/div) and masked (add)."""
    node = _source(node)
    if _is(node, *_MATMUL):
        return True
    if depth and _is(node, A.mul.Tensor, A.div.Tensor, A.add.Tensor, A.sub.Tensor, A.masked_fill.Scalar,
                     A.masked_fill.Tensor, A.where.self, A.tanh.default):
        return any(_from_scores(a, depth - 1) for a in node.args if isinstance(a, Node))
    return False


def _attention(node: Node) -> bool:
    if _is(node, *_SDPA):
        return True
    if not _is(node, *_SOFTMAX):
        return False
    return _from_scores(node.args[0]) and any(_is(u, *_MATMUL) for u in _users(node))


PATTERNS: tuple[Pattern, ...] = (
    Pattern("RMSNorm", _rms_norm, "torch_npu.npu_rms_norm",
            "replace the RMSNorm forward with torch_npu.npu_rms_norm(x, weight, epsilon)[0]; it keeps the "
            "fp32 accumulation the HF code gets by upcasting"),
    Pattern("add+RMSNorm", _add_rms_norm, "torch_npu.npu_add_rms_norm",
            "fold the residual add into the next norm with torch_npu.npu_add_rms_norm(residual, x, weight, "
            "epsilon), which returns the normed output and the new residual (these are also counted as RMSNorm)"),
    Pattern("RoPE", _rope, "torch_npu.npu_rotary_mul",
            "replace x * cos + rotate_half(x) * sin with torch_npu.npu_rotary_mul(x, cos, sin), one call per "
            "rotated tensor (q and k), with cos/sin broadcast to x's layout"),
    Pattern("SwiGLU", _swiglu, "torch_npu.npu_swiglu",
            "torch_npu.npu_swiglu(x, dim=-1) wants gate and up as the two halves of one tensor: merge "
            "gate_proj and up_proj into one matmul (Phi-3's gate_up_proj already is one) and pass its output"),
    Pattern("attention", _attention, "torch_npu.npu_fused_infer_attention_score",
            "serve attention with torch_npu.npu_fused_infer_attention_score (prefill and decode, GQA via "
            "num_key_value_heads, mask as atten_mask), not with the SDPA or eager matmul-softmax-matmul path"),
)



# Multi-head latent attention (DeepSeek-V2/V3): x → kv_a_proj_with_mqa, split into the latent
# (kv_lora_rank) and the rope key (qk_rope_head_dim); the latent is RMS-normed (kv_a_layernorm) and
# decompressed by kv_b_proj, the rope key rotated. With q_lora_rank the query is x → q_a_proj →
# q_a_layernorm → q_b_proj, its rope slice rotated. Anchored on the split of the kv_a output.
def _rms_normed(x: Node) -> bool:
    """Whether an RMSNorm normalises `x` (through views and casts)."""
    return any(_rms_input(n) is x for n in _downstream(x, 12) if _is(n, A.rsqrt.default))


def _mla_split(node: Node) -> bool:
    """The split of kv_a_proj_with_mqa's output into an RMS-normed latent and a rotated rope key."""
    if not (_is(node, A.split_with_sizes.default, A.split.Tensor) and _is(_source(node.args[0]), A.linear.default)):
        return False
    parts = sorted((u for u in node.users if u.target is operator.getitem), key=lambda u: u.args[1])
    if len(parts) != 2:
        return False
    latent, rope = parts
    decompressed = any(_is(n, A.linear.default) for n in _downstream(latent, 30))
    # rotated: rotate_half's cat (DeepSeek-V3, interleaved or not) or a complex product (DeepSeek-V2)
    rotated = any(_is(n, A.cat.default, A.view_as_complex.default) for n in _downstream(rope, 30))
    return _rms_normed(latent) and decompressed and rotated


def _q_lora(split: Node) -> bool:
    """Whether the layer's query is low-rank too: another linear of the same input whose output is
    RMS-normed (q_a_proj → q_a_layernorm)."""
    kv_a = _source(split.args[0])
    x = kv_a.args[0]
    return any(_is(u, A.linear.default) and u is not kv_a and _rms_normed(u) for u in x.users)


def _mla_prolog(node: Node) -> bool:
    return _mla_split(node) and _q_lora(node)


def _mla_kv_prolog(node: Node) -> bool:
    """MLA without q_lora_rank (DeepSeek-V2-Lite): a plain q_proj, only the KV half fuses."""
    return _mla_split(node) and not _q_lora(node)


def _mla_attention(node: Node) -> bool:
    """Attention whose keys are decompressed from an MLA latent (a kv_b_proj output)."""
    if not _attention(node):
        return False
    return any(_mla_split(n) for n in _upstream(node, 200) if _is(n, A.split_with_sizes.default, A.split.Tensor))


def _strided_halves(a: object, b: object) -> bool:
    """`a` and `b` are x[..., 0::2] and x[..., 1::2] of one tensor."""
    if not (_is(a, A.slice.Tensor) and _is(b, A.slice.Tensor)) or _source(a.args[0]) is not _source(b.args[0]):
        return False
    def start_step(n: Node) -> tuple[object, object]:
        return (n.args[2] if len(n.args) > 2 else 0, n.args[4] if len(n.args) > 4 else 1)

    return start_step(a) == (0, 2) and start_step(b) == (1, 2)


def _interleaved_rope(node: Node) -> bool:
    """DeepSeek's interleaved rotary embedding (rope_interleave): with e, o = x[..., 0::2], x[..., 1::2],
    cat(e·cos − o·sin, o·cos + e·sin), anchored on the cat."""
    if not _is(node, A.cat.default) or len(node.args[0]) != 2:
        return False
    sub, add = (_source(a) for a in node.args[0])
    if not (_is(sub, A.sub.Tensor) and _is(add, A.add.Tensor)):
        return False
    muls = [_source(m) for m in (*sub.args[:2], *add.args[:2])]
    if not all(_is(m, A.mul.Tensor) for m in muls):
        return False
    even, odd = _source(muls[0].args[0]), _source(muls[1].args[0])
    return _strided_halves(even, odd) and _source(muls[2].args[0]) is odd and _source(muls[3].args[0]) is even


@dataclass(frozen=True)
class KernelPattern:
    """A pattern served by one of several torch_npu custom kernels, newest first: the first the
    target release has is suggested, and `in_release` says whether it has any."""

    name: str
    matches: Callable[[Node], bool]
    fused_ops: tuple[str, ...]
    note: str


KERNEL_PATTERNS: tuple[KernelPattern, ...] = (
    KernelPattern("RoPE (interleaved)", _interleaved_rope, ("npu_interleave_rope",),
                  "DeepSeek's interleaved rotary embedding (rope_interleave: even and odd lanes rotated, written "
                  "out as strided slices, four muls and a cat) in one kernel: torch_npu.npu_interleave_rope(x, cos, "
                  "sin); the MLA prolog kernels apply it themselves"),
    KernelPattern("MLA prolog", _mla_prolog, ("npu_mla_prolog_v3", "npu_mla_prolog_v2", "npu_mla_prolog"),
                  "MLA's pre-attention chain in one kernel: q_a_proj → q_a_layernorm → q_b_proj (weight_dq, "
                  "rmsnorm_gamma_cq, weight_uq_qr) with rope on the query's rope slice, kv_a_proj_with_mqa "
                  "(weight_dkv_kr) → kv_a_layernorm (rmsnorm_gamma_ckv) with rope on the key's rope slice, the "
                  "query's nope part absorbed into the latent by kv_b_proj's key half (weight_uk), and the latent and "
                  "rope key written to the paged caches (kv_cache, kr_cache: kv_lora_rank + qk_rope_head_dim per "
                  "token, not per head)"),
    KernelPattern("MLA KV prolog", _mla_kv_prolog, ("npu_kv_rmsnorm_rope_cache_v2", "npu_kv_rmsnorm_rope_cache"),
                  "MLA without q_lora_rank (a plain q_proj): npu_mla_prolog takes the query's down-projection "
                  "(weight_dq) this model does not have, so fuse the KV half: kv_a_layernorm on the latent, rope on "
                  "the rope key and the write of both to the paged caches"),
    KernelPattern("MLA attention", _mla_attention,
                  ("npu_fused_infer_attention_score_v2", "npu_fused_infer_attention_score"),
                  "attend over the cached latent, not keys and values decompressed per head: the query absorbed "
                  "into the latent (nope part times kv_b_proj's key half) as query, the latent as key and value "
                  "(num_key_value_heads=1), query_rope/key_rope for the rope parts, then kv_b_proj's value half "
                  "on the output (as vLLM's MLA decode does); these are also counted as attention"),
)

# Mixture of experts. A block starts at the router's top-k and ends at the first reduction that
# brings the experts' outputs back to one row per token.
_TOPK = {A.topk.default}
_SORT = {A.sort.default, A.sort.stable, A.argsort.default, A.argsort.stable}
_EXPAND = {A.repeat_interleave.self_int, A.repeat_interleave.self_Tensor}
_EXPERT_MM = {A._grouped_mm.default, A.bmm.default, A.mm.default, A.matmul.default, A.linear.default,
              A.baddbmm.default, A.einsum.default, A._int_mm.default}
_REDUCE = {A.sum.dim_IntList, A.index_add.default, A.index_add_.default, A.scatter_add.default,
           A.scatter_add_.default, A.scatter_reduce.two, A.scatter_reduce_.two}


@dataclass(frozen=True)
class MoEBlock:
    """One MoE layer in a graph: the router's top-k, the nodes between it and `finalize` that descend
    from it (in graph order), and the top-k weights' descendants among them."""

    topk: Node
    nodes: tuple[Node, ...]
    finalize: Node | None
    weighted: frozenset[Node]
    dynamic_experts: bool = False  # the checkpoint's experts are W8A8_DYNAMIC (not in a float graph)


def _topk_output(topk: Node, index: int) -> Node | None:
    return next((u for u in topk.users if u.target is operator.getitem and u.args[1] == index), None)


def _is_gating(topk: Node) -> bool:
    """softmax → top-k (Qwen-MoE, Mixtral in transformers v5), top-k → softmax over the k logits, or a
    top-k over sigmoid or softmax scores with a correction bias added and groups masked out
    (DeepSeek-V3, GLM-4.5, DeepSeek-V2's group_limited_greedy)."""
    if _is(_source(topk.args[0]), *_SOFTMAX) or _scores(topk.args[0]) is not None:
        return True
    values = _topk_output(topk, 0)
    return values is not None and any(_is(u, *_SOFTMAX) for u in _users(values))


_SCORE = {A.sigmoid.default, *_SOFTMAX}
_MASK = {A.masked_fill.Scalar, A.masked_fill.Tensor}
_SCATTER = {A.scatter_.value, A.scatter.value, A.scatter_.src, A.scatter.src}


def _scores(node: object, depth: int = 4) -> Node | None:
    """The sigmoid or softmax that `node` holds the scores of, through views, casts, a mask
    (masked_fill) and an added correction bias (the operand that is computed, not a buffer)."""
    node = _source(node)
    for _ in range(depth):
        if _is(node, *_SCORE):
            return node
        if _is(node, *_MASK):
            node = _source(node.args[0])
        elif _is(node, A.add.Tensor):
            computed = [a for a in _operands(node) if isinstance(a, Node) and a.op == "call_function"]
            if len(computed) != 1:
                return None
            node = computed[0]
        else:
            return None
    return None


def _bias_added(node: object) -> bool:
    """Whether a buffer or parameter (DeepSeek-V3's e_score_correction_bias) is added to the scores."""
    node = _source(node)
    for _ in range(4):
        if _is(node, A.add.Tensor):
            return any(isinstance(a, Node) and a.op == "placeholder" for a in _operands(node))
        if not _is(node, *_MASK):
            return False
        node = _source(node.args[0])
    return False


def _walk(start: Node, neighbours: Callable[[Node], Iterable[Node]], limit: int) -> Iterator[Node]:
    """Nodes reached from `start` through `neighbours`, nearest first, at most `limit` of them."""
    seen, queue = {start}, [start]
    while queue and len(seen) <= limit:
        for near in neighbours(queue.pop(0)):
            if near not in seen:
                seen.add(near)
                queue.append(near)
                yield near


def _downstream(start: Node, limit: int = 40) -> Iterator[Node]:
    """Nodes computed from `start`, nearest first."""
    return _walk(start, lambda n: n.users, limit)


def _upstream(start: Node, limit: int = 40) -> Iterator[Node]:
    """Nodes `start` is computed from, nearest first."""
    return _walk(start, lambda n: n.all_input_nodes, limit)


def _group_stage(topk: Node) -> bool:
    """A top-k over expert groups (or within them) that picks which groups the router's top-k may
    choose from: it feeds another top-k."""
    return any(_is(n, *_TOPK) for n in _downstream(topk, 24))


@dataclass(frozen=True)
class Grouping:
    """Group-limited routing as the graph computes it, in npu_moe_gating_top_k's terms."""

    score: str  # sigmoid | softmax (norm_type 1 | 0)
    bias: bool  # a correction bias added to the scores before choosing
    groups: int  # group_count
    kept: int  # k_group: groups kept
    select: str  # how a group is scored: "top-2 sum" (group_select_mode 1) | "max" (0)
    k: int


def grouping(topk: Node) -> Grouping | None:
    """The group-limited routing around a router's top-k: its scores masked to the groups that a
    top-k over group scores (max, or sum of the top 2, per group) kept. None for plain top-k."""
    masked = _source(topk.args[0])
    if not _is(masked, *_MASK):
        return None
    scatter = next((n for n in _upstream(masked.args[1], 12) if _is(n, *_SCATTER)), None)
    group_topk = _source(scatter.args[2]) if scatter is not None and len(scatter.args) > 2 else None
    if _is(group_topk, operator.getitem):
        group_topk = group_topk.args[0]
    if not _is(group_topk, *_TOPK):
        return None
    group_scores = _source(group_topk.args[0])
    shape = _shape(group_scores)
    if _is(group_scores, A.sum.dim_IntList):
        select = "top-2 sum"
    elif _is(group_scores, A.amax.default, A.max.dim) or (_is(group_scores, operator.getitem)
                                                         and _is(group_scores.args[0], A.max.dim)):
        select = "max"
    else:
        select = "unknown"
    score = _scores(masked)
    name = "?" if score is None else "sigmoid" if score.target is A.sigmoid.default else "softmax"
    return Grouping(score=name, bias=_bias_added(masked), groups=shape[-1] if shape else 0,
                    kept=int(group_topk.args[1]), select=select, k=int(topk.args[1]))


def _descendants(start: Node, order: dict[Node, int], stop: int) -> set[Node]:
    """`start` and every node computed from it, up to graph position `stop` (exclusive)."""
    seen, todo = {start}, [start]
    while todo:
        for user in todo.pop().users:
            if user not in seen and order.get(user, stop) < stop:
                seen.add(user)
                todo.append(user)
    return seen


def _stand_in_name(node: Node) -> str | None:
    from .npu_stand_ins import NAMESPACE

    target = node.target
    if node.op == "call_function" and isinstance(target, torch._ops.OpOverload) and target.namespace == NAMESPACE:
        return target._schema.name.split("::", 1)[1]
    return None


def _is_expert_mm(node: Node) -> bool:
    name = _stand_in_name(node)
    return _is(node, *_EXPERT_MM) or (name is not None and ("matmul" in name or "grouped" in name))


def moe_blocks(nodes: list[Node], dynamic_experts: bool = False) -> list[MoEBlock]:
    """The graph's MoE layers, in order: a gating top-k whose indices route tokens through expert
    matmuls, up to the reduction that sums them per token (before the next layer's router)."""
    order = {n: i for i, n in enumerate(nodes)}
    routers = [n for n in nodes if _is(n, *_TOPK) and _is_gating(n) and not _group_stage(n)]
    blocks = []
    for i, topk in enumerate(routers):
        stop = order[routers[i + 1]] if i + 1 < len(routers) else len(nodes)
        below = _descendants(topk, order, stop)
        routed: set[Node] = set()  # descendants of an expert matmul fed by the routing
        finalize = None
        for node in nodes[order[topk] + 1:stop]:
            if node not in below:
                continue
            if _is_expert_mm(node) or any(a in routed for a in node.all_input_nodes):
                routed.add(node)
                if _is(node, *_REDUCE) and not _is_expert_mm(node):
                    finalize = node
                    break
        if not routed:
            continue  # a top-k over a softmax that feeds no matmul: not a router
        end = order[finalize] if finalize is not None else stop
        values = _topk_output(topk, 0)
        if values is None or not values.users:  # DeepSeek-V3: the weights are the scores gathered at the ids
            indices = _topk_output(topk, 1)
            values = next((u for u in indices.users if _is(u, A.gather.default)), None) if indices else None
        weighted = _descendants(values, order, end + 1) if values is not None else set()
        block = tuple(n for n in nodes[order[topk]:end + 1] if n in below)
        blocks.append(MoEBlock(topk, block, finalize, frozenset(weighted), dynamic_experts))
    return blocks


def _gating(block: MoEBlock) -> Node | None:
    """Softmax and top-k over all experts (group-limited routing is `_grouped_gating`)."""
    return None if grouping(block.topk) else block.topk


def _grouped_gating(block: MoEBlock) -> Node | None:
    """Scores (sigmoid, or softmax), a correction bias, a top-k over expert groups, the mask of the
    groups kept, the top-k experts in them and the gather of their scores: npu_moe_gating_top_k."""
    return block.topk if grouping(block.topk) else None


def _describe_grouping(block: MoEBlock) -> str:
    g = grouping(block.topk)
    if g is None:
        return ""
    norm_type = {"sigmoid": 1, "softmax": 0}.get(g.score, "?")
    mode = {"top-2 sum": 1, "max": 0}.get(g.select, "?")
    bias = " + correction bias" if g.bias else ""
    return (f"found: {g.score} scores{bias}, {g.groups} groups scored by {g.select}, top-{g.kept} groups kept, "
            f"top-{g.k} experts; call npu_moe_gating_top_k(x, k={g.k}, bias={'the bias' if g.bias else 'None'}, "
            f"k_group={g.kept}, group_count={g.groups}, group_select_mode={mode}, norm_type={norm_type}, "
            f"renorm=0, routed_scaling_factor=the model's)")


def _init_routing(block: MoEBlock) -> Node | None:
    """The sort of the expert ids (tokens permuted by expert), or the tokens repeated once per chosen
    expert (transformers' batched_mm): what npu_moe_init_routing does in one kernel."""
    sort = next((n for n in block.nodes if _is(n, *_SORT)), None)
    if sort is not None:
        return sort
    fed = (_source(a) for n in block.nodes if _is_expert_mm(n) for a in n.all_input_nodes)
    return next((a for a in fed if _is(a, *_EXPAND)), None)


def _grouped_matmul(block: MoEBlock) -> Node | None:
    """The first expert matmul that is not torch_npu's grouped matmul already."""
    return next((n for n in block.nodes if _is_expert_mm(n) and _stand_in_name(n) != "npu_grouped_matmul"), None)


def _finalize_routing(block: MoEBlock) -> Node | None:
    """The reduction back to one row per token, over expert outputs scaled by the top-k weights."""
    if block.finalize is None:
        return None
    scaled = any(_is(n, A.mul.Tensor, A.mul_.Tensor) and any(a in block.weighted for a in n.all_input_nodes)
                 for n in block.nodes)
    return block.finalize if scaled or not _is(block.finalize, A.sum.dim_IntList) else None


def _per_token_int8(amax: Node) -> bool:
    """`amax` is a per-token absmax (last dim, kept) whose tensor is then cast to int8."""
    dims = amax.args[1] if len(amax.args) > 1 else amax.kwargs.get("dim")
    keep = amax.args[2] if len(amax.args) > 2 else amax.kwargs.get("keepdim", False)
    if not (keep and list(dims or ()) == [-1]):
        return False
    todo, seen = list(amax.users), set()
    while todo:  # scale → x / scale → round → clamp → to(int8), within a few steps
        node = todo.pop()
        if node in seen or len(seen) > 16:
            continue
        seen.add(node)
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dtype == torch.int8:
            return True
        todo.extend(node.users)
    return False


def _dynamic_quant(block: MoEBlock) -> Node | None:
    """W8A8 dynamic: the routed tokens quantized to int8 per token at run time, written out as
    absmax / 127 → round → int8, or experts the checkpoint says are W8A8_DYNAMIC (a float graph:
    pointed at at its experts' matmul). A block that calls `npu_dynamic_quant` already needs nothing."""
    if any(_stand_in_name(n) == "npu_dynamic_quant" for n in block.nodes):
        return None
    if block.dynamic_experts:
        return next((n for n in block.nodes if _is_expert_mm(n)), None)
    return next((n for n in block.nodes if _is(n, A.amax.default) and _per_token_int8(n)), None)


@dataclass(frozen=True)
class MoEPattern:
    name: str
    finds: Callable[[MoEBlock], Node | None]  # the node to point at, or None if the block lacks it
    fused_ops: tuple[str, ...]  # torch_npu's kernels for it, the one to prefer first
    note: str
    detail: Callable[[MoEBlock], str] | None = None  # what the first block found holds, added to the note


MOE_PATTERNS: tuple[MoEPattern, ...] = (
    MoEPattern("MoE gating", _gating, ("npu_moe_gating_top_k_softmax",),
               "softmax over the router logits and top-k in one kernel: torch_npu.npu_moe_gating_top_k_softmax("
               "router_logits, k=num_experts_per_tok) returns the weights, the expert ids and the row ids "
               "npu_moe_init_routing takes; renormalise the k weights after it where the model does "
               "(norm_topk_prob)"),
    MoEPattern("MoE init routing", _init_routing, ("npu_moe_init_routing_v2", "npu_moe_init_routing"),
               "lay the (token, expert) pairs out by expert in one kernel instead of sort/gather (or repeating "
               "each token top-k times): it returns the permuted tokens, the row map back, and (v2) the "
               "tokens per expert that npu_grouped_matmul takes as group_list"),
    MoEPattern("MoE grouped matmul", _grouped_matmul, ("npu_grouped_matmul",),
               "run every expert's gate/up and down projections as one grouped matmul each, over the tokens "
               "sorted by expert with group_list = tokens per expert, instead of a matmul per expert or a "
               "bmm over expert weights gathered per token"),
    MoEPattern("MoE finalize routing", _finalize_routing, ("npu_moe_finalize_routing",),
               "un-permute the experts' outputs, scale them by the top-k weights and sum them per token "
               "(adding the shared expert's output as skip) in one kernel"),
    MoEPattern("MoE dynamic quant", _dynamic_quant, ("npu_dynamic_quant",),
               "W8A8 dynamic: quantize the routed tokens per token once (npu_dynamic_quant, or "
               "npu_moe_init_routing_v2's quant_mode) and pass the scales to npu_grouped_matmul as "
               "per_token_scale"),
    MoEPattern("MoE grouped gating", _grouped_gating, ("npu_moe_gating_top_k",),
               "group-limited routing (DeepSeek-V3's noaux_tc, GLM-4.5, DeepSeek-V2's group_limited_greedy) in "
               "one kernel: scores, correction bias, group top-k, mask, expert top-k and the gather of the "
               "chosen scores; torch_npu.npu_moe_gating_top_k returns the weights, the expert ids and the "
               "row ids; renorm the k weights (norm_topk_prob) and scale by routed_scaling_factor as the "
               "model does", _describe_grouping),
)


def _release_op(fused_ops: tuple[str, ...], npu_custom: frozenset[str] | None) -> tuple[str, bool | None]:
    """The newest of `fused_ops` the release has (the newest of all without a release), and whether
    it has any."""
    if npu_custom is None:
        return fused_ops[0], None
    fused = next((op for op in fused_ops if op in npu_custom), fused_ops[0])
    return fused, fused in npu_custom


def _moe_fusions(nodes: list[Node], npu_custom: frozenset[str] | None, dynamic_experts: bool,
                 weight: Callable[[Node], int]) -> list[Fusion]:
    blocks = moe_blocks(nodes, dynamic_experts)
    out = []
    for pattern in MOE_PATTERNS:
        found = [(block, node) for block, node in zip(blocks, map(pattern.finds, blocks)) if node is not None]
        if not found:
            continue
        fused, in_release = _release_op(pattern.fused_ops, npu_custom)
        detail = pattern.detail(found[0][0]) if pattern.detail else ""
        note = f"{pattern.note}. {detail}" if detail else pattern.note
        anchors = [node for _, node in found]
        out.append(Fusion(pattern.name, f"torch_npu.{fused}", sum(weight(b.topk) for b, _ in found),
                          _locations(anchors), note, in_release))
    return out


def _locations(anchors: list[Node]) -> tuple[str, ...]:
    locations: list[str] = []
    for node in anchors:
        where = location(node)
        if where and where not in locations and len(locations) < MAX_LOCATIONS:
            locations.append(where)
    return tuple(locations)


def find_fusions(program: torch.export.ExportedProgram, npu_custom: frozenset[str] | set[str] | None = None,
                 dynamic_experts: bool = False, weight: Callable[[Node], int] | None = None) -> list[Fusion]:
    """Every pattern in `PATTERNS` that occurs in `program`, in that order, with its count and the first
    few distinct source locations of its anchors; then the parts of its MoE layers (`MOE_PATTERNS`).
    `npu_custom`: the target torch_npu's custom ops (a manifest's `npu_custom`), to say whether the
    release has each MoE kernel. `dynamic_experts`: the checkpoint's experts are W8A8_DYNAMIC
    (`hf_trace.dynamic_experts`), which a float graph cannot show."""
    weight = weight or (lambda _: 1)
    custom = None if npu_custom is None else frozenset(npu_custom)
    nodes = [n for n in program.graph.nodes if n.op == "call_function" and n.target is not operator.getitem]
    out = []
    for pattern in PATTERNS:
        anchors = [n for n in nodes if pattern.matches(n)]
        if anchors:
            out.append(Fusion(pattern.name, pattern.fused_op, sum(map(weight, anchors)), _locations(anchors),
                              pattern.note))
    for kernel in KERNEL_PATTERNS:
        anchors = [n for n in nodes if kernel.matches(n)]
        if anchors:
            fused, in_release = _release_op(kernel.fused_ops, custom)
            out.append(Fusion(kernel.name, f"torch_npu.{fused}", sum(map(weight, anchors)), _locations(anchors),
                              kernel.note, in_release))
    every = [n for n in program.graph.nodes if n.op == "call_function"]
    return out + _moe_fusions(every, custom, dynamic_experts, weight)

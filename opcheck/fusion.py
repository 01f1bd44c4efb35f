"""Fusion finder: the op chains in an exported aten graph that torch_npu serves with one fused kernel.

The op check says whether every aten op *runs* on the NPU; this says where it would run *faster*:
RMSNorm, add+RMSNorm, RoPE, SwiGLU and attention written out op by op are a dozen small kernel
launches each, and torch_npu has one kernel for each chain. The graph is the one `torch.export`
gives (not decomposed: `aten.linear`, `aten.silu`, `aten.scaled_dot_product_attention` survive).

Patterns are data (`PATTERNS`): a matcher that says whether a node is the pattern's anchor, the fused
op and a note. Matchers walk producers through `node.args`, stepping over views and casts
(`_PASS`), because HF code upcasts to fp32 around norms and reshapes around attention.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
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


def find_fusions(program: torch.export.ExportedProgram) -> list[Fusion]:
    """Every pattern in `PATTERNS` that occurs in `program`, in that order, with its count and the first
    few distinct source locations of its anchors."""
    nodes = [n for n in program.graph.nodes if n.op == "call_function" and n.target is not operator.getitem]
    out = []
    for pattern in PATTERNS:
        anchors = [n for n in nodes if pattern.matches(n)]
        if not anchors:
            continue
        locations: list[str] = []
        for node in anchors:
            where = location(node)
            if where and where not in locations and len(locations) < MAX_LOCATIONS:
                locations.append(where)
        out.append(Fusion(pattern.name, pattern.fused_op, len(anchors), tuple(locations), pattern.note))
    return out

"""The packed tensor-parallel layout: what rank r of N holds, and FRACTAL_NZ tiling.

One function splits a model for rank r, used both by `convert --layout packed --tp N` (which writes
`tp{N}/rank{r}.safetensors`) and by the runtime when it is given an unpacked checkpoint and
`tensor_parallel_size=N` (it splits at load), so the two cannot disagree.

Megatron's split: q/k/v and gate/up are column-parallel (each rank holds its heads' rows, its slice
of the intermediate rows), o and down are row-parallel (the matching input columns; their outputs
are summed across ranks, so a row-parallel bias lives on rank 0 only), the embedding and lm_head are
split by vocabulary rows after padding the vocabulary to a multiple of N·16 (zero rows; the padding
is recorded). When N exceeds the KV heads, each KV head is duplicated on the N/kv ranks whose query
heads use it. Names are the runtime's fused ones (`self_attn.qkv`, `self_attn.o`, `mlp.gate_up`,
`mlp.down`). Norms are replicated. A mixture-of-experts layer splits like the dense MLP: every routed
expert's gate/up rows and down columns by its intermediate size (the rank's `mlp.experts.gate_up`
[E, 2I/N, H] and `mlp.experts.down` [E, H, I/N]), the shared expert likewise, the router and the
shared expert's sigmoid gate replicated; each rank's partial sums meet in the layer's one all-reduce.

FRACTAL_NZ (`--nz`, ACL format 29) as the packed layout stores it: ND [..., H, W] →
[..., ceil(W/w0), ceil(H/16), 16, w0] with w0 = 32 bytes / element size, zero-padded; the ND shape
goes into the file's metadata and `from_nz` inverts it exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ascend_common.errors import UserError

VOCAB_ALIGN = 16  # the vocabulary is padded to a multiple of N * this
NZ_ROWS = 16
NZ_BYTES = 32
NZ_FORMAT = 29  # ACL_FORMAT_FRACTAL_NZ

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(\w+)$")
#: canonical module (per layer) → (runtime module, which slice of a fused one)
MODULES = {
    "self_attn.q_proj": ("self_attn.qkv", 0), "self_attn.k_proj": ("self_attn.qkv", 1),
    "self_attn.v_proj": ("self_attn.qkv", 2), "self_attn.o_proj": ("self_attn.o", None),
    "mlp.gate_proj": ("mlp.gate_up", 0), "mlp.up_proj": ("mlp.gate_up", 1), "mlp.down_proj": ("mlp.down", None),
    "mlp.shared_expert.gate_proj": ("mlp.shared_expert.gate_up", 0),
    "mlp.shared_expert.up_proj": ("mlp.shared_expert.gate_up", 1),
    "mlp.shared_expert.down_proj": ("mlp.shared_expert.down", None),
}
FUSED_PARTS = {"self_attn.qkv": 3, "mlp.gate_up": 2, "mlp.shared_expert.gate_up": 2}
#: A routed expert's canonical tensor: its layer, expert, projection and tensor (weight, weight_scale, ...).
_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.(\w+)$")
#: expert projection → (the runtime's 3-D module of all experts, parts per expert in it)
EXPERT_MODULES = {"gate_proj": ("mlp.experts.gate_up", 0), "up_proj": ("mlp.experts.gate_up", 1),
                  "down_proj": ("mlp.experts.down", 0)}
EXPERT_PARTS = {"mlp.experts.gate_up": 2, "mlp.experts.down": 1}
#: runtime modules whose weights are matmul operands (tiled by --nz); the embedding is a lookup
MATMUL_MODULES = ("self_attn.qkv", "self_attn.o", "mlp.gate_up", "mlp.down", "mlp.experts.gate_up", "mlp.experts.down",
                  "mlp.shared_expert.gate_up", "mlp.shared_expert.down")


def parameter_for(name: str) -> tuple[str, int | None]:
    """The runtime parameter a canonical tensor fills, and its part index if the parameter is fused.
    A layer's routed experts fill one 3-D parameter each for gate/up and down (`mlp.experts.gate_up`
    [E, 2I, H], `mlp.experts.down` [E, H, I]): expert E's gate is part 2E, its up part 2E+1, its down
    part E (the runtime's `fused_slice` places a part)."""
    e = _EXPERT.match(name)
    if e is not None:
        layer, expert, proj, tensor = e.groups()
        target, offset = EXPERT_MODULES[proj]
        per_expert = 2 if target.endswith("gate_up") else 1
        return f"model.layers.{layer}.{target}.{tensor}", int(expert) * per_expert + offset
    m = _LAYER.match(name)
    if m is None or m.group(2) not in MODULES:
        return name, None
    layer, module, tensor = m.groups()
    target, part = MODULES[module]
    return f"model.layers.{layer}.{target}.{tensor}", part


#: runtime module → the canonical module of its first part (what a packed file's names stand for)
_FIRST_PART = {target: module for module, (target, part) in MODULES.items() if part in (0, None)}


def canonical_of(name: str) -> str:
    """The inverse of `parameter_for` up to the part: a runtime (packed) tensor name → the canonical
    name of its first part (`...self_attn.qkv.bias` → `...self_attn.q_proj.bias`)."""
    m = _LAYER.match(name)
    if m is None or m.group(2) not in _FIRST_PART:
        return name
    layer, module, tensor = m.groups()
    return f"model.layers.{layer}.{_FIRST_PART[module]}.{tensor}"


@dataclass(frozen=True)
class TPLayout:
    """How a model of these sizes splits over `size` ranks; raises UserError if it cannot."""

    size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_experts: int = 0  # mixture of experts (0: a dense model)
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0

    def __post_init__(self) -> None:
        n = self.size
        if n < 1:
            raise UserError(f"tensor parallel size {n}: must be >= 1")
        if self.num_heads % n:
            raise UserError(f"tensor parallel size {n}: the model's {self.num_heads} attention heads are not "
                            f"divisible by {n}")
        kv = self.num_kv_heads
        if (n <= kv and kv % n) or (n > kv and n % kv):
            raise UserError(f"tensor parallel size {n}: the model's {kv} KV heads can be neither divided among "
                            f"{n} ranks nor duplicated evenly over them")
        for what, width in (("intermediate size", self.intermediate_size),
                            ("expert intermediate size", self.moe_intermediate_size),
                            ("shared expert intermediate size", self.shared_expert_intermediate_size)):
            if width % n:
                raise UserError(f"tensor parallel size {n}: the model's {what} {width} is not divisible by {n}")

    @classmethod
    def of(cls, canonical: dict, size: int) -> TPLayout:
        moe = [int(canonical.get(k) or 0) for k in ("num_experts", "moe_intermediate_size",
                                                     "shared_expert_intermediate_size")]
        return cls(size, canonical["num_attention_heads"], canonical["num_key_value_heads"], canonical["head_dim"],
                   canonical["intermediate_size"] or 0, canonical["vocab_size"], *moe)

    @property
    def heads(self) -> int:
        return self.num_heads // self.size

    @property
    def kv_heads(self) -> int:
        return max(1, self.num_kv_heads // self.size)

    @property
    def padded_vocab(self) -> int:
        align = self.size * VOCAB_ALIGN
        return math.ceil(self.vocab_size / align) * align

    @property
    def vocab_shard(self) -> int:
        return self.padded_vocab // self.size

    def kv_head_range(self, rank: int) -> range:
        if self.size <= self.num_kv_heads:
            return range(rank * self.kv_heads, (rank + 1) * self.kv_heads)
        head = rank // (self.size // self.num_kv_heads)  # duplicated: the KV head this rank's queries use
        return range(head, head + 1)

    def shard(self, name: str, tensor: torch.Tensor, rank: int) -> torch.Tensor:
        """Rank `rank`'s part of canonical tensor `name` (unfused, Llama-named)."""
        d = self.head_dim
        expert = _EXPERT.match(name)
        if expert is not None:  # a routed expert: split like the dense MLP, by the expert width
            return self._split_mlp(f"mlp.{expert.group(3)}", tensor, rank, self.moe_intermediate_size)
        module = name.rsplit(".", 1)[0].split(".", 3)[-1] if name.startswith("model.layers.") else name
        if module.startswith("mlp.shared_expert."):
            return self._split_mlp(module.replace("shared_expert.", ""), tensor, rank,
                                   self.shared_expert_intermediate_size)
        is_bias = name.endswith(".bias")
        if module == "self_attn.q_proj":
            return _rows(tensor, rank * self.heads * d, self.heads * d)
        if module in ("self_attn.k_proj", "self_attn.v_proj"):
            heads = self.kv_head_range(rank)
            return _rows(tensor, heads.start * d, len(heads) * d)
        if module in ("mlp.gate_proj", "mlp.up_proj"):
            return self._split_mlp(module, tensor, rank, self.intermediate_size)
        if module in ("self_attn.o_proj", "mlp.down_proj"):
            if is_bias:  # summed over ranks by the all-reduce: added once
                return tensor if rank == 0 else torch.zeros_like(tensor)
            width = self.heads * d if module == "self_attn.o_proj" else self.intermediate_size // self.size
            return tensor.narrow(1, rank * width, width).contiguous()
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            padded = torch.zeros(self.padded_vocab, *tensor.shape[1:], dtype=tensor.dtype)
            padded[:tensor.shape[0]] = tensor
            return _rows(padded, rank * self.vocab_shard, self.vocab_shard)
        return tensor  # norms (and q/k norms, per head_dim), the router, the shared expert's gate: replicated

    def _split_mlp(self, module: str, tensor: torch.Tensor, rank: int, width: int) -> torch.Tensor:
        """A SwiGLU projection's share: gate/up rows (column-parallel), down columns (row-parallel)."""
        part = width // self.size
        if module in ("mlp.gate_proj", "mlp.up_proj"):
            return _rows(tensor, rank * part, part)
        return tensor.narrow(1, rank * part, part).contiguous()


def _rows(tensor: torch.Tensor, start: int, length: int) -> torch.Tensor:
    return tensor.narrow(0, start, length).contiguous()


def rank_tensors(named: Iterable[tuple[str, torch.Tensor]], layout: TPLayout, rank: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s tensors under the runtime's (fused) names, from a stream of canonical tensors."""
    parts: dict[str, dict[int, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in named:
        target, part = parameter_for(name)
        piece = layout.shard(name, tensor, rank)
        if part is None:
            out[target] = piece
            continue
        parts.setdefault(target, {})[part] = piece
        module = target.rsplit(".", 1)[0].split(".", 3)[-1]
        if module in EXPERT_PARTS:  # every expert's parts, stacked [E, rows, cols]
            per_expert = EXPERT_PARTS[module]
            if len(parts[target]) == per_expert * layout.num_experts:
                got = parts.pop(target)
                out[target] = torch.stack([torch.cat([got[e * per_expert + j] for j in range(per_expert)])
                                           for e in range(layout.num_experts)])
        elif len(parts[target]) == FUSED_PARTS[module]:
            out[target] = torch.cat([parts[target][i] for i in range(FUSED_PARTS[module])]).contiguous()
            del parts[target]
    if parts:
        raise UserError(f"the checkpoint lacks parts of {', '.join(sorted(parts))}")
    return out


def is_matmul_weight(name: str) -> bool:
    return name == "lm_head.weight" or (name.endswith(".weight") and any(f".{m}." in name for m in MATMUL_MODULES))


def nz_block(dtype: torch.dtype) -> int:
    """w0: how many elements of `dtype` make 32 bytes."""
    return NZ_BYTES // torch.empty((), dtype=dtype).element_size()


def to_nz(tensor: torch.Tensor) -> torch.Tensor:
    """ND [..., H, W] → FRACTAL_NZ [..., ceil(W/w0), ceil(H/16), 16, w0], zero-padded."""
    *lead, h, w = tensor.shape
    w0 = nz_block(tensor.dtype)
    hp, wp = math.ceil(h / NZ_ROWS) * NZ_ROWS, math.ceil(w / w0) * w0
    padded = torch.zeros(*lead, hp, wp, dtype=tensor.dtype)
    padded[..., :h, :w] = tensor
    tiles = padded.reshape(*lead, hp // NZ_ROWS, NZ_ROWS, wp // w0, w0)
    k = len(lead)
    return tiles.permute(*range(k), k + 2, k, k + 1, k + 3).contiguous()


def from_nz(tiles: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The exact inverse of `to_nz` for an ND tensor of `shape`."""
    *lead, h, w = shape
    k = len(lead)
    nd = tiles.permute(*range(k), k + 1, k + 2, k, k + 3)
    hp, wp = nd.shape[k] * nd.shape[k + 1], nd.shape[k + 2] * nd.shape[k + 3]
    return nd.reshape(*lead, hp, wp)[..., :h, :w].contiguous()

"""Mixture-of-experts layers (Qwen3-MoE, Qwen2-MoE, Mixtral): a router, routed SwiGLU experts held
as 3-D parameters, and Qwen2-MoE's shared expert behind a sigmoid gate. Families differ only in data
from `ModelConfig` (top-k, renormalisation, the routing weights' dtype, the shared expert).

The routing follows transformers 5.24 (`models/{qwen3_moe,qwen2_moe,mixtral}/modeling_*.py`): router
logits in the model dtype, softmax in fp32, top-k, renormalised when `norm_topk_prob` (Mixtral
always); Qwen's routers then cast the weights back to the model dtype, Mixtral's keep them fp32. The
experts follow transformers' default CPU implementation (`integrations/moe.py`,
`grouped_mm_experts_forward`): the (token, expert) pairs sorted by expert, gate/up and down each one
grouped matmul over the experts' 3-D weights (`torch.nn.functional.grouped_mm`, transformers' own
kernel and call, so bf16 results are the same bits; one matmul per expert that got tokens where a
device lacks it), the routing weight applied to each pair, then `view(T, k, H).sum(1)` in the
promoted dtype and a cast to the model dtype. Never a loop over tokens.

On an NPU (or with check_ops' stand-ins, `Kernels.npu_moe`) the same layer calls torch_npu's fused
MoE kernels as vllm-ascend does: `npu_moe_gating_top_k_softmax`, `npu_moe_init_routing_v2`,
`npu_grouped_matmul` and `npu_moe_finalize_routing`; W8A8_DYNAMIC experts add per-token int8
activations (`npu_dynamic_quant`). Nothing here has an NPU: that path is traced by check_ops, not run.

W8A8_DYNAMIC experts (msModelSlim: int8 weight [out, in], fp32 weight_scale/weight_offset [out, 1]
per expert; activations quantized per token, symmetric, at run time) compute on the CPU with
`torch._int_mm` per expert that got tokens: int32 accumulation, then `acc * token_scale *
weight_scale` in fp32, as `npu_grouped_matmul` with a per-token scale does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runtime.layers import parallel
from runtime.layers.fused_ops import Kernels
from runtime.layers.quant_linear import dynamic_quant
from runtime.model.config import ModelConfig, Routing


class ExpertWeights(nn.Module):
    """One projection of every expert: `weight` [E, out, in] (float, or int8 with fp32
    `weight_scale`/`weight_offset` [E, out, 1] for W8A8_DYNAMIC)."""

    def __init__(self, experts: int, in_features: int, out_features: int, quantized: bool) -> None:
        super().__init__()
        self.quantized = quantized
        if quantized:
            def frozen(*shape: int, dtype: torch.dtype = torch.float32) -> nn.Parameter:
                return nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)

            self.weight = frozen(experts, out_features, in_features, dtype=torch.int8)
            self.weight_scale = frozen(experts, out_features, 1)
            self.weight_offset = frozen(experts, out_features, 1)
        else:
            self.weight = nn.Parameter(torch.empty(experts, out_features, in_features))
        self._npu: dict[str, torch.Tensor] = {}

    def _apply(self, fn, recurse=True):
        """`.to(bfloat16)` must not round an int8 layer's scales; prepared NPU operands are dropped."""
        super()._apply(fn, recurse)
        if self.quantized:
            for name in ("weight_scale", "weight_offset"):
                param = getattr(self, name)
                if param.dtype != torch.float32:
                    param.data = param.data.float()
        self._npu.clear()
        return self

    def grouped(self, x: torch.Tensor, offsets: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x [S, in] sorted by expert (expert e's `counts[e]` rows end at offsets[e]) → [S, out].

        `grouped_mm` on the transposed 3-D weight, as transformers calls it (its CPU kernel takes any
        float dtype; other devices' take bf16), else one `F.linear` per expert that got rows (the
        same bits on the CPU; measured no faster there, and many small multi-threaded ops degrade
        badly on a loaded machine where one grouped call does not)."""
        if self.quantized:
            return self._grouped_int8(x, counts)
        if x.device.type == "cpu" or x.dtype == torch.bfloat16:
            return F.grouped_mm(x, self.weight.transpose(-2, -1), offs=offsets)
        out = x.new_empty(x.shape[0], self.weight.shape[1])
        start = 0
        for e, n in enumerate(counts.tolist()):  # one host sync
            if n:
                out[start:start + n] = F.linear(x[start:start + n], self.weight[e])
            start += n
        return out

    def _grouped_int8(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        xq, token_scale = dynamic_quant(x)
        out = torch.empty(x.shape[0], self.weight.shape[1], dtype=torch.float32, device=x.device)
        start = 0
        for e, n in enumerate(counts.tolist()):  # one int8 matmul per expert that got tokens
            if n:
                rows = slice(start, start + n)
                acc = torch._int_mm(xq[rows], self.weight[e].t())
                out[rows] = acc.float() * token_scale[rows] * self.weight_scale[e].t()
            start += n
        return out.to(x.dtype)

    def npu_operands(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """torch_npu's operands (vllm-ascend's process_weights_after_loading): [E, in, out] weights,
        [E, out] scales; kept once on a real NPU, rebuilt per call for check_ops' fakes."""
        if self._npu:
            return self._npu
        prepared = {"weight": self.weight.transpose(1, 2).contiguous()}
        if self.quantized:
            prepared["scale"] = self.weight_scale.squeeze(-1).to(torch.float32 if dtype == torch.float16 else dtype)
        if self.weight.device.type == "npu":
            self._npu = prepared
        return prepared


class Experts(nn.Module):
    """A layer's routed experts: `gate_up` [E, 2I, H] and `down` [E, H, I] (transformers v5's layout)."""

    def __init__(self, cfg: ModelConfig, quantized: bool) -> None:
        super().__init__()
        experts, width = cfg.num_experts, cfg.moe_intermediate_size
        self.num_experts = experts
        self.gate_up = ExpertWeights(experts, cfg.hidden_size, 2 * width, quantized)
        self.down = ExpertWeights(experts, width, cfg.hidden_size, quantized)


def route(logits: torch.Tensor, cfg: ModelConfig, bias: torch.Tensor | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(routing weights [T, k], expert ids [T, k]) from the router's logits (model dtype, or fp32
    for DeepSeek's and GLM's routers), by `cfg.routing` (transformers' routers step for step)."""
    routing, top_k = cfg.routing, cfg.num_experts_per_tok
    if routing.scoring == "sigmoid":
        scores = logits.float().sigmoid()
    else:
        scores = torch.softmax(logits, dim=-1, dtype=torch.float)
    if routing.method == "greedy":
        weights, ids = torch.topk(scores, top_k, dim=-1, sorted=routing.sorted)
    else:
        ids = _grouped_top_k(scores, bias, cfg)
        weights = scores.gather(1, ids)
    if cfg.norm_topk_prob:
        weights /= weights.sum(dim=-1, keepdim=True)
    if routing.scaling != 1.0:
        weights = weights * routing.scaling
    return (weights if cfg.routing_weights_fp32 else weights.to(logits.dtype)), ids


def _grouped_top_k(scores: torch.Tensor, bias: torch.Tensor | None, cfg: ModelConfig) -> torch.Tensor:
    """Expert ids [T, k] chosen only within each token's best `topk_group` of `n_group` groups:
    DeepSeek-V3's and GLM-4.5's `noaux_tc` ranks groups by their best two bias-corrected scores and
    masks the rest to -inf; DeepSeek-V2's `group_limited_greedy` by their best score, masked to 0."""
    routing, experts = cfg.routing, cfg.num_experts
    choice = scores + bias if bias is not None else scores
    grouped = choice.view(-1, routing.n_group, experts // routing.n_group)
    if routing.method == "noaux_tc":
        group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
    else:
        group_scores = grouped.max(dim=-1).values
    best = torch.topk(group_scores, k=routing.topk_group, dim=-1, sorted=False)[1]
    keep = torch.zeros_like(group_scores).scatter_(1, best, 1).bool()
    keep = keep.unsqueeze(-1).expand(-1, routing.n_group, experts // routing.n_group).reshape(-1, experts)
    choice = choice.masked_fill(~keep, float("-inf") if routing.method == "noaux_tc" else 0.0)
    return torch.topk(choice, k=cfg.num_experts_per_tok, dim=-1, sorted=False)[1]


def grouped_experts(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, experts: Experts,
                    kernels: Kernels) -> torch.Tensor:
    """transformers' `grouped_mm_experts_forward`, step for step (see the module's docstring)."""
    tokens, hidden = x.shape
    top_k = ids.shape[-1]
    sorted_ids, perm = torch.sort(ids.reshape(-1))
    rows = x[perm // top_k]
    sample_weights = weights.reshape(-1)[perm]
    counts = torch.histc(sorted_ids.float(), bins=experts.num_experts, min=0, max=experts.num_experts - 1)
    offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
    counts = counts.to(torch.int64)
    out = experts.down.grouped(kernels.swiglu(experts.gate_up.grouped(rows, offsets, counts)), offsets, counts)
    weighted = out * sample_weights.unsqueeze(-1)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.shape[0], device=perm.device)
    return weighted[inverse].view(tokens, top_k, hidden).sum(dim=1).to(x.dtype)


def npu_experts(x: torch.Tensor, logits: torch.Tensor, experts: Experts, cfg: ModelConfig,
                kernels: Kernels, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The same layer through torch_npu's fused MoE kernels (vllm-ascend's unquantized and
    W8A8_DYNAMIC fused-MoE methods)."""
    npu = kernels.npu_moe
    if npu is None:
        import torch_npu as npu
    tokens, top_k, num = x.shape[0], cfg.num_experts_per_tok, experts.num_experts
    if cfg.routing == Routing():  # Qwen's and Mixtral's softmax top-k: torch_npu's one gating kernel
        weights, ids, _ = npu.npu_moe_gating_top_k_softmax(logits, None, k=top_k)
        if cfg.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
    else:  # DeepSeek's grouped routing (check_ops names npu_moe_gating_top_k for it)
        weights, ids = route(logits, cfg, bias)
    quantized = experts.gate_up.quantized
    expanded, expanded_rows, tokens_per_expert, token_scale = npu.npu_moe_init_routing_v2(
        x, ids.to(torch.int32), active_num=tokens * top_k, expert_num=num, expert_tokens_num_type=1,
        expert_tokens_num_flag=True, active_expert_range=[0, num], quant_mode=1 if quantized else -1)
    group_list = tokens_per_expert.to(torch.int64)

    def matmul(h: torch.Tensor, proj: ExpertWeights, scale: torch.Tensor | None) -> torch.Tensor:
        ops = proj.npu_operands(x.dtype)
        quant = {"scale": [ops["scale"]], "per_token_scale": [scale], "output_dtype": x.dtype} if quantized else {}
        return npu.npu_grouped_matmul([h], [ops["weight"]], split_item=2, group_list_type=1, group_type=0,
                                      group_list=group_list, **quant)[0]

    h = kernels.swiglu(matmul(expanded, experts.gate_up, token_scale))
    scale = None
    if quantized:
        h, scale = npu.npu_dynamic_quant(h)
    h = matmul(h, experts.down, scale)
    return npu.npu_moe_finalize_routing(h, None, None, None, weights.to(x.dtype), expanded_rows, ids.to(torch.int32),
                                        drop_pad_mode=2)


class Router(nn.Module):
    """The router: `weight` [E, H] and, for DeepSeek-V3 and GLM-4.5, `e_score_correction_bias` [E].
    Kept fp32 through `.to(bfloat16)` where the family's router computes in fp32 (transformers'
    `_keep_in_fp32_modules_strict`): rounding them would change which experts tokens get."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fp32 = cfg.routing.logits_fp32
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))
        self.e_score_correction_bias = nn.Parameter(torch.empty(cfg.num_experts)) if cfg.routing.bias else None

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.fp32:
            for param in self.parameters():
                if param.dtype != torch.float32 and param.is_floating_point():
                    param.data = param.data.float()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Router logits [T, E]: fp32 from fp32 weights, or in the model dtype."""
        return F.linear(x.float(), self.weight) if self.fp32 else F.linear(x, self.weight)


class SparseMoE(nn.Module):
    """One sparse layer's MLP: `gate` (the router, float), `experts`, and where the family has one a
    `shared_expert` (a SwiGLU MLP), added as is (DeepSeek, GLM) or scaled by
    `sigmoid(shared_expert_gate(x))` (Qwen2-MoE)."""

    def __init__(self, cfg: ModelConfig, kernels: Kernels, quantized: bool, shared_expert: nn.Module | None) -> None:
        super().__init__()
        self.cfg, self.kernels = cfg, kernels
        self.gate = Router(cfg)
        self.experts = Experts(cfg, quantized)
        if shared_expert is not None:
            self.shared_expert = shared_expert
            if cfg.shared_expert_gated:
                self.shared_expert_gate = nn.Linear(cfg.hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        shared = self.shared_expert(x) if cfg.shared_expert_intermediate_size else None
        logits = self.gate(x)
        bias = self.gate.e_score_correction_bias
        on_npu = self.experts.gate_up.weight.device.type == "npu" or self.kernels.npu_moe is not None
        if on_npu:
            out = npu_experts(x, logits, self.experts, cfg, self.kernels, bias)
        else:
            weights, ids = route(logits, cfg, bias)
            out = grouped_experts(x, weights, ids, self.experts, self.kernels)
        if shared is not None:
            out = out + (torch.sigmoid(self.shared_expert_gate(x)) * shared if cfg.shared_expert_gated else shared)
        return parallel.all_reduce(out, cfg)

"""check_ops on the mixture-of-experts families (Qwen3-MoE, Qwen2-MoE, Mixtral fixtures): transformers'
model traced on meta with the "batched_mm" experts, every op classified against torch_npu 2.14.0,
and the MoE block named part by part against torch_npu's MoE kernels, once per sparse layer."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from torch import nn

from ascend_common.soc import get_soc
from fixtures import MOE_FAMILIES
from opcheck.classify import NATIVE, Classifier
from opcheck.fusion import MOE_PATTERNS, find_fusions
from opcheck.hf_trace import build_model, export_prefill, load_config, trace_hf
from opcheck.manifests import load_manifest, shipped_path
from opcheck.trace import findings

MANIFEST = load_manifest(shipped_path("torch_npu-2.14.0.json"), "torch_npu")
MOE = [p.name for p in MOE_PATTERNS[:4]]  # gating, init routing, grouped matmul, finalize (no quantization)
# The sparse layers of each fixture: qwen3_moe's layer 1 is dense (mlp_only_layers), qwen2_moe is
# sparse every 2nd layer (decoder_sparse_step=2), Mixtral's 2 layers are both sparse.
SPARSE = {"qwen3_moe": (0, 2), "qwen2_moe": (1, 3), "mixtral": (0, 1)}
# What the experts of every family run (batched_mm), and the router: all in torch_npu 2.14.0's codegen
# yaml (checked by hand: bmm, index.Tensor, repeat_interleave.self_int, topk, softmax.int,
# sum.dim_IntList, silu, mul.Tensor; sigmoid for Qwen2-MoE's shared-expert gate, div_.Tensor for the
# top-k renormalisation of Qwen3-MoE and Mixtral, norm_topk_prob)
EXPERT_OPS = {"bmm", "index.Tensor", "repeat_interleave.self_int", "topk", "softmax.int", "sum.dim_IntList"}
FAMILY_OPS = {"qwen3_moe": {"div_.Tensor"}, "qwen2_moe": {"sigmoid"}, "mixtral": {"div_.Tensor"}}


@lru_cache(maxsize=None)
def _traced(path: str, dtype: str):
    model_dir = Path(path)
    return trace_hf(model_dir, load_config(model_dir), dtype, batch=1, seq_len=8)


def traced(checkpoint, family: str, dtype: str):
    """(uses of prefill + decode, the prefill program, the experts implementation), one trace per dtype."""
    return _traced(str(checkpoint(family)), dtype)


@pytest.mark.parametrize("family", MOE_FAMILIES)
@pytest.mark.parametrize("soc,dtype", [("ascend910b", "bfloat16"), ("ascend910b", "float16"),
                                       ("ascend310p", "float16")])
def test_every_op_reaches_an_npu_kernel(checkpoint, family, soc, dtype):
    uses, _, experts = traced(checkpoint, family, dtype)
    assert experts == "batched_mm"
    assert findings(uses, Classifier(MANIFEST), get_soc(soc).dtypes) == []
    classifier = Classifier(MANIFEST)
    for key in EXPERT_OPS | FAMILY_OPS[family]:
        assert uses[key].count > 0 and classifier.classify(uses[key].op, *uses[key].example).kind == NATIVE, key
        assert uses[key].phases == ["prefill", "decode"]
    assert "_grouped_mm" not in uses  # the default grouped_mm is not what was traced


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_graph_holds_aten_ops_only(checkpoint, family):
    """In fp16 transformers' grouped_mm becomes its own `transformers::grouped_mm_fallback` op under
    export, which the op list would not show: batched_mm's graph holds nothing but aten ops."""
    _, program, _ = traced(checkpoint, family, "float16")
    namespaces = {n.target.namespace for n in program.graph.nodes
                  if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)}
    assert namespaces == {"aten"}


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_moe_fusions_once_per_sparse_layer(checkpoint, family):
    _, program, _ = traced(checkpoint, family, "bfloat16")
    fusions = {f.pattern: f for f in find_fusions(program, MANIFEST["npu_custom"])}
    assert [p for p in fusions if p.startswith("MoE")] == MOE
    ops = {p: (fusions[p].count, fusions[p].fused_op, fusions[p].in_release) for p in MOE}
    assert ops == {"MoE gating": (2, "torch_npu.npu_moe_gating_top_k_softmax", True),
                   "MoE init routing": (2, "torch_npu.npu_moe_init_routing_v2", True),
                   "MoE grouped matmul": (2, "torch_npu.npu_grouped_matmul", True),
                   "MoE finalize routing": (2, "torch_npu.npu_moe_finalize_routing", True)}
    gate = fusions["MoE gating"].locations
    assert [loc.rsplit("(", 1)[1] for loc in gate] == [f"model.layers.{i}.mlp.gate)" for i in SPARSE[family]]
    assert all(f"transformers/models/{family}/modeling_{family}.py:" in loc for loc in gate)
    assert fusions["MoE grouped matmul"].locations[0].endswith(f"(model.layers.{SPARSE[family][0]}.mlp.experts)")
    # the dense patterns still count every layer: one attention per layer
    assert fusions["attention"].count == load_config(checkpoint(family)).num_hidden_layers


def test_grouped_mm_graph_sorts_tokens_by_expert(checkpoint):
    """transformers' grouped_mm (exportable in bf16): init routing is the sort of the expert ids,
    the experts' matmuls `aten._grouped_mm`, finalize the un-permute and sum."""
    model_dir = checkpoint("qwen3_moe")
    model = build_model(model_dir, load_config(model_dir), "bfloat16")
    model.set_experts_implementation("grouped_mm")
    program = export_prefill(model, model_dir, 1, 8)
    targets = {n.target for n in program.graph.nodes}
    assert torch.ops.aten.sort.default in targets and torch.ops.aten._grouped_mm.default in targets
    fusions = {f.pattern: (f.count, f.fused_op) for f in find_fusions(program) if f.pattern in MOE}
    assert fusions == {"MoE gating": (2, "torch_npu.npu_moe_gating_top_k_softmax"),
                       "MoE init routing": (2, "torch_npu.npu_moe_init_routing_v2"),
                       "MoE grouped matmul": (2, "torch_npu.npu_grouped_matmul"),
                       "MoE finalize routing": (2, "torch_npu.npu_moe_finalize_routing")}


def test_a_release_without_the_kernel(checkpoint):
    """The first kernel the release has is suggested; a release with none of them says so."""
    _, program, _ = traced(checkpoint, "mixtral", "bfloat16")
    custom = set(MANIFEST["npu_custom"]) - {"npu_moe_init_routing_v2"}
    init = next(f for f in find_fusions(program, custom) if f.pattern == "MoE init routing")
    assert (init.fused_op, init.in_release) == ("torch_npu.npu_moe_init_routing", True)
    custom -= {"npu_moe_init_routing", "npu_grouped_matmul"}
    fusions = {f.pattern: (f.fused_op, f.in_release) for f in find_fusions(program, custom) if f.pattern in MOE}
    assert fusions == {"MoE gating": ("torch_npu.npu_moe_gating_top_k_softmax", True),
                       "MoE init routing": ("torch_npu.npu_moe_init_routing_v2", False),
                       "MoE grouped matmul": ("torch_npu.npu_grouped_matmul", False),
                       "MoE finalize routing": ("torch_npu.npu_moe_finalize_routing", True)}
    # without a release to ask, nothing is claimed
    assert {f.in_release for f in find_fusions(program)} == {None}


class SortedExperts(nn.Module):
    """An MoE layer written the way a runtime may: tokens sorted by expert (argsort), one matmul per
    expert (each over the sorted rows, kept where the row is its expert's), the rows scattered back
    and summed per token with index_add_. `quant`: W8A8 dynamic, the sorted tokens quantized per
    token at run time (absmax / 127, round, int8) and int8 matmuls (`_int_mm`) per expert."""

    def __init__(self, hidden: int = 16, inter: int = 16, experts: int = 4, k: int = 2, quant: bool = False):
        super().__init__()
        self.k, self.quant = k, quant
        self.router = nn.Linear(hidden, experts, bias=False)
        self.up = nn.Parameter(torch.randn(experts, inter, hidden))
        self.down = nn.Parameter(torch.randn(experts, hidden, inter))
        self.up_q = nn.Parameter(torch.zeros(experts, hidden, inter, dtype=torch.int8), requires_grad=False)

    def _up(self, x: torch.Tensor, e: int) -> torch.Tensor:
        if not self.quant:
            return nn.functional.linear(x, self.up[e])
        scale = x.abs().amax(dim=-1, keepdim=True) / 127.0
        q = torch.clamp(torch.round(x / scale), -128, 127).to(torch.int8)
        return torch._int_mm(q, self.up_q[e]).float() * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = torch.topk(torch.softmax(self.router(x), dim=-1), self.k)
        weights = weights / weights.sum(-1, keepdim=True)
        order = ids.flatten().argsort()
        rows, expert = order // self.k, ids.flatten()[order]
        tokens = x[rows]
        out = torch.zeros_like(tokens)
        for e in range(self.up.shape[0]):
            y = nn.functional.linear(nn.functional.silu(self._up(tokens, e)), self.down[e])
            out = torch.where((expert == e)[:, None], y, out)
        out = out * weights.flatten()[order][:, None]
        return torch.zeros_like(x).index_add_(0, rows, out)


@pytest.mark.parametrize("quant", [False, True])
def test_sorted_tokens_and_one_matmul_per_expert(quant):
    with torch.device("meta"):
        layer = SortedExperts(quant=quant)
    program = torch.export.export(layer, (torch.zeros(32, 16, device="meta"),), strict=False)
    fusions = {f.pattern: (f.count, f.in_release) for f in find_fusions(program, MANIFEST["npu_custom"])
               if f.pattern.startswith("MoE")}
    expected = {p: (1, True) for p in MOE}
    if quant:
        expected["MoE dynamic quant"] = (1, True)
    assert fusions == expected


def test_no_moe_in_a_dense_model(checkpoint):
    model_dir = checkpoint("qwen3")
    program = export_prefill(build_model(model_dir, load_config(model_dir), "float16"), model_dir, 1, 8)
    assert [f.pattern for f in find_fusions(program, MANIFEST["npu_custom"]) if f.pattern.startswith("MoE")] == []


def test_reports_name_the_experts_implementation(checkpoint, tmp_path):
    from opcheck.check import run_check
    from opcheck.report import render

    model = str(checkpoint("qwen2_moe"))
    r = run_check(model, dtype="float16")
    table = render("table", r.label, r.target, r.uses, r.found, r.fusions)
    assert f"check_ops {model}: " in table
    assert "target ascend910b float16, torch_npu 2.14.0, experts traced as batched_mm" in table
    assert "MoE init routing" in table and "torch_npu.npu_moe_init_routing_v2" in table and "not in" not in table
    sarif = json.loads(render("sarif", r.model, r.target, r.uses, r.found, r.fusions))
    assert sarif["runs"][0]["properties"] == {"experts_implementation": "batched_mm"}

    # the CLI, against a release without npu_moe_init_routing(_v2): JSON and the markdown summary say so
    lacking = dict(MANIFEST, npu_custom=[op for op in MANIFEST["npu_custom"] if not op.startswith("npu_moe_init")])
    (tmp_path / "old.json").write_text(json.dumps(lacking))
    out = run_cli("check-ops", "--model", model, "--manifest", tmp_path / "old.json", "--format", "json",
                  "--summary-file", tmp_path / "summary.md")
    assert out.code == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["target"]["experts"] == "batched_mm" and report["clean"]
    moe = {f["pattern"]: (f["count"], f["fused_op"], f["in_release"]) for f in report["fusions"]
           if f["pattern"].startswith("MoE")}
    assert moe == {"MoE gating": (2, "torch_npu.npu_moe_gating_top_k_softmax", True),
                   "MoE init routing": (2, "torch_npu.npu_moe_init_routing_v2", False),
                   "MoE grouped matmul": (2, "torch_npu.npu_grouped_matmul", True),
                   "MoE finalize routing": (2, "torch_npu.npu_moe_finalize_routing", True)}
    assert all("in_release" not in f for f in report["fusions"] if not f["pattern"].startswith("MoE"))
    assert ("| MoE init routing | 2 | `torch_npu.npu_moe_init_routing_v2` (not in torch_npu 2.14.0) |"
            in (tmp_path / "summary.md").read_text())


def test_w8a8_dynamic_experts_add_npu_dynamic_quant(copy_checkpoint):
    """A converted checkpoint whose routed experts are W8A8_DYNAMIC (msModelSlim's description): the
    float model traced from config.json cannot show the per-token quantization, the description does."""
    from ascend_common.errors import UserError
    from opcheck.check import run_check

    model = copy_checkpoint("mixtral")
    description = {"model_quant_type": "W8A8_DYNAMIC", "model.layers.0.self_attn.q_proj.weight": "W8A8_DYNAMIC",
                   "model.layers.0.block_sparse_moe.gate.weight": "FLOAT"}
    (model / "quant_model_description.json").write_text(json.dumps(description))
    dense_only = {f.pattern for f in run_check(str(model), dtype="float16").fusions}
    assert "MoE dynamic quant" not in dense_only and "MoE grouped matmul" in dense_only  # no expert is dynamic

    description["model.layers.1.block_sparse_moe.experts.3.w1.weight"] = "W8A8_DYNAMIC"
    (model / "quant_model_description.json").write_text(json.dumps(description))
    fusions = {f.pattern: f for f in run_check(str(model), dtype="float16").fusions}
    quant = fusions["MoE dynamic quant"]
    assert (quant.count, quant.fused_op, quant.in_release) == (2, "torch_npu.npu_dynamic_quant", True)
    assert quant.locations == fusions["MoE grouped matmul"].locations

    (model / "quant_model_description.json").write_text("{not json")
    with pytest.raises(UserError, match=r"quant_model_description\.json: not a readable quantization description \("):
        run_check(str(model), dtype="float16")


def test_runtime_moe_layers_call_the_fused_kernels_already(checkpoint, tmp_path):
    """`--target runtime`: the runtime's MoE layers call torch_npu's MoE kernels on an NPU (traced
    through check_ops' stand-ins), so nothing is left to fuse; a release without one of them is a
    finding, with the MoE layers named in its advice."""
    from opcheck.check import run_check

    model = str(checkpoint("qwen3_moe"))  # layers 0 and 2 sparse
    r = run_check(model, "runtime", dtype="float16")
    assert r.found == [] and [f.pattern for f in r.fusions if f.pattern.startswith("MoE")] == []
    assert r.uses["npu_moe_init_routing_v2"].count == 4  # 2 sparse layers, prefill and decode
    assert "experts" not in r.target  # the runtime's own layer: no transformers experts implementation

    lacking = dict(MANIFEST, npu_custom=[op for op in MANIFEST["npu_custom"] if op != "npu_moe_init_routing_v2"])
    (tmp_path / "old.json").write_text(json.dumps(lacking))
    r = run_check(model, "runtime", dtype="float16", manifest_file=tmp_path / "old.json")
    assert [(f.op, f.kind, f.count, f.phases) for f in r.found] == [
        ("npu::npu_moe_init_routing_v2", "fallback", 4, ("prefill", "decode"))]
    assert r.found[0].advice == ("this torch_npu release has no npu_moe_init_routing_v2: the MoE layers cannot "
                                 "run on it; target a torch_npu release that has the kernel")

"""The classifier against the shipped torch_npu 2.14.0 manifest, on real exported graphs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from opcheck.classify import COMPOSITE, DECOMPOSES, FALLBACK, NATIVE, Classifier
from opcheck.manifests import load_manifest, shipped_path
from opcheck.trace import UNSUPPORTED, findings, ops_in

A = torch.ops.aten
FP = ("float16", "bfloat16", "float32")  # ascend910b


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(load_manifest(shipped_path("torch_npu-2.14.0.json"), "torch_npu"))


def export(module: torch.nn.Module, *args) -> torch.export.ExportedProgram:
    return torch.export.export(module.eval(), args, strict=False)


@pytest.mark.parametrize("op,args,kind,via", [
    (A.erfinv.default, (torch.rand(4),), NATIVE, ()),
    (A.gelu.default, (torch.rand(4),), NATIVE, ("gelu.out",)),  # through its structured delegate
    (A.lgamma.default, (torch.rand(4),), FALLBACK, ("lgamma.out",)),
    (A.hypot.default, (torch.rand(4), torch.rand(4)), FALLBACK, ("hypot.out",)),
    (A.logcumsumexp.default, (torch.rand(4, 4), 1), FALLBACK, ("_logcumsumexp",)),
    (A.cummax.default, (torch.rand(4, 4), 1), COMPOSITE, ()),  # → _cummax_helper, native
    (A.embedding_bag.default, (torch.rand(10, 4), torch.zeros(4, dtype=torch.long), torch.tensor([0, 2])),
     DECOMPOSES, ()),
    (A.linear.default, (torch.rand(2, 4), torch.rand(3, 4)), DECOMPOSES, ()),
    (A.t.default, (torch.rand(2, 4),), COMPOSITE, ()),  # a view: not a finding though absent from the manifest
    (A.lift_fresh_copy.default, (torch.rand(3),), COMPOSITE, ()),  # CompositeExplicitNonFunctional → clone
    (A.expand.default, (torch.rand(1, 8), [3, 8]), COMPOSITE, ()),  # explicit sizes: probed at real shapes
    (A.mode.default, (torch.rand(4, 4), 1), FALLBACK, ()),
    (A._weight_int8pack_mm.default, (torch.rand(2, 8), torch.zeros(4, 8, dtype=torch.int8), torch.ones(4)),
     FALLBACK, ()),
])
def test_dispatcher_order(classifier, op, args, kind, via):
    verdict = classifier.classify(op, args)
    assert (verdict.kind, verdict.via) == (kind, via)


class Fallbacks(torch.nn.Module):
    def forward(self, x):
        y = torch.lgamma(x)
        return torch.logcumsumexp(y, dim=-1)


class AllNative(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(16, 8))

    def forward(self, x, ids, offsets):
        bag = F.embedding_bag(ids, self.weight, offsets)
        values, _ = torch.cummax(torch.special.erfinv(x.clamp(-0.5, 0.5)), dim=-1)
        return bag.sum() + values.sum()


def test_fallbacks_are_found_with_their_source_line(classifier):
    found = findings(ops_in(export(Fallbacks(), torch.rand(2, 8))), classifier, FP)
    by_op = {f.op: f for f in found}
    assert set(by_op) == {"aten::lgamma", "aten::logcumsumexp"}
    assert {f.kind for f in found} == {FALLBACK}
    assert by_op["aten::logcumsumexp"].via == ("_logcumsumexp",)
    line = next(i for i, l in enumerate(Path(__file__).read_text().splitlines(), 1) if "torch.lgamma(x)" in l)
    assert by_op["aten::lgamma"].locations == (f"{__file__}:{line} (<root>)",)
    assert "_logcumsumexp" in by_op["aten::logcumsumexp"].advice


def test_ops_with_npu_kernels_are_not_findings(classifier):
    args = (torch.rand(2, 8), torch.zeros(6, dtype=torch.long), torch.tensor([0, 3]))
    assert findings(ops_in(export(AllNative(), *args)), classifier, FP) == []


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_transformers_fixtures_on_meta_have_no_fallback(classifier, checkpoint, family):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(checkpoint(family))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    ids = torch.zeros((1, 16), dtype=torch.long, device="meta")
    program = torch.export.export(model.eval(), (), {"input_ids": ids, "use_cache": False}, strict=False)
    uses = ops_in(program)
    assert {"aten::linear", "aten::slice.Tensor", "aten::transpose.int"} <= {u.name for u in uses.values()}
    assert findings(uses, classifier, FP) == []
    bf16 = findings(uses, classifier, ("float16", "float32"))  # ascend310p: fp16 is fine
    assert bf16 == []


def test_bf16_on_a_chip_without_it_is_a_dtype_finding(classifier, checkpoint):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(checkpoint("llama"))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    ids = torch.zeros((1, 8), dtype=torch.long, device="meta")
    program = torch.export.export(model.eval(), (), {"input_ids": ids, "use_cache": False}, strict=False)
    found = findings(ops_in(program), classifier, ("float16", "float32"))
    assert found and {f.kind for f in found} == {UNSUPPORTED}
    assert "aten::linear" in {f.op for f in found}
    assert all("bfloat16" in f.dtypes for f in found)


def test_a_kernel_missing_from_the_manifest_is_found(checkpoint):
    """The same Llama graph against a manifest without rsqrt: the check can fail."""
    from transformers import AutoConfig, AutoModelForCausalLM

    manifest = load_manifest(shipped_path("torch_npu-2.14.0.json"), "torch_npu")
    manifest = {**manifest, "aten": [op for op in manifest["aten"] if not op.startswith("rsqrt")]}
    config = AutoConfig.from_pretrained(checkpoint("llama"))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    ids = torch.zeros((1, 8), dtype=torch.long, device="meta")
    program = torch.export.export(model.eval(), (), {"input_ids": ids, "use_cache": False}, strict=False)
    found = findings(ops_in(program), Classifier(manifest), FP)
    assert [(f.op, f.kind) for f in found] == [("aten::rsqrt", FALLBACK)]
    assert found[0].count == 2 * config.num_hidden_layers + 1  # two norms per layer and the final norm
    assert any("modeling_llama.py" in loc for loc in found[0].locations)


def test_structured_delegates_read_line_by_line_match_the_yaml():
    import os

    import torchgen
    import yaml

    from opcheck.classify import structured_delegates

    path = os.path.join(os.path.dirname(torchgen.__file__), "packaged", "ATen", "native", "native_functions.yaml")
    with open(path, encoding="utf-8") as f:
        entries = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    expected = {e["func"].split("(", 1)[0]: e["structured_delegate"] for e in entries if "structured_delegate" in e}
    assert structured_delegates() == expected and expected["hypot"] == "hypot.out"

"""check_ops on every kind of input it takes: `module:function` (the user's own model), an exported
program (`.pt2`), and HF configs traced for prefill and decode; bad inputs and a trace that dies
inside the model."""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest
import torch
from conftest import assert_one_line_error, run_cli

MODELS = '''\
import torch
import torch.nn.functional as F


class Fallbacks(torch.nn.Module):
    def forward(self, x):
        y = torch.lgamma(x)
        return torch.logcumsumexp(y, dim=-1)


class AllNative(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(16, 8))

    def forward(self, x, ids, offsets):
        bag = F.embedding_bag(ids, self.weight, offsets)
        values, _ = torch.cummax(torch.special.erfinv(x.clamp(-0.5, 0.5)), dim=-1)
        return bag.sum() + values.sum()


class Broken(torch.nn.Module):
    def forward(self, x):
        return x @ torch.ones(3, 3)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(8, 8), Broken()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def fallbacks():
    return Fallbacks(), (torch.rand(2, 8),)


def all_native():
    return AllNative(), (torch.rand(2, 8), torch.zeros(6, dtype=torch.long), torch.tensor([0, 3]))


def broken():
    return Net(), (torch.rand(2, 8),)


def not_a_model():
    return 42
'''


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.fixture
def user_models(tmp_path):
    (tmp_path / "user_models.py").write_text(MODELS)
    return tmp_path


def check_ops(*args, cwd=None):
    return run_cli(*args, script="check_ops", cwd=cwd)


def test_function_with_fallback_ops_exits_1_naming_each_with_its_line(user_models):
    out = user_models / "report.json"
    result = check_ops("--model", "user_models:fallbacks", "--format", "json", "--output", out, cwd=user_models)
    assert result.code == 1, result.stderr
    by_op = {f["op"]: f for f in json.loads(out.read_text())["findings"]}
    assert set(by_op) == {"aten::lgamma", "aten::logcumsumexp"}
    assert {f["kind"] for f in by_op.values()} == {"fallback"}
    assert by_op["aten::logcumsumexp"]["via"] == ["_logcumsumexp"]
    source = user_models / "user_models.py"
    assert by_op["aten::lgamma"]["locations"] == [f"{source}:{line_of(MODELS, 'torch.lgamma(x)')} (<root>)"]
    table = check_ops("--model", "user_models:fallbacks", cwd=user_models)
    assert table.code == 1
    lines = table.stdout.splitlines()
    assert "fallback op: aten::lgamma" in lines and "fallback op: aten::logcumsumexp" in lines


def test_function_whose_ops_reach_npu_kernels_exits_0(user_models):
    result = check_ops("--model", "user_models:all_native", cwd=user_models)
    assert result.code == 0, result.stdout + result.stderr
    assert "no findings: every op reaches an NPU kernel" in result.stdout


def test_allow_baseline_accepts_the_fallbacks(user_models):
    allow = user_models / "allow.yaml"
    allow.write_text("allow:\n"
                     "  - {op: aten::lgamma, kind: fallback, reason: only in the loss and never served}\n"
                     "  - {op: logcumsumexp, reason: tracked upstream}\n")
    out = user_models / "report.json"
    result = check_ops("--model", "user_models:fallbacks", "--allow", allow, "--format", "json", "--output", out,
                       cwd=user_models)
    assert result.code == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["clean"] and {a["op"] for a in report["target"]["allowed"]} == {"aten::lgamma",
                                                                                   "aten::logcumsumexp"}


def test_trace_failing_inside_the_model_names_the_module(user_models):
    result = check_ops("--model", "user_models:broken", cwd=user_models)
    source = user_models / "user_models.py"
    assert_one_line_error(result, "user_models:broken (Net): tracing failed in layers.1 "
                          f"(Broken, {source}:{line_of(MODELS, 'x @ torch.ones(3, 3)')}): RuntimeError")


def test_function_returning_something_else(user_models):
    assert_one_line_error(check_ops("--model", "user_models:not_a_model", cwd=user_models),
                          "user_models:not_a_model: expected it to return (model, example_args)")


def test_function_that_cannot_be_imported(user_models):
    assert_one_line_error(check_ops("--model", "no_such_module:build", cwd=user_models),
                          "no_such_module:build: cannot import no_such_module (ModuleNotFoundError")
    assert_one_line_error(check_ops("--model", "user_models:nope", cwd=user_models),
                          "user_models:nope: user_models has no function nope")


def test_model_that_is_not_there_or_not_a_model(tmp_path):
    assert_one_line_error(check_ops("--model", tmp_path / "missing"), f"{tmp_path / 'missing'}: no such file or directory")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert_one_line_error(check_ops("--model", notes), f"{notes}: not a model check_ops reads")


def _save_program(tmp_path, module, args):
    path = tmp_path / "program.pt2"
    torch.export.save(torch.export.export(module.eval(), args, strict=False), str(path))
    return path


class LgammaWithWeights(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.lgamma(self.proj(x))


def test_exported_program_is_checked(tmp_path):
    path = _save_program(tmp_path, LgammaWithWeights(), (torch.rand(2, 8),))
    result = check_ops("--model", path)
    assert result.code == 1, result.stderr
    assert "fallback op: aten::lgamma" in result.stdout.splitlines()
    assert "aten::linear" not in result.stdout  # linear reaches an NPU kernel


def test_exported_program_with_pickled_entries_is_refused_without_trust(tmp_path):
    """torch.export.load would unpickle such an entry (weights_only=False): we refuse unless trusted."""
    path = _save_program(tmp_path, LgammaWithWeights(), (torch.rand(2, 8),))
    tampered = tmp_path / "tampered.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("weights_config.json"):
                config = json.loads(data)
                for meta in config["config"].values():
                    meta["use_pickle"] = True
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    assert_one_line_error(check_ops("--model", tampered),
                          f"{tampered}: 2 entries can only be read by unpickling (proj.weight, proj.bias); "
                          "pass --trust-remote-code if you trust this file")


def test_truncated_exported_program(tmp_path):
    path = _save_program(tmp_path, LgammaWithWeights(), (torch.rand(2, 8),))
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(path.read_bytes()[:200])
    assert_one_line_error(check_ops("--model", broken), f"{broken}: not a readable exported program")


def test_hf_config_is_traced_for_prefill_and_decode(checkpoint):
    from opcheck.hf_trace import export_hf, load_config
    from opcheck.trace import ops_in

    model = checkpoint("qwen2")
    config = load_config(model)
    programs = export_hf(model, config, "float16", batch=2, seq_len=5)
    assert set(programs) == {"prefill", "decode"}
    head_dim = config.hidden_size // config.num_attention_heads
    decode_sdpa = [n for n in programs["decode"].graph.nodes if n.target == torch.ops.aten.scaled_dot_product_attention.default]
    assert len(decode_sdpa) == config.num_hidden_layers
    query, key = (decode_sdpa[0].args[i].meta["val"] for i in (0, 1))
    assert list(query.shape) == [2, config.num_attention_heads, 1, head_dim]  # one new token ...
    assert list(key.shape)[2] == 6  # ... attending to 5 cached + itself
    uses = ops_in(programs)
    assert uses["cat"].phases == ["prefill", "decode"]  # rotate_half in both, the cache append in decode


def test_json_report_records_both_shapes_and_fusions(checkpoint, tmp_path):
    out = tmp_path / "report.json"
    result = check_ops("--model", checkpoint("llama"), "--dtype", "float16", "--seq-len", "7", "--format", "json",
                       "--output", out)
    assert result.code == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["target"]["shapes"] == {"prefill": [1, 7], "decode": [1, 1, 7]}
    fusions = {f["pattern"]: (f["count"], f["fused_op"]) for f in report["fusions"]}
    assert fusions["RMSNorm"] == (5, "torch_npu.npu_rms_norm")  # prefill graph, 2 layers
    assert fusions["attention"] == (2, "torch_npu.npu_fused_infer_attention_score")


def test_trace_failing_inside_an_hf_model_names_the_module(tmp_path, checkpoint):
    """A config transformers builds but whose forward can't run: 4 query heads over 3 KV heads."""
    model = tmp_path / "m"
    shutil.copytree(checkpoint("llama"), model)
    config = json.loads((model / "config.json").read_text())
    config["num_key_value_heads"] = 3  # GQA needs the query heads to be a multiple of the KV heads
    (model / "config.json").write_text(json.dumps(config))
    result = check_ops("--model", model, "--dtype", "float16")
    assert_one_line_error(result, f"{model} (LlamaForCausalLM) prefill: tracing failed in model.layers.0.self_attn "
                          "(LlamaAttention, transformers/models/llama/modeling_llama.py:")


def test_decode_traced_in_a_child_process_gives_the_same_ops(checkpoint):
    """trace_hf exports the decode step in a forked child (two cores, half the time): same result."""
    from opcheck.hf_trace import export_hf, load_config, trace_hf
    from opcheck.trace import ops_in

    model = checkpoint("mistral")
    config = load_config(model)
    parallel, prefill, experts = trace_hf(model, config, "float16", batch=1, seq_len=6)
    assert experts is None  # a dense model: no experts implementation to name
    serial = ops_in(export_hf(model, config, "float16", batch=1, seq_len=6))
    assert {k: (u.count, u.phases, sorted(u.dtypes)) for k, u in parallel.items()} == \
        {k: (u.count, u.phases, sorted(u.dtypes)) for k, u in serial.items()}
    assert prefill.graph_signature.user_inputs[0] == "input_ids"

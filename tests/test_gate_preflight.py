"""`gate` on a directory it did not convert: a quantized checkpoint made elsewhere (msModelSlim's
layout, here hand-made) is deployed as it is, so it is judged as it is — its dtype and quantization
read from its own files, nothing verified against a manifest it does not have, and preflight
deciding whether vllm-ascend would load it."""

from __future__ import annotations

import json

import preflight_dirs as pd
from conftest import run_cli

POLICY = '''[target]
soc = "ascend910b"
dtype = "bfloat16"
quantize = "w8a8-dynamic"

[ops]
model = false
runtime = false

[smoke]
max_tokens = 4

[[smoke.prompts]]
prompt = "Hello"

[smoke.load]
requests = 2
concurrency = 1
prompt_len = 8
tokens = 2

[runtime]
device = "cpu"
kv_cache_memory = "64MiB"
'''


def test_a_brought_msmodelslim_directory_is_preflighted_as_it_is(tmp_path):
    """#8367's checkpoint (lm_head.weight not in its description) brought to the gate: every other rule
    passes or says why it does not apply, and the preflight rule fails with the loader's KeyError."""
    tensors, types = pd.quantized()
    del types["lm_head.weight"]
    model = pd.write_dir(tmp_path / "w8a8-dynamic", pd.config(), tensors, pd.description(types))
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    result = run_cli("gate", model, "--policy", policy, "--report-dir", tmp_path / "reports", timeout=600)
    data = json.loads((tmp_path / "reports" / "gate.json").read_text())
    status = {r["id"]: r["status"] for r in data["rules"]}
    messages = {r["id"]: r["message"] for r in data["rules"]}
    assert (result.code, data["failed"]) == (1, ["preflight", "preflight.quant.undescribed"]), result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("[")] == [
        "[1/4] doctor", "[2/4] convert", "[3/4] preflight", "[4/4] smoke"]
    assert data["stages"]["convert"] == {"action": "brought", "output": str(model), "source": "",
                                         "target": {"dtype": "bfloat16", "quantize": "W8A8_DYNAMIC"}}
    assert (status["target.soc"], status["convert.verify"]) == ("skip", "skip")
    assert (status["target.dtype"], status["target.quantize"], status["smoke.load"]) == ("pass", "pass", "pass")
    assert messages["target.quantize"] == ("quantization w8a8-dynamic (model_quant_type 'W8A8_DYNAMIC'), the policy "
                                           "wants w8a8-dynamic")
    assert messages["preflight.quant.undescribed"].startswith(
        "error: lm_head.weight: 1 weight(s) of the LM head not in quant_model_description.json (lm_head.weight): "
        "KeyError: 'lm_head.weight' at load (the loader: refuse (KeyError on the tensor's name); ")
    assert not (tmp_path / "reports" / "converted").exists()  # nothing converted

"""The convert command as users run it: the seed's alias, dry runs, overflow policy, --force, and
--resume after a kill giving byte-identical files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli
from safetensors.torch import load_file, save_file


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_help_does_not_import_torch():
    code = ("import sys; from ascendkit.cli import cli; import click\n"
            "try:\n    cli.main(['--help'], standalone_mode=False)\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'safetensors', 'numpy') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_seed_article_syntax(tmp_path, checkpoint):
    out = tmp_path / "llama-ascend"
    result = run_cli("--input_dir", checkpoint("llama"), "--output_dir", out, "--backend", "ascend",
                     "--no-progress", script="convert_checkpoint")
    assert result.code == 0, result.stderr
    manifest = json.loads((out / "ascend_manifest.json").read_text())
    assert manifest["target"]["soc"] == "ascend910b" and manifest["source"]["family"] == "llama"
    result = run_cli("verify", out, "--source", checkpoint("llama"))
    assert result.code == 0 and "tensors equal the checked cast (or quantization) of the source" in result.stdout


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, checkpoint):
    out = tmp_path / "out"
    result = run_cli("convert", checkpoint("qwen3"), out, "--dry-run", "--json", "--soc", "ascend310p")
    assert result.code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["dtype"] == "float16" and plan["source_dtype"] == "bfloat16" and plan["family"] == "qwen3"
    assert plan["casts"] == {"bfloat16->float16": plan["tensors"]}
    assert not out.exists() and not list(tmp_path.iterdir())


def _with_big_values(src: Path, names: list[str]) -> None:
    tensors = load_file(src / "model.safetensors")
    for i, name in enumerate(names):
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[: i + 1] = 1e5  # beyond ±65504, representable in bf16
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})


def test_overflow_fails_with_every_tensor_listed(tmp_path, copy_checkpoint):
    src = copy_checkpoint("llama")
    names = ["model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.o_proj.weight"]
    _with_big_values(src, names)
    out = tmp_path / "out"
    result = run_cli("convert", src, out, "--soc", "ascend910a", "--no-progress")
    assert_one_line_error(result, "2 tensor(s) hold values beyond the float16 range",
                          f"{names[0]} (1 values)", f"{names[1]} (2 values)", "--on-overflow clamp", code=1)
    assert not out.exists() and not (tmp_path / ".out.partial").exists()


def test_overflow_clamp_saturates_and_records(tmp_path, copy_checkpoint):
    src = copy_checkpoint("llama")
    name = "model.layers.0.mlp.down_proj.weight"
    _with_big_values(src, [name])
    out = tmp_path / "out"
    result = run_cli("convert", src, out, "--soc", "ascend910a", "--on-overflow", "clamp", "--no-progress")
    assert result.code == 0, result.stderr
    assert f"{name}: 1 values beyond ±65504 clamped" in result.stdout
    record = json.loads((out / "ascend_manifest.json").read_text())["tensors"][name]
    assert record["cast"]["overflow"] == record["cast"]["clamped"] == 1
    assert load_file(out / "model.safetensors")[name].view(-1)[0].item() == 65504.0
    assert run_cli("verify", out, "--source", src).code == 0


def test_force_replaces_an_existing_output(tmp_path, checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    result = run_cli("convert", checkpoint("llama"), out, "--force", "--no-progress")
    assert result.code == 0, result.stderr
    assert not (out / "stale.txt").exists() and (out / "ascend_manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or old directory left behind


def test_resume_after_kill_is_byte_identical(tmp_path, checkpoint):
    src = checkpoint("qwen2", "sharded")
    args = ["--soc", "ascend910a", "--max-shard-size", "30KB", "--no-progress"]
    reference = tmp_path / "reference"
    assert run_cli("convert", src, reference, *args).code == 0
    shards = len(list(reference.glob("model-*.safetensors")))
    assert shards >= 3

    out = tmp_path / "out"
    killed = run_cli("convert", src, out, *args, env={"ASCENDKIT_FAILPOINT": "kill-after-shard:2"})
    assert killed.code == -9  # SIGKILL: no cleanup ran
    partial = tmp_path / ".out.partial"
    assert not out.exists() and len(list(partial.glob("model-*.safetensors"))) == 2
    assert not (partial / "ascend_manifest.json").exists()

    refused = run_cli("convert", src, out, *args)
    assert_one_line_error(refused, f"{partial}: an interrupted conversion is there", "--resume")

    resumed = run_cli("convert", src, out, *args, "--resume", "--json")
    assert resumed.code == 0, resumed.stderr
    assert len(json.loads(resumed.stdout)["resumed_shards"]) == 2
    assert tree_bytes(out) == tree_bytes(reference)
    assert not partial.exists()


def test_resume_with_other_options_is_refused(tmp_path, checkpoint):
    src = checkpoint("qwen2", "sharded")
    out = tmp_path / "out"
    args = ["--max-shard-size", "30KB", "--no-progress"]
    run_cli("convert", src, out, *args, env={"ASCENDKIT_FAILPOINT": "kill-after-shard:1"})
    result = run_cli("convert", src, out, *args, "--soc", "ascend310p", "--resume")
    assert_one_line_error(result, "left by a conversion with other inputs or options")


def test_a_damaged_finished_shard_is_redone_on_resume(tmp_path, checkpoint):
    src = checkpoint("qwen2", "sharded")
    out = tmp_path / "out"
    args = ["--max-shard-size", "30KB", "--no-progress"]
    run_cli("convert", src, out, *args, env={"ASCENDKIT_FAILPOINT": "kill-after-shard:2"})
    first = sorted((tmp_path / ".out.partial").glob("model-*.safetensors"))[0]
    first.write_bytes(first.read_bytes()[:100])
    resumed = run_cli("convert", src, out, *args, "--resume", "--json")
    assert resumed.code == 0 and len(json.loads(resumed.stdout)["resumed_shards"]) == 1
    assert run_cli("verify", out, "--source", src).code == 0


def test_verify_names_the_first_bad_tensor(tmp_path, checkpoint):
    out = tmp_path / "out"
    assert run_cli("convert", checkpoint("llama"), out, "--no-progress").code == 0
    manifest = json.loads((out / "ascend_manifest.json").read_text())
    name = "model.layers.1.mlp.up_proj.weight"
    manifest["tensors"][name]["sha256"] = "0" * 64
    (out / "ascend_manifest.json").write_text(json.dumps(manifest))
    result = run_cli("verify", out)
    assert_one_line_error(result, f"tensor {name} sha256 differs from the manifest", code=1)


def test_verify_detects_a_changed_byte(tmp_path, checkpoint):
    out = tmp_path / "out"
    assert run_cli("convert", checkpoint("llama"), out, "--no-progress").code == 0
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    assert_one_line_error(run_cli("verify", out), f"{weights}: sha256", "differ from the manifest", code=1)


def test_verify_logits(tmp_path, checkpoint):
    out = tmp_path / "out"
    src = checkpoint("qwen3")
    assert run_cli("convert", src, out, "--soc", "ascend910a", "--no-progress").code == 0
    result = run_cli("verify", out, "--source", src, "--logits", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["logits"]["ok"] and report["logits"]["top1_agreement"] == 1.0
    assert 0 < report["logits"]["max_abs_diff"] <= report["logits"]["tolerance"]


def test_arch_spec_adds_a_family(tmp_path, copy_checkpoint):
    from importlib import resources

    src = copy_checkpoint("llama")
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["MyLlamaForCausalLM"]
    (src / "config.json").write_text(json.dumps(config))
    spec = json.loads((resources.files("ascend_convert") / "specs" / "llama.json").read_text())
    spec.update(family="my-llama", architectures=["MyLlamaForCausalLM"])
    spec_file = tmp_path / "my-llama.json"
    spec_file.write_text(json.dumps(spec))
    out = tmp_path / "out"
    assert_one_line_error(run_cli("convert", src, out, "--no-progress"), "unsupported architecture MyLlamaForCausalLM")
    result = run_cli("convert", src, out, "--arch-spec", spec_file, "--no-progress")
    assert result.code == 0, result.stderr
    assert json.loads((out / "ascend_manifest.json").read_text())["source"]["family"] == "my-llama"


def test_arch_spec_with_an_unknown_role_is_refused(tmp_path, checkpoint):
    spec_file = tmp_path / "bad.json"
    spec_file.write_text(json.dumps({"family": "x", "architectures": ["X"], "tensors": {"attention": "a.weight"}}))
    result = run_cli("convert", checkpoint("llama"), tmp_path / "out", "--arch-spec", spec_file)
    assert_one_line_error(result, f"{spec_file}: unknown tensor role(s) ['attention']")


def test_a_tensor_the_spec_does_not_describe_is_refused(tmp_path, copy_checkpoint):
    src = copy_checkpoint("llama")
    tensors = load_file(src / "model.safetensors")
    tensors["model.layers.0.mystery.weight"] = tensors["model.norm.weight"].clone()
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    result = run_cli("convert", src, tmp_path / "out")
    assert_one_line_error(result, "tensor model.layers.0.mystery.weight is not part of a llama model")


@pytest.mark.parametrize("variant", ["safetensors", "sharded", "bin"])
def test_relative_paths(tmp_path, checkpoint, variant):
    import shutil

    shutil.copytree(checkpoint("llama", variant), tmp_path / "src")
    result = run_cli("convert", "src", "out", "--no-progress", cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert run_cli("verify", "out", "--source", "src", cwd=tmp_path).code == 0
    manifest = json.loads((tmp_path / "out" / "ascend_manifest.json").read_text())
    assert manifest["source"]["path"] == str((tmp_path / "src").resolve())

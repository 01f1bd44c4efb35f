"""Every bad input: a one-line error naming the file or tensor, a non-zero exit, no traceback,
and nothing left behind that looks like a finished conversion."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from conftest import assert_one_line_error, run_cli
from safetensors.torch import load_file, save_file


def convert(src: Path, out: Path, *extra: str):
    return run_cli("convert", src, out, "--no-progress", *extra)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not (out.parent / f".{out.name}.partial").exists()


def test_missing_directory(tmp_path):
    out = tmp_path / "out"
    result = convert(tmp_path / "nope", out)
    assert_one_line_error(result, f"{tmp_path / 'nope'}: no such file or directory")
    assert_nothing_written(out)


def test_directory_without_weights(tmp_path, checkpoint):
    src = tmp_path / "empty-model"
    src.mkdir()
    (src / "config.json").write_text((checkpoint("llama") / "config.json").read_text())
    out = tmp_path / "out"
    assert_one_line_error(convert(src, out), f"{src}: no weights found")
    assert_nothing_written(out)


def test_truncated_safetensors(tmp_path, copy_checkpoint):
    src = copy_checkpoint("llama")
    weights = src / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert_one_line_error(convert(src, out), f"{weights}: not a valid safetensors file")
    assert_nothing_written(out)


def test_corrupt_safetensors_header(tmp_path, copy_checkpoint):
    src = copy_checkpoint("llama")
    weights = src / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:8 + 12] = b"{not json!!!"
    weights.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert_one_line_error(convert(src, out), f"{weights}: not a valid safetensors file")
    assert_nothing_written(out)


def _index(src: Path) -> tuple[Path, dict]:
    path = src / "model.safetensors.index.json"
    return path, json.loads(path.read_text())


def test_index_names_a_missing_shard(tmp_path, copy_checkpoint):
    src = copy_checkpoint("llama", "sharded")
    index_path, index = _index(src)
    shard = sorted(set(index["weight_map"].values()))[-1]
    (src / shard).unlink()
    out = tmp_path / "out"
    assert_one_line_error(convert(src, out), f"{index_path}: shard {shard}", "is missing")
    assert_nothing_written(out)


def test_index_path_leaving_the_checkpoint(tmp_path, copy_checkpoint):
    src = copy_checkpoint("llama", "sharded")
    index_path, index = _index(src)
    name, shard = next(iter(index["weight_map"].items()))
    (src.parent / "x.safetensors").write_bytes((src / shard).read_bytes())  # it exists: only the path is wrong
    index["weight_map"][name] = "../x.safetensors"
    index_path.write_text(json.dumps(index))
    out = tmp_path / "out"
    assert_one_line_error(convert(src, out), f"{index_path}: shard path '../x.safetensors'",
                          "leaves the checkpoint directory")
    assert_nothing_written(out)


def test_same_tensor_in_two_shards(tmp_path, copy_checkpoint):
    src = copy_checkpoint("llama", "sharded")
    _, index = _index(src)
    shards = sorted(set(index["weight_map"].values()))
    first = load_file(src / shards[0])
    name = sorted(first)[0]
    last = load_file(src / shards[-1])
    last[name] = first[name]
    save_file(last, src / shards[-1], metadata={"format": "pt"})
    out = tmp_path / "out"
    assert_one_line_error(convert(src, out), f"tensor {name} is stored twice", shards[0], shards[-1])
    assert_nothing_written(out)


def test_same_tensor_in_two_files_without_index(tmp_path, copy_checkpoint):
    src = copy_checkpoint("llama")
    tensors = load_file(src / "model.safetensors")
    name = sorted(tensors)[0]
    save_file({name: tensors[name]}, src / "extra.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    assert_one_line_error(convert(src, out), f"tensor {name} is stored twice")
    assert_nothing_written(out)


class RunsCode:
    """A pickle payload that would create a file if it were ever unpickled with full pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bin_whose_pickle_would_run_code_is_refused_and_not_run(tmp_path, copy_checkpoint):
    src = copy_checkpoint("llama", "bin")
    marker = tmp_path / "PWNED"
    state = torch.load(src / "pytorch_model.bin", weights_only=True)
    state["payload"] = RunsCode(marker)
    torch.save(state, src / "pytorch_model.bin")
    assert not marker.exists()
    out = tmp_path / "out"
    result = convert(src, out)
    assert_one_line_error(result, f"{src / 'pytorch_model.bin'}: refused to unpickle")
    assert not marker.exists(), "the pickle's code ran"
    assert_nothing_written(out)


def test_missing_config(tmp_path, copy_checkpoint):
    src = copy_checkpoint("llama")
    (src / "config.json").unlink()
    out = tmp_path / "out"
    assert_one_line_error(convert(src, out), f"{src / 'config.json'}: missing")
    assert_nothing_written(out)


def test_invalid_config_json(tmp_path, copy_checkpoint):
    src = copy_checkpoint("llama")
    (src / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], ')
    out = tmp_path / "out"
    assert_one_line_error(convert(src, out), f"{src / 'config.json'}: invalid JSON")
    assert_nothing_written(out)


def test_config_missing_a_required_field(tmp_path, copy_checkpoint):
    src = copy_checkpoint("llama")
    config = json.loads((src / "config.json").read_text())
    del config["hidden_size"]
    (src / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert_one_line_error(convert(src, out), f"{src / 'config.json'}: missing or non-integer field(s) hidden_size")


def test_unknown_architecture_lists_the_supported_ones(tmp_path, copy_checkpoint):
    src = copy_checkpoint("llama")
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["GPTNeoXForCausalLM"]
    (src / "config.json").write_text(json.dumps(config))
    result = convert(src, tmp_path / "out")
    assert_one_line_error(result, "unsupported architecture GPTNeoXForCausalLM", "LlamaForCausalLM",
                          "QWenLMHeadModel", "Phi3ForCausalLM", "--arch-spec")


def test_unwritable_output_directory(tmp_path, checkpoint):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "out"
    result = convert(checkpoint("llama"), out)
    assert_one_line_error(result, f"{out}: cannot write the output directory")
    assert blocker.read_text() == "not a directory"


def test_existing_output_without_force_is_kept(tmp_path, checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_one_line_error(convert(checkpoint("llama"), out), f"{out}: already exists (use --force")
    assert (out / "keep.txt").read_text() == "precious"


def test_bf16_on_a_chip_without_it(tmp_path, checkpoint):
    out = tmp_path / "out"
    result = convert(checkpoint("llama"), out, "--soc", "ascend310p", "--dtype", "bfloat16")
    assert_one_line_error(result, "--dtype bfloat16: ascend310p", "has no bfloat16 support")
    assert_nothing_written(out)


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("convert", tmp_path / "nope", tmp_path / "out", "--debug")
    assert result.code != 0 and "Traceback" in result.stderr and "UserError" in result.stderr


def test_wrong_options_are_refused_before_torch_is_imported(checkpoint, tmp_path):
    """Options and their combinations are checked first: the error costs no torch import (2 s here)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from ascend_convert.cli import convert_command\n"
            "from ascend_common.cli_support import run_main\n"
            "try:\n"
            "    run_main(convert_command, sys.argv[1:])\n"
            "finally:\n"
            "    print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n")
    for options, message in [(("--quantize", "w8a16", "--calib", "x.txt"), "--calib is for --quantize w8a8"),
                             (("--max-shard-size", "5XB"), "--max-shard-size 5XB: not a size"),
                             (("--tp", "2"), "--tp and --nz are for --layout packed")]:
        proc = subprocess.run([sys.executable, "-c", code, str(checkpoint("llama")), str(tmp_path / "out"), *options],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines()[0].startswith(f"error: {message}"), proc.stderr
        assert proc.stderr.splitlines()[1:] == ["no torch"], proc.stderr
    assert_nothing_written(tmp_path / "out")

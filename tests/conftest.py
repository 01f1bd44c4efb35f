"""Shared test fixtures: tiny seeded checkpoints (built once per session), the real SmolLM2 GGUF,
and a helper that runs the real console scripts in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import fixtures as fx

#: `ascendkit bench` options for a run that takes seconds on a tiny fixture
BENCH_TINY = ("--prompt-len", "4", "--new-tokens", "3", "--no-progress", "--json")


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path, script: str = "ascendkit", env: dict | None = None, timeout: int = 300,
            cwd: Path | None = None) -> CliResult:
    """Run a console script as a user would: a real process, its exit code and both streams."""
    exe = shutil.which(script)
    assert exe, f"console script {script} is not installed (pip install -e .)"
    proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session", autouse=True)
def cpu_decode_attention_built() -> None:
    """Build the CPU decode-attention kernel once, before any test's subprocess wants it: processes
    that find it half-built wait on torch's lock file, which a process killed mid-build would leave."""
    from runtime.layers import cpu_attention

    cpu_attention.kernel()


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def checkpoint(fixture_root):
    """checkpoint(family, variant="safetensors") -> Path of a tiny seeded checkpoint."""
    def build(family: str, variant: str = "safetensors") -> Path:
        return fx.build(family, fixture_root, variant)
    return build


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from ascend_common.smollm2 import smollm2_gguf as find

    return find()


def _convert_smollm2(tmp_path_factory, gguf: Path, name: str, **options) -> Path:
    from ascend_convert.converter import ConvertOptions, convert

    out = tmp_path_factory.mktemp("smollm2") / name
    convert(gguf, out, ConvertOptions(**options))
    return out


@pytest.fixture(scope="session")
def smollm2_bf16(tmp_path_factory, smollm2_gguf) -> Path:
    """SmolLM2-135M converted once per session to a bf16 Ascend layout (what the runtime tests serve)."""
    return _convert_smollm2(tmp_path_factory, smollm2_gguf, "smollm2-bf16", soc="ascend910b", dtype="bfloat16")


@pytest.fixture(scope="session")
def smollm2_fp16(tmp_path_factory, smollm2_gguf) -> Path:
    """SmolLM2-135M converted once per session for the 310P (`--dtype auto`: fp16, the chip has no
    bf16): what the GGUF conversion tests read and the example 310P gate policy verifies."""
    return _convert_smollm2(tmp_path_factory, smollm2_gguf, "smollm2-ascend310p", soc="ascend310p")


@pytest.fixture
def copy_checkpoint(checkpoint, tmp_path):
    """A private, writable copy of a fixture checkpoint, for tests that damage it."""
    def make(family: str = "llama", variant: str = "safetensors") -> Path:
        dst = tmp_path / f"src-{family}-{variant}"
        shutil.copytree(checkpoint(family, variant), dst)
        return dst
    return make


def assert_one_line_error(result: CliResult, *fragments: str, code: int = 2) -> None:
    """A clean failure: the exit code, one `error:` line naming what is wrong, no traceback."""
    assert result.code == code, (result.code, result.stdout, result.stderr)
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def conversion_cache(root: Path, checkpoint) -> Callable[..., Path]:
    """get(family, variant="safetensors", **ConvertOptions) -> the fixture converted into `root`, once per
    distinct request (a module-scoped fixture holds one, so its tests share the conversions)."""
    from ascend_convert.converter import ConvertOptions, convert

    cache: dict[tuple, Path] = {}

    def get(family: str, variant: str = "safetensors", **options) -> Path:
        key = (family, variant, *sorted(options.items()))
        if key not in cache:
            out = root / "-".join([family, variant, *(str(v) for _, v in sorted(options.items()))])
            convert(checkpoint(family, variant), out, ConvertOptions(**options))
            cache[key] = out
        return cache[key]
    return get


def assert_resume_after_kill_is_byte_identical(src: Path, tmp_path: Path, args: list[str], weight_glob: str) -> None:
    """A conversion SIGKILLed after its 2nd weight file resumes (`--resume`: both files reused) into
    exactly the bytes of an uninterrupted run, and verifies against its source."""
    reference = tmp_path / "reference"
    assert run_cli("convert", src, reference, *args).code == 0
    assert len(list(reference.glob(weight_glob))) >= 3
    out = tmp_path / "out"
    killed = run_cli("convert", src, out, *args, env={"ASCENDKIT_FAILPOINT": "kill-after-shard:2"})
    assert killed.code == -9 and not out.exists()
    resumed = run_cli("convert", src, out, *args, "--resume", "--json")
    assert resumed.code == 0, resumed.stderr
    assert len(json.loads(resumed.stdout)["resumed_shards"]) == 2
    files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert all((reference / f).read_bytes() == (out / f).read_bytes() for f in files)
    assert run_cli("verify", out, "--source", src).code == 0


"""Shared test fixtures: tiny seeded checkpoints (built once per session), the real SmolLM2 GGUF,
and a helper that runs the real console scripts in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import fixtures as fx


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

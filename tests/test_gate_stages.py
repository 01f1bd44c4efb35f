"""The stage runner `ascendkit gate` and `ascendkit demo` share: its step lines, its times, and what an
exception in a stage becomes in each pipeline (fast: no model is loaded)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from ascend_common.errors import UserError
from ascendkit.stage_runner import ConsoleSteps, LogLines, StageError, StageRunner


def test_gate_log_lines_and_a_stage_error_in_one_line():
    said: list[str] = []
    seconds: dict[str, float] = {}
    runner = StageRunner(3, LogLines(said.append), errors="stage", seconds=seconds)
    assert runner.run("doctor", lambda: 42) == 42
    with pytest.raises(StageError) as raised:
        runner.run("convert", lambda: (_ for _ in ()).throw(UserError("out: already exists\nsecond line")))
    assert str(raised.value) == "convert: out: already exists" and raised.value.stage == "convert"
    with pytest.raises(StageError) as raised:
        runner.run("smoke", lambda: {}["missing"])
    assert str(raised.value) == "smoke: KeyError: 'missing'"
    assert said == ["[1/3] doctor", "[2/3] convert", "[3/3] smoke"]
    assert set(seconds) == {"doctor", "convert", "smoke"}  # an interrupted stage's time included


def test_errors_raise_lets_the_exception_through():
    runner = StageRunner(1, LogLines(lambda line: None))
    with pytest.raises(UserError, match="bad input"):
        runner.run("convert", lambda: (_ for _ in ()).throw(UserError("bad input")))


@pytest.mark.parametrize("live", [False, True])
def test_demo_steps_print_a_tick_and_the_time(live):
    stream = io.StringIO()
    runner = StageRunner(2, ConsoleSteps(Console(file=stream, width=160, force_terminal=False), live))
    runner.run("check_ops: runtime model", lambda: None)
    runner.run("benchmark", lambda: None, own_progress=True)
    lines = stream.getvalue().splitlines()
    if live:  # the spinner's label is gone when the step ends: its ✓ line says it again with the time
        assert lines[0].startswith("✓ [1/2] check_ops: runtime model (") and lines[0].endswith(" s)")
        assert lines[1] == "[2/2] benchmark" and lines[2].startswith("✓     ")
    else:
        assert lines[0] == "[1/2] check_ops: runtime model" and lines[1].startswith("✓     ")
        assert lines[2] == "[2/2] benchmark" and lines[3].startswith("✓     ")
    assert list(runner.seconds) == ["check_ops: runtime model", "benchmark"]

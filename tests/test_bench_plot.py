"""`ascendkit bench --sweep --plot FILE.png`: the drawing on hand-built sweeps (a valid image, written
atomically, with or without a recommendation, gaps where a value is missing) and the CLI's mistakes,
which must be one-line errors before any benchmarking. One end-to-end run on the tiny fixture with
the smallest sizes checks the wiring; the picture's looks are checked by eye, not here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli

from runtime.evaluation.bench.sweep_plot import plot_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _system(tok_s: float, p50: float | None, p99: float | None) -> dict:
    return {"throughput_tok_s": tok_s, "tpot_ms": {"p50": p50, "p99": p99, "mean": p50, "std": 0.0},
            "ttft_ms": {"p50": 5.0, "p99": 6.0, "mean": 5.0, "std": 0.1}, "memory_gb": 0.5}


def _sweep(recommended: int | None) -> dict:
    sizes = [
        {"batch": 1, "runtime": _system(20, 40, 55), "hf": _system(9, 90, 120), "ratios": {"hf": {"throughput": 2.2}}},
        {"batch": 2, "runtime": _system(35, None, None), "hf": _system(16, 95, 130), "ratios": {}},  # no TPOT
        {"batch": 4, "runtime": _system(60, 70, 95), "ratios": {}},  # transformers did not run
        {"batch": 8, "runtime": _system(80, 130, 180), "ratios": {}},
    ]
    rec = ({"max_num_seqs": recommended, "throughput_tok_s": 60, "tpot_p50_ms": 70, "reason": "best under"}
           if recommended is not None else {"max_num_seqs": None, "reason": "even a batch of 1 is above"})
    return {"tpot_ms_ceiling": 100.0, "prompt_len": 8, "new_tokens": 4, "sizes": sizes, "recommended": rec}


def _assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > 0 and height > 0
    assert [p.name for p in path.parent.iterdir()] == [path.name], "a temporary file was left behind"


@pytest.mark.parametrize("recommended", [4, None])
def test_plot_is_a_png_written_in_one_piece(tmp_path, recommended):
    path = tmp_path / "sweep.png"
    plot_sweep(_sweep(recommended), path, "tiny fixture")
    _assert_png(path)


def test_plot_replaces_an_existing_file(tmp_path):
    path = tmp_path / "sweep.png"
    path.write_bytes(b"stale")
    plot_sweep(_sweep(1), path, "tiny fixture")
    _assert_png(path)


def test_plot_without_sweep_is_a_one_line_error(tmp_path):
    result = run_cli("bench", tmp_path, "--plot", tmp_path / "sweep.png")
    assert_one_line_error(result, "--plot draws the sweep: add --sweep")
    assert not (tmp_path / "sweep.png").exists()
    result = run_cli("bench", tmp_path, "--serve", "--sweep", "--plot", tmp_path / "sweep.png")
    assert_one_line_error(result, "--plot draws the batch-size sweep, not the serving benchmark")


def test_plot_into_a_missing_directory_is_a_one_line_error(tmp_path):
    target = tmp_path / "nope" / "sweep.png"
    result = run_cli("bench", tmp_path, "--sweep", "--plot", target)
    assert_one_line_error(result, f"no such directory {tmp_path / 'nope'}")


def test_plot_without_matplotlib_is_a_one_line_error(tmp_path):
    """A matplotlib that cannot be imported (a shadowing package that raises, as a missing one would)."""
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    result = run_cli("bench", tmp_path, "--sweep", "--plot", tmp_path / "sweep.png",
                     env={"PYTHONPATH": str(shadow.parent)})
    assert_one_line_error(result, "--plot needs matplotlib: pip install 'ascend-deploy-kit[plot]'")


def test_sweep_plot_end_to_end(checkpoint, tmp_path):
    path = tmp_path / "sweep.png"
    result = run_cli("bench", checkpoint("llama"), "--sweep", "--sweep-sizes", "1,2", "--repeat", "1",
                     "--new-tokens", "4", "--prompt-len", "8", "--baselines", "", "--no-progress", "--json",
                     "--plot", path)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)  # stdout stays pure JSON: the plot's note goes to stderr
    assert report["sweep"]["plot"] == str(path)
    assert f"wrote plot {path}" in result.stderr
    _assert_png(path)

"""The README's table "Measured on this machine" is what `benchmarks/readme_table.py` renders from the
reports it kept in `benchmarks/results/`: a figure edited by hand, or a kept report changed without
rendering again, fails here. No benchmark runs (they take an hour); the kept reports are real ones."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "readme_table.py"


def _table_module():
    spec = importlib.util.spec_from_file_location("readme_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _readme_block(text: str) -> str:
    table = _table_module()
    found = re.search(re.escape(table.BEGIN) + r"\n(.*)\n" + re.escape(table.END), text, re.S)
    assert found, "README.md has no readme_table.py markers"
    return found.group(1)


def test_the_readme_table_is_the_rendering_of_the_kept_reports():
    table = _table_module()
    assert _readme_block((ROOT / "README.md").read_text()) == table.render()


def test_every_row_names_its_command_and_a_kept_report_made_by_that_command():
    table = _table_module()
    for row in table.ROWS:
        kept = json.loads(table._kept(row).read_text())
        assert kept["command"] == row.command
        assert set(kept) >= {"commit", "date", "torch", "transformers", "seconds", "report"}


def _render_in_a_copy(tmp_path: Path, readme: str) -> tuple[Path, subprocess.CompletedProcess]:
    """`readme_table.py --render-only` in a copy of the script and the kept reports, on `readme`."""
    copy = tmp_path / "repo"
    if not copy.exists():
        (copy / "benchmarks").mkdir(parents=True)
        shutil.copy2(SCRIPT, copy / "benchmarks" / SCRIPT.name)
        shutil.copytree(ROOT / "benchmarks" / "results", copy / "benchmarks" / "results")
    (copy / "README.md").write_text(readme)
    result = subprocess.run([sys.executable, str(copy / "benchmarks" / SCRIPT.name), "--render-only",
                             "--workdir", str(tmp_path / "w")], capture_output=True, text=True, check=False)
    return copy, result


def test_render_only_rewrites_the_table_and_a_missing_report_names_its_command(tmp_path):
    """`--render-only` puts back a table that was edited by hand; with one report gone it stops,
    naming the command that makes it, and leaves the README as it was."""
    original = (ROOT / "README.md").read_text()
    edited = original.replace("| check_ops on", "| check_ops (edited by hand) on")
    assert edited != original
    copy, result = _render_in_a_copy(tmp_path, edited)
    readme = copy / "README.md"
    assert result.returncode == 0, result.stderr
    assert readme.read_text() == original

    (copy / "benchmarks" / "results" / "bench_tp.json").unlink()
    _, result = _render_in_a_copy(tmp_path, edited)
    assert result.returncode == 1
    assert result.stderr.strip() == ("no kept report for: python benchmarks/bench_tp.py "
                                     "(run python benchmarks/readme_table.py --only '<that command>')")
    assert readme.read_text() == edited


def test_a_readme_without_the_markers_is_refused(tmp_path):
    copy, result = _render_in_a_copy(tmp_path, "no markers here\n")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"{copy / 'README.md'}: no <!-- readme_table.py: begin --> ... "
                                     f"<!-- readme_table.py: end --> markers around the table")
    assert (copy / "README.md").read_text() == "no markers here\n"


def _render_with_hash_seed(script: Path, seed: int) -> str:
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('readme_table', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); sys.modules['readme_table'] = m; spec.loader.exec_module(m); "
            "print(m.render())")
    return subprocess.run([sys.executable, "-c", code, str(script)], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout


def test_the_rendering_is_the_same_in_every_process():
    """The runs under the table come in the time order of their reports, not in a set's, whose order
    changes with the string hash seed of each process (two runs made on one day once swapped places)."""
    assert len({_render_with_hash_seed(SCRIPT, seed) for seed in range(6)}) == 1

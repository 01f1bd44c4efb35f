"""Report files a user names wrongly (a directory that is not there, a directory for the file): one
line naming the option and the path, before any work, and nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli

from ascend_common.atomic_write import write_text_atomic
from ascend_common.errors import UserError

COMMANDS = [
    ("check-ops --output", lambda model, path: ("check-ops", "--model", model, "--output", path)),
    ("check-ops --summary-file", lambda model, path: ("check-ops", "--model", model, "--summary-file", path)),
    ("smoke --output", lambda model, path: ("smoke", model, "--output", path)),
    ("bench --output", lambda model, path: ("bench", model, "--output", path)),
    ("manifest build --out", lambda model, path: ("manifest", "build", "--op-plugin", model, "--out", path)),
    ("demo --report", lambda model, path: ("demo", "--model", model, "--report", path)),
]


@pytest.mark.parametrize("name,args", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_missing_directory_is_refused_before_the_work(name, args, checkpoint, tmp_path):
    option = name.split()[-1]
    target = tmp_path / "nope" / "report.json"
    result = run_cli(*args(checkpoint("llama"), target))
    assert_one_line_error(result, f"error: {option} {target}: no such directory {tmp_path / 'nope'}")
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("name,args", COMMANDS[:3], ids=[c[0] for c in COMMANDS[:3]])
def test_a_directory_is_not_a_file_name(name, args, checkpoint, tmp_path):
    option = name.split()[-1]
    result = run_cli(*args(checkpoint("llama"), tmp_path))
    assert_one_line_error(result, f"error: {option} {tmp_path}: is a directory, not a file name")


def test_a_failed_atomic_write_names_the_file_and_leaves_no_temp(tmp_path):
    (tmp_path / "plain").write_text("a file, not a directory")
    with pytest.raises(UserError, match=r"/plain/report\.json: cannot write \(Not a directory\)$"):
        write_text_atomic(tmp_path / "plain" / "report.json", "{}")
    target = tmp_path / "report.json"
    target.mkdir()
    with pytest.raises(UserError, match=r"/report\.json: cannot write \(Is a directory\)$"):
        write_text_atomic(target, "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "report.json"]  # no report.json.tmp left


def test_the_atomic_write_replaces_the_old_file_whole(tmp_path):
    target = Path(tmp_path / "report.json")
    target.write_text("old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]

"""`ascendkit doctor`: this machine (no NPU) says so and exits 0; the CANN toolkit is found from the
environment; `npu-smi info` is parsed and an unhealthy NPU is a warning (exit 1); the version rules
flag torch_npu built for another torch and CANN older than torch_npu needs."""

from __future__ import annotations

import json
import os
import stat

import pytest
from conftest import run_cli

from ascendkit.doctor import cann_key, torch_base, version_checks

# `npu-smi info` as an Atlas 800T A2 prints it (recorded; no NPU here), with card 1 unhealthy.
NPU_SMI_INFO = """\
+------------------------------------------------------------------------------------------------+
| npu-smi 23.0.rc3                 Version: 23.0.rc3                                             |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     910B3               | OK            | 93.4        35                0    / 0             |
| 0                         | 0000:C1:00.0  | 0           0    / 0          3380 / 65536         |
+===========================+===============+====================================================+
| 1     910B3               | Warning       | 90.1        37                0    / 0             |
| 0                         | 0000:C2:00.0  | 0           0    / 0          3380 / 65536         |
+===========================+===============+====================================================+
"""


def test_a_machine_without_an_npu_says_so_and_exits_0():
    env = {k: "" for k in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH")}
    result = run_cli("doctor", "--json", env=env)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["has_npu"] is False and report["warnings"] == 0
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["torch_npu"]["value"] == "not installed" and checks["NPU"]["value"] == "none on this machine"
    text = run_cli("doctor", env=env)
    assert text.code == 0 and "No Ascend NPU on this machine" in text.stdout


def test_cann_npu_smi_and_variables_are_read(tmp_path):
    toolkit = tmp_path / "ascend-toolkit" / "latest"
    (toolkit / "x86_64-linux").mkdir(parents=True)
    (toolkit / "x86_64-linux" / "ascend_toolkit_install.info").write_text("package_name=Ascend-cann-toolkit\n"
                                                                         "version=8.0.RC2\narch=x86_64\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "npu-smi"
    tool.write_text(f"#!/bin/sh\ncat <<'END'\n{NPU_SMI_INFO}END\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    env = {"ASCEND_TOOLKIT_HOME": str(toolkit), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "ASCEND_VISIBLE_DEVICES": "0,1", "ASCEND_PARALLEL_STREAM_NUM": "4"}
    result = run_cli("doctor", "--json", env=env)
    assert result.code == 1, result.stderr  # NPU 1 is unhealthy
    report = json.loads(result.stdout)
    assert report["has_npu"] is True
    assert report["npus"] == [{"npu": 0, "name": "910B3", "health": "OK"}, {"npu": 1, "name": "910B3", "health": "Warning"}]
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["CANN"]["value"] == f"8.0.RC2 ({toolkit})"
    assert checks["NPU 1"] == {"name": "NPU 1", "value": "910B3 health Warning", "level": "warn",
                               "detail": "npu-smi reports it unhealthy"}
    assert checks["ASCEND_VISIBLE_DEVICES"]["value"] == "0,1"
    assert "read by nothing in this toolkit" in checks["ASCEND_PARALLEL_STREAM_NUM"]["detail"]


@pytest.mark.parametrize(("torch", "npu", "cann", "levels", "detail"), [
    ("2.13.0+cpu", "2.5.1.post1", "8.2.RC1", ["warn", "ok"], "torch 2.13.0+cpu is installed: install torch==2.5.1"),
    ("2.5.1+cpu", "2.5.1.post1", "8.1.RC1", ["ok", "warn"], "CANN 8.1.RC1 is older than torch_npu 2.5.1.post1 needs"),
    ("2.5.1", "2.5.1.post1", "8.3.RC1", ["ok", "ok"], ""),
    ("2.7.1", "2.7.1.post8", None, ["ok", "warn"], "no CANN toolkit found: source set_env.sh (ASCEND_TOOLKIT_HOME)"),
    ("2.14.0", "2.14.0", "9.1.0", ["ok", "info"], "check Ascend/pytorch COMPATIBILITY.md for the CANN it needs"),
])
def test_version_rules(torch, npu, cann, levels, detail):
    checks = version_checks(torch, npu, cann)
    assert [c.level for c in checks] == levels
    assert detail == next((c.detail for c in checks if c.level != "ok"), "")


def test_version_orders():
    assert torch_base("2.5.1.post1") == torch_base("2.5.1+cpu") == torch_base("2.5.1rc2") == "2.5.1"
    ordered = ["8.0.RC2", "8.0.RC3", "8.0.0", "8.1.RC1", "8.2.RC1", "8.3.RC1", "8.5.0", "9.0.0", "9.1.0"]
    assert sorted(ordered, key=cann_key) == ordered

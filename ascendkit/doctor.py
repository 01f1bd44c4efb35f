"""`ascendkit doctor`: what a deployment needs to know about this machine, and what does not match.

It reports Python, torch, torch_npu and the torch it was built for, the CANN toolkit (from
`ASCEND_TOOLKIT_HOME` / `ASCEND_HOME_PATH`), `npu-smi info` when the tool is there, and the Ascend
environment variables; then it warns for each mismatch: torch_npu built for another torch, CANN
older than the torch_npu release needs, an NPU whose health is not OK, a variable the runtime reads
set to something it cannot use. Exit 1 on a warning, 0 otherwise. A machine without an NPU (no
torch_npu, no npu-smi, no CANN) is said to be one, plainly, with exit 0: convert and check_ops run
anywhere.

torch_npu's package version is its PyTorch's (`2.5.1.post1` is built for torch 2.5.1); the CANN each
release needs is the compatibility table of Ascend/pytorch (COMPATIBILITY.md), as far as it is
listed below — a release not listed is reported without a CANN check.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

#: torch_npu package version → the CANN release it is built against (Ascend/pytorch COMPATIBILITY.md).
TORCH_NPU_CANN = {
    "2.12.0": "9.1.0", "2.11.0": "9.1.0", "2.10.0.post4": "9.1.0", "2.9.0.post6": "9.1.0", "2.7.1.post8": "9.1.0",
    "2.10.0": "9.0.0", "2.9.0.post2": "9.0.0", "2.8.0.post4": "9.0.0", "2.7.1.post4": "9.0.0",
    "2.9.0": "8.5.0", "2.8.0.post2": "8.5.0", "2.7.1.post2": "8.5.0", "2.6.0.post5": "8.5.0",
    "2.8.0": "8.3.RC1", "2.7.1": "8.3.RC1", "2.6.0.post3": "8.3.RC1", "2.1.0.post17": "8.3.RC1",
    "2.6.0": "8.2.RC1", "2.5.1.post1": "8.2.RC1", "2.1.0.post13": "8.2.RC1",
    "2.5.1": "8.1.RC1", "2.4.0.post4": "8.1.RC1", "2.3.1.post6": "8.1.RC1", "2.1.0.post12": "8.1.RC1",
}
#: The Ascend variables a deployment sets, and what this toolkit does with each.
ASCEND_VARIABLES = {
    "ASCEND_VISIBLE_DEVICES": "the card(s) the runtime uses (copied to ASCEND_RT_VISIBLE_DEVICES before torch_npu loads)",
    "ASCEND_RT_VISIBLE_DEVICES": "the cards the CANN runtime exposes",
    "ASCEND_OP_FUSION": "1: the runtime runs RMSNorm/RoPE/SwiGLU as torch_npu fused kernels",
    "ASCEND_PARALLEL_STREAM_NUM": "read by nothing in this toolkit (a MindIE setting)",
    "ASCEND_TOOLKIT_HOME": "the CANN toolkit (set by set_env.sh)",
    "ASCEND_HOME_PATH": "the CANN toolkit (set by set_env.sh)",
    "ASCEND_OPP_PATH": "CANN's operator packages",
    "ASCEND_AICPU_PATH": "CANN's AI CPU kernels",
}
_NPU_ROW = re.compile(r"^\|\s*(\d+)\s+([\w.-]+)\s*\|\s*([\w-]+)\s*\|")


@dataclass
class Check:
    name: str
    value: str
    level: str = "ok"  # ok | info | warn
    detail: str = ""


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)
    npus: list[dict] = field(default_factory=list)
    has_npu: bool = False

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.level == "warn"]

    def to_dict(self) -> dict:
        return {"has_npu": self.has_npu, "npus": self.npus, "checks": [asdict(c) for c in self.checks],
                "warnings": len(self.warnings)}


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def torch_base(version: str) -> str:
    """`2.5.1.post1`, `2.5.1+cpu`, `2.6.0rc1` → `2.5.1`, `2.5.1`, `2.6.0`."""
    match = re.match(r"(\d+\.\d+\.\d+)", version)
    return match.group(1) if match else version


def cann_key(version: str) -> tuple[int, ...]:
    """An order for CANN versions: 8.0.RC2 < 8.0.RC3 < 8.0.0 < 8.1.RC1 (an RC precedes its release)."""
    parts = version.split(".")
    nums = [int(p) for p in parts[:2] if p.isdigit()]
    third = parts[2] if len(parts) > 2 else "0"
    rc = re.fullmatch(r"RC(\d+)", third, re.IGNORECASE)
    tail = (0, int(rc.group(1))) if rc else (1, int(third) if third.isdigit() else 0)
    return (*nums, *tail)


def version_checks(torch_version: str | None, torch_npu_version: str | None, cann_version: str | None) -> list[Check]:
    """The mismatch rules, on version strings alone."""
    checks = []
    if torch_npu_version is not None:
        wants = torch_base(torch_npu_version)
        if torch_version is not None and torch_base(torch_version) != wants:
            checks.append(Check("torch_npu ↔ torch", f"{torch_npu_version} needs torch {wants}", "warn",
                                f"torch {torch_version} is installed: install torch=={wants}"))
        else:
            checks.append(Check("torch_npu ↔ torch", f"{torch_npu_version} needs torch {wants}"))
        needs = TORCH_NPU_CANN.get(torch_npu_version)
        if needs is None:
            checks.append(Check("torch_npu ↔ CANN", f"{torch_npu_version}: not in the compatibility table", "info",
                                "check Ascend/pytorch COMPATIBILITY.md for the CANN it needs"))
        elif cann_version is None:
            checks.append(Check("torch_npu ↔ CANN", f"needs CANN {needs}", "warn",
                                "no CANN toolkit found: source set_env.sh (ASCEND_TOOLKIT_HOME)"))
        elif cann_key(cann_version) < cann_key(needs):
            checks.append(Check("torch_npu ↔ CANN", f"needs CANN {needs}", "warn",
                                f"CANN {cann_version} is older than torch_npu {torch_npu_version} needs"))
        else:
            checks.append(Check("torch_npu ↔ CANN", f"needs CANN {needs}, found {cann_version}"))
    return checks


def cann_version(env: dict[str, str]) -> tuple[str | None, str | None]:
    """(toolkit home, version) from ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH and the files CANN installs."""
    home = env.get("ASCEND_TOOLKIT_HOME") or env.get("ASCEND_HOME_PATH")
    if not home:
        return None, None
    root = Path(home)
    candidates = [root / "version.cfg", root / "ascend_toolkit_install.info",
                  *sorted(root.glob("*/ascend_toolkit_install.info")), root / "compiler" / "version.info",
                  root / "runtime" / "version.info"]
    for path in candidates:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        match = re.search(r"^\s*(?:version|Version|toolkit_running_version)\s*=\s*\[?([\w.]+)", text, re.MULTILINE)
        if match:
            return home, match.group(1)
    return home, None


def npu_smi(env: dict[str, str]) -> tuple[list[dict], str | None]:
    """The NPUs `npu-smi info` lists (id, name, health), or ([], why not)."""
    exe = shutil.which("npu-smi", path=env.get("PATH"))
    if exe is None:
        return [], "npu-smi not found"
    try:
        out = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"npu-smi info failed ({exc})"
    if out.returncode != 0:
        return [], f"npu-smi info exited {out.returncode}: {(out.stderr or out.stdout).strip()[:200]}"
    rows = []
    for line in out.stdout.splitlines():
        match = _NPU_ROW.match(line)
        if match:
            rows.append({"npu": int(match.group(1)), "name": match.group(2), "health": match.group(3)})
    return rows, None


def diagnose(env: dict[str, str] | None = None) -> DoctorReport:
    env = dict(os.environ if env is None else env)
    report = DoctorReport()
    checks = report.checks
    checks.append(Check("python", platform.python_version()))
    torch_version, npu_version = _installed("torch"), _installed("torch-npu") or _installed("torch_npu")
    checks.append(Check("torch", torch_version or "not installed", "ok" if torch_version else "warn"))
    checks.append(Check("torch_npu", npu_version or "not installed", "ok" if npu_version else "info"))
    home, cann = cann_version(env)
    checks.append(Check("CANN", f"{cann or 'version unknown'} ({home})" if home else "not found",
                        "ok" if cann else "info", "" if home else "ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH unset"))
    npus, why = npu_smi(env)
    report.npus = npus
    checks.append(Check("npu-smi", f"{len(npus)} NPU(s): " + ", ".join(f"{n['npu']} {n['name']} {n['health']}"
                                                                         for n in npus) if npus else why or "no NPU",
                        "ok" if npus else "info"))
    for npu in npus:
        if npu["health"].upper() != "OK":
            checks.append(Check(f"NPU {npu['npu']}", f"{npu['name']} health {npu['health']}", "warn",
                                "npu-smi reports it unhealthy"))
    checks.extend(version_checks(torch_version, npu_version, cann))
    for name, meaning in ASCEND_VARIABLES.items():
        if name in env:
            checks.append(Check(name, env[name], "ok", meaning))
    fusion = env.get("ASCEND_OP_FUSION")
    if fusion not in (None, "0", "1"):
        checks.append(Check("ASCEND_OP_FUSION", fusion, "warn", "expected 0 or 1"))
    report.has_npu = bool(npu_version or npus or cann)
    if not report.has_npu:
        checks.append(Check("NPU", "none on this machine", "info",
                            "no torch_npu, no npu-smi, no CANN: convert and check_ops run here; serving on an "
                            "NPU needs one (the runtime serves on the CPU or CUDA meanwhile)"))
    return report


def print_report(report: DoctorReport, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ascendkit doctor", show_header=True)
    for column in ("check", "value", "", "detail"):
        table.add_column(column)
    marks = {"ok": "[green]ok[/]", "info": "[blue]info[/]", "warn": "[yellow]warn[/]"}
    for check in report.checks:
        table.add_row(check.name, check.value, marks[check.level], check.detail)
    console = Console()
    console.print(table)
    if report.warnings:
        console.print(f"[yellow]{len(report.warnings)} warning(s)[/]: " + "; ".join(
            f"{c.name}: {c.detail or c.value}" for c in report.warnings))
    elif not report.has_npu:
        console.print("No Ascend NPU on this machine: nothing to mismatch.")

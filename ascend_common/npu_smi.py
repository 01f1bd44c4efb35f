"""The NPUs' memory in use, from `npu-smi info`: the figure a deployment on this host shows when its
server exposes none (vLLM's /metrics has KV-cache usage, not bytes).

`npu-smi info` prints two rows per chip; the second ends with `Memory-Usage(MB)` and, on chips with
HBM (910A/910B), `HBM-Usage(MB)`, each as `used / total`. The last pair of the row is the memory the
chip's work lives in (HBM where there is HBM), so that is the one summed.
"""

from __future__ import annotations

import re
import shutil
import subprocess

_NPU_ROW = re.compile(r"^\|\s*(\d+)\s+([\w.-]+)\s*\|\s*([\w-]+)\s*\|")  # doctor reads the same rows
_PAIR = re.compile(r"(\d+)\s*/\s*(\d+)")


def parse_memory_used_mb(table: str) -> list[int]:
    """Each chip's memory in use (MB), in the order `npu-smi info` lists them."""
    used: list[int] = []
    lines = table.splitlines()
    for i, line in enumerate(lines):
        if not _NPU_ROW.match(line) or i + 1 >= len(lines):
            continue
        pairs = _PAIR.findall(lines[i + 1])
        if pairs:
            used.append(int(pairs[-1][0]))
    return used


def npu_memory_used_bytes() -> int | None:
    """The memory in use on every NPU of this host, or None (no npu-smi, or it failed)."""
    exe = shutil.which("npu-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    used = parse_memory_used_mb(out.stdout) if out.returncode == 0 else []
    return sum(used) * 2**20 if used else None

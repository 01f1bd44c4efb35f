"""Wall time and peak RSS of a command run in a fresh child process: what every benchmark here measures.

Each system is measured the same way, from spawn to exit of its own child (so interpreter start
and imports count, as a user pays them), with the peak RSS summed over the child's whole process
tree (a converter or server may fork workers); the kernel's ``ru_maxrss`` is kept as a cross-check
for spikes shorter than a poll.  ``warm`` and ``drop`` put every run on the same footing: the
source in the page cache before, the output gone and synced after.  Sizes: MB = 10**6 B,
GB = 10**9 B.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

MB = 10**6
GB = 10**9
POLL_S = 0.02


def proc_rss(pid: int) -> tuple[int, int, int]:
    """(VmRSS, RssAnon, RssFile + RssShmem) in bytes from /proc/<pid>/status; zeros if it is gone."""
    vals = {"VmRSS:": 0, "RssAnon:": 0, "RssFile:": 0, "RssShmem:": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(None, 1)[0] if line else ""
                if key in vals:
                    vals[key] = int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return vals["VmRSS:"], vals["RssAnon:"], vals["RssFile:"] + vals["RssShmem:"]


@dataclass
class Run:
    """One measured run of one system on one case."""

    wall_s: float
    peak_rss: int  # max over polls of the tree's summed VmRSS
    peak_anon: int  # anonymous part of that peak sample
    peak_file: int  # file-backed (mmap / page cache mapped in) part of that peak sample
    ru_maxrss: int  # kernel: largest RSS of the child (or a descendant it waited for)
    samples: int
    returncode: int
    out_bytes: int
    log: str = ""


def measure(cmd: list[str], log_path: Path, env: dict[str, str]) -> Run:
    """Run ``cmd`` with its output in ``log_path``, polling its tree's RSS every POLL_S until it exits."""
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        root = psutil.Process(proc.pid)
        peak = (0, 0, 0)
        samples = 0
        status = rusage = None
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                wall = time.perf_counter() - t0
                break
            pids = [proc.pid]
            try:
                pids += [c.pid for c in root.children(recursive=True)]
            except psutil.Error:
                pass
            tree = [proc_rss(p) for p in pids]
            total = tuple(sum(col) for col in zip(*tree))
            if total[0] > peak[0]:
                peak = total
            samples += 1
            time.sleep(POLL_S)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(wall, peak[0], peak[1], peak[2], rusage.ru_maxrss * 1024, samples, proc.returncode, 0)


def warm(files: list[Path]) -> None:
    """`cat FILES > /dev/null`: every system starts with the source in the page cache."""
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)

def drop(out: Path) -> None:
    """Remove an output and the converter's leftovers beside it, then ``sync`` so the next run starts clean."""
    shutil.rmtree(out, ignore_errors=True)
    for stale in out.parent.glob(f".{out.name}*"):  # a converter's .partial / .old-* leftovers
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    os.sync()

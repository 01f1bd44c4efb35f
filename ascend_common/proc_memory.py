"""Memory figures Linux's /proc gives in `Name:   N kB` lines: a process's peak resident set (VmHWM in
/proc/PID/status) and the memory free for a new job (MemAvailable in /proc/meminfo). None elsewhere."""

from __future__ import annotations


def kib_field(path: str, name: str) -> int | None:
    """The `name:` line of a /proc file in bytes, or None (no such file or line)."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss(pid: int | str = "self") -> int | None:
    """A process's peak resident bytes since it started (or since its last clear_refs reset)."""
    return kib_field(f"/proc/{pid}/status", "VmHWM")


def available_memory() -> int | None:
    """Bytes the kernel says a new job can have without swapping."""
    return kib_field("/proc/meminfo", "MemAvailable")

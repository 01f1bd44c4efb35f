"""Memory a benchmarked system uses: bytes in use, and the peak during a run above the level it
started from — the allocator's figures on CUDA/NPU, the process's RSS from /proc on CPU.

The peak comes from the kernel's VmHWM where it can be reset (one read, no overhead during the run),
else from a thread sampling RSS every 2 ms; torch is imported only for an accelerator.
"""

from __future__ import annotations

import gc
import os
import threading
from typing import Any

from ascend_common.proc_memory import peak_rss


def _rss() -> int | None:
    """The process's resident bytes now: /proc without a dependency, psutil elsewhere, else None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss


def _hwm() -> int | None:
    """The process's peak resident bytes since the last reset (Linux's VmHWM), or None."""
    return peak_rss()


def _reset_hwm() -> bool:
    """Linux resets the peak RSS (VmHWM) to the current RSS when 5 is written to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Bytes in use, and the peak above the level at `start()`: the allocator's on CUDA/NPU; on CPU
    the process's RSS (its kernel-kept peak where it can be reset, else sampled every 2 ms)."""

    def __init__(self, device_kind: str) -> None:
        self.kind = device_kind
        self._base = 0
        self._peak = 0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._hwm = False

    def _device(self) -> Any:
        """torch's module for the accelerator (torch.cuda, torch.npu): imported only when metered."""
        import torch

        return getattr(torch, self.kind)

    def current(self) -> int | None:
        gc.collect()
        if self.kind != "cpu":
            self._device().synchronize()
            return self._device().memory_allocated()
        return _rss()

    def start(self) -> None:
        gc.collect()
        if self.kind != "cpu":
            dev = self._device()
            dev.synchronize()
            dev.reset_peak_memory_stats()
            self._base = dev.memory_allocated()
            return
        self._base = _rss() or 0
        self._peak = self._base
        self._hwm = _reset_hwm() and _hwm() is not None
        if not self._hwm and _rss() is not None:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _rss() or 0)

    def stop(self) -> int | None:
        if self.kind != "cpu":
            dev = self._device()
            dev.synchronize()
            return dev.max_memory_allocated() - self._base
        if self._hwm:
            return max(0, (_hwm() or 0) - self._base)
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        self._thread = None
        return max(0, max(self._peak, _rss() or 0) - self._base)


"""Give freed memory back to the operating system between the tensors of a streamed job.

`convert` holds one tensor at a time, but glibc's allocator keeps what it frees: it raises its mmap
threshold after the first large free (up to 32 MiB), so every later tensor of a few MiB — an MoE
expert's 3 MiB, tens of thousands of them in a large model — is carved from the heap, and the heap's
freed pages stay counted in the process's RSS. On a 1.28 GB Qwen3-MoE checkpoint
(benchmarks/bench_quant_moe.py) plain `convert` peaked at 886 MB resident and `--quantize
w8a8-dynamic` at 484 MB; trimming after every 64 MiB written (`write_loop.TRIM_EVERY`), 407 and 422
MB at the same speed. Trimming after every tensor cost the quantized conversion 30% (its float32
temporaries faulted back in each time). `malloc_trim` is glibc's; where there is none (musl, macOS,
Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # no glibc
        return None


def release_freed_memory() -> None:
    """Return the allocator's free pages to the OS (a no-op without glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)

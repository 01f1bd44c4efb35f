"""torch's intra-op threads while a conversion writes: one core fewer than the process may use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def leaving_a_core() -> Iterator[None]:
    """torch's intra-op threads capped at one fewer than the cores this process may use. The write
    loop hashes each written tensor on a worker thread meanwhile; with every core in torch's pool, its
    OpenMP workers spin waiting for the core the hasher holds (or another process holds), so each
    short pass over a tensor waits a scheduler slice: on a 2-core machine quantizing took several
    times longer, and the checked cast of a dequantized FP8 weight 18x (8.2 s against 0.43 s for an
    18432 x 7168 weight)."""
    import torch

    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, min(before, cores - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)

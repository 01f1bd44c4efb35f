"""Decode attention on the CPU without the gather: a small C++ kernel (`csrc/paged_decode_attention.cpp`)
that reads each sequence's keys and values in place through its block table, built with
`torch.utils.cpp_extension` on first use and cached (torch's extensions directory) from then on.

Why a kernel: the plain-torch path copies each group's context into a padded tensor per layer and
hands it to SDPA, whose CPU flash kernel then reads the copy again; at 64 decodes that is most of
the attention's time. Measured on one SmolLM2 layer (`benchmarks/bench_decode_attention.py`, 64
decodes of 40-382 tokens, bf16, 2 threads): see `benchmarks/README.md`. It is used where it
applies — a decode group on the CPU, outside `torch.compile` — and everything else (prefill chunks,
CUDA, an NPU, check_ops' meta trace) stays on the plain path, which remains the reference. In a step
of decodes only, the kernel's call also writes the step's keys and values into the cache: one call
per layer where the write, the query gather and the lengths were five more.

`ASCENDKIT_DECODE_ATTENTION=sdpa` (or `use("sdpa")`, as the benchmarks do to run both in one
process) keeps the plain path; a machine with no C++ compiler falls back to it with one warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ascend_common.errors import UserError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "paged_decode_attention.cpp"
CHOICES = ("kernel", "sdpa")
ENV = "ASCENDKIT_DECODE_ATTENTION"

_choice: str | None = None  # None: read ENV on first use
_kernel: Callable[..., torch.Tensor] | None = None
_failed = False


def use(choice: str) -> None:
    """Pick the decode attention for this process: "kernel" (the default) or "sdpa"."""
    global _choice
    if choice not in CHOICES:
        raise UserError(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    _choice = choice


def chosen() -> str:
    if _choice is None:
        use(os.environ.get(ENV, "kernel").strip().lower() or "kernel")
    assert _choice is not None
    return _choice


def kernel() -> Callable[..., torch.Tensor] | None:
    """The built kernel, or None (the plain path) where it is not chosen or could not be built."""
    global _kernel, _failed
    if chosen() != "kernel" or _failed:
        return None
    if _kernel is None:
        from torch.utils import cpp_extension

        try:
            # The source's hash names the build: an edit rebuilds it, and every later process loads
            # the cached library. -march=native: it is built on the machine that runs it.
            module = cpp_extension.load(name="ascendkit_paged_decode_attention", sources=[str(SOURCE)],
                                        extra_cflags=["-O3", "-march=native", "-fopenmp"],
                                        extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as exc:  # no compiler, no headers: the plain path serves
            _failed = True
            log.warning("the CPU decode-attention kernel could not be built (%s: %s); decode attention "
                        "gathers each context for SDPA instead", type(exc).__name__, str(exc).splitlines()[0][:200])
            return None
        _kernel = module.paged_decode_attention
    return _kernel


def serves(device: torch.device) -> bool:
    """The kernel reads this device's decodes: a CPU, and a kernel at hand (chosen and built)."""
    return device.type == "cpu" and kernel() is not None


def applies(query: torch.Tensor) -> bool:
    """The kernel serves this call: `serves` its device, outside a torch.compile trace (which runs
    the plain path)."""
    return serves(query.device) and not torch.compiler.is_compiling()

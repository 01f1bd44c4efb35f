"""Does an aten op reach an NPU kernel? Asked in the order the dispatcher itself uses:

1. `native`: the overload has an NPU kernel in the manifest;
2. its `structured_delegate` (PyTorch's native_functions.yaml) decides: `hypot` runs `hypot.out`;
3. `decomposes`: a CompositeImplicitAutograd kernel — what it calls decides;
4. `composite`: a CompositeExplicitAutograd kernel (views, metadata, helpers) — what it calls decides;
5. else `fallback`: no NPU kernel, torch_npu runs it on the CPU.

What a composite op calls is found by running it once on tiny CPU tensors under `torch.profiler`
and walking the event tree: the first op on each path that has an NPU kernel settles that path; a
leaf without one makes the whole op a fallback (`logcumsumexp` → `_logcumsumexp`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from functools import cache, lru_cache

import torch

NATIVE, DECOMPOSES, COMPOSITE, FALLBACK = "native", "decomposes", "composite", "fallback"
FINDING_KINDS = frozenset({FALLBACK})
TINY_DIM = 4  # composite ops are probed on tensors with every dimension cut to this


@dataclass(frozen=True)
class Verdict:
    kind: str
    via: tuple[str, ...] = ()  # from the op to the one that decided, e.g. ("_logcumsumexp",)

    @property
    def is_finding(self) -> bool:
        return self.kind in FINDING_KINDS


def overload_key(op: torch._ops.OpOverload) -> str:
    """`add.Tensor`, or `lgamma` for a default overload: the spelling of the manifests."""
    name = op._schema.name.split("::", 1)[1]
    return name if op._overloadname == "default" else f"{name}.{op._overloadname}"


@lru_cache(maxsize=1)
def structured_delegates() -> dict[str, str]:
    """`func` → `structured_delegate` from the native_functions.yaml every torch wheel ships.

    Read line by line, not as YAML: the file is a flat list of `- func: ...` mappings whose keys are
    one line each, and parsing all 1.5 MB of it as YAML costs half a second of every check."""
    import torchgen

    path = os.path.join(os.path.dirname(torchgen.__file__), "packaged", "ATen", "native", "native_functions.yaml")
    delegates, func = {}, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("- func:"):
                func = line[len("- func:"):].strip().split("(", 1)[0]
            elif line.startswith("  structured_delegate:") and func:
                delegates[func] = line.split(":", 1)[1].split("#", 1)[0].strip()
    return delegates


def _has_kernel(key: str, dispatch_key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{key}", dispatch_key)
    except RuntimeError:
        return False


# One kernel for every backend, built from other ops: the NonFunctional variant serves the `*_copy`
# ops traced graphs hold (e.g. `lift_fresh_copy`, a `torch.tensor(...)` constant, which clones).
_EXPLICIT = ("CompositeExplicitAutograd", "CompositeExplicitAutogradNonFunctional")


@cache
def _base_is_composite(base: str) -> bool:
    """Has any overload of `aten::<base>` a composite kernel? (Profiler events name no overload.)"""
    packet = getattr(torch.ops.aten, base, None)
    if packet is None:
        return False
    keys = [base if name == "default" else f"{base}.{name}" for name in packet.overloads()]
    return any(_has_kernel(k, d) for k in keys for d in ("CompositeImplicitAutograd", *_EXPLICIT))


@contextlib.contextmanager
def _quiet_stderr():
    """The profiler's C++ backend (kineto) logs two lines to fd 2 per session, whatever the log
    level: hide fd 2 for the probe only, so the user's terminal shows the report, not those."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class ProbeError(RuntimeError):
    """A composite op could not be run on stand-in tensors, so what it calls is unknown."""


def _stand_in(value, shrink: bool):
    """A real CPU tensor standing in for a traced value (FakeTensor/meta): same dtype and rank,
    every dimension cut to TINY_DIM when `shrink`."""
    if isinstance(value, torch.Tensor):
        shape = [min(int(d), TINY_DIM) if shrink else int(d) for d in value.shape]
        if value.dtype.is_floating_point or value.dtype.is_complex:
            return torch.rand(shape, dtype=value.dtype) + 0.5
        return torch.zeros(shape, dtype=value.dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_stand_in(v, shrink) for v in value)
    if isinstance(value, torch.device):
        return torch.device("cpu")
    return value


class Classifier:
    """Classifies ops against one torch_npu manifest; results are cached per overload."""

    def __init__(self, manifest: dict) -> None:
        self.aten = frozenset(manifest["aten"])
        self.npu_custom = frozenset(manifest.get("npu_custom", ()))
        self.bases = frozenset(name.split(".", 1)[0] for name in self.aten)
        self._cache: dict[str, Verdict] = {}

    def classify(self, op: torch._ops.OpOverload, args: tuple = (), kwargs: dict | None = None) -> Verdict:
        key = overload_key(op)
        if key not in self._cache:
            self._cache[key] = self._classify(op, key, args, kwargs or {})
        return self._cache[key]

    def _classify(self, op, key: str, args: tuple, kwargs: dict) -> Verdict:
        from .npu_stand_ins import NAMESPACE

        if op.namespace == NAMESPACE:  # a torch_npu kernel (its stand-in): the release has it or not
            return Verdict(NATIVE if key in self.npu_custom else FALLBACK)
        if key in self.aten:
            return Verdict(NATIVE)
        delegate = structured_delegates().get(key)
        if delegate is not None:
            return Verdict(NATIVE if delegate in self.aten else FALLBACK, (delegate,))
        for dispatch_key, kind in (("CompositeImplicitAutograd", DECOMPOSES), *((k, COMPOSITE) for k in _EXPLICIT)):
            if _has_kernel(key, dispatch_key):
                bad = self._first_fallback_callee(op, args, kwargs)
                return Verdict(kind) if bad is None else Verdict(FALLBACK, bad)
        return Verdict(FALLBACK)

    def _first_fallback_callee(self, op, args: tuple, kwargs: dict) -> tuple[str, ...] | None:
        """The chain to the first op without an NPU kernel that `op` calls, or None if all have one."""
        from torch.profiler import ProfilerActivity, profile

        prof = None
        for shrink in (True, False):  # tiny first; explicit size arguments may need the real shapes
            stand_args = _stand_in(args, shrink)
            stand_kwargs = {k: _stand_in(v, shrink) for k, v in kwargs.items()}
            try:
                with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
                    op(*stand_args, **stand_kwargs)
                break
            except (RuntimeError, IndexError, ValueError, TypeError):
                prof = None
        if prof is None:
            raise ProbeError(f"aten::{overload_key(op)}: cannot run it on stand-in CPU tensors to see what it calls")
        roots = [e for e in prof.events() if e.cpu_parent is None and e.name == op._schema.name]
        for root in roots:
            found = self._walk(root.cpu_children)
            if found is not None:
                return found
        return None

    def _walk(self, events) -> tuple[str, ...] | None:
        for event in events:
            if not event.name.startswith("aten::"):
                continue
            base = event.name.split("::", 1)[1]
            if base in self.bases:
                continue  # the profiler names no overload: any NPU kernel of this op settles the path
            composite = _base_is_composite(base)
            if not composite:
                return (base,)  # only backend kernels (whatever its CPU kernel calls inside): a fallback
            deeper = self._walk([c for c in event.cpu_children if c.name.startswith("aten::")])
            if deeper is not None:
                return (base, *deeper)
        return None

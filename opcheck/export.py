"""`torch.export` with an error a user can act on: when tracing dies inside the model, the message
names the module (its path in the model, its class, file:line) where it died, not torch's internals."""

from __future__ import annotations

import contextlib
import logging
from types import TracebackType

import torch

from ascend_common.errors import UserError, first_line


def _chain(exc: BaseException):
    """The exception and the ones it was raised from: torch.export re-raises user errors wrapped."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _innermost_module(tb: TracebackType | None, names: dict[int, str]) -> str | None:
    found = None
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, torch.nn.Module) and id(owner) in names:
            path = tb.tb_frame.f_code.co_filename.split("site-packages/", 1)[-1]
            found = f"{names[id(owner)] or '<root>'} ({type(owner).__name__}, {path}:{tb.tb_lineno})"
        tb = tb.tb_next
    return found


def failing_module(exc: BaseException, model: torch.nn.Module) -> str | None:
    """`layers.0.self_attn (LlamaAttention, file:line)` of the innermost module of `model` whose code
    was running when `exc` was raised, or None if it died outside the model."""
    names = {id(m): name for name, m in model.named_modules()}
    for link in _chain(exc):
        where = _innermost_module(link.__traceback__, names)
        if where:
            return where
    return None


@contextlib.contextmanager
def _quiet_fake_tensor_log():
    """torch logs a failed meta kernel with its whole traceback before raising; the error we raise
    says the same in one line."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def export(module: torch.nn.Module, args: tuple, kwargs: dict | None, what: str,
           model: torch.nn.Module | None = None) -> torch.export.ExportedProgram:
    """Export `module` (non-strict: the model's Python runs as is). `model` is the module whose
    submodule names go in the error (the user's model, when `module` wraps it)."""
    try:
        with _quiet_fake_tensor_log():
            return torch.export.export(module, args, kwargs or {}, strict=False)
    except Exception as exc:  # noqa: BLE001 - any failure here is the traced code's; name where it happened
        where = failing_module(exc, model or module)
        inside = f" in {where}" if where else ""
        raise UserError(f"{what}: tracing failed{inside}: {type(exc).__name__}: {first_line(exc)}") from None

"""Which device the runtime runs on, and how it names it in its logs: CPU, CUDA, or an Ascend NPU
through torch_npu (which registers the `npu` device with torch when imported)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ascend_common.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "npu", "ascend")


@dataclass(frozen=True)
class Platform:
    device: torch.device
    name: str  # what the logs call it: cpu, cuda, npu
    fused_ops: bool  # ASCEND_OP_FUSION=1 on an NPU: torch_npu's fused kernels replace the plain ops

    def synchronize(self) -> None:
        if self.name == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.name == "npu":
            torch.npu.synchronize(self.device)  # type: ignore[attr-defined]

    def kernels(self):
        """The element-wise kernels the model uses: torch_npu's fused ones with ASCEND_OP_FUSION=1."""
        from runtime.layers.fused_ops import PLAIN, npu_kernels

        return npu_kernels() if self.fused_ops else PLAIN

    def memory_allocated(self) -> int | None:
        """Bytes the device allocator holds (None on CPU: the process RSS is the figure there)."""
        if self.name == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        if self.name == "npu":
            return torch.npu.max_memory_allocated(self.device)  # type: ignore[attr-defined]
        return None


def _npu() -> bool:
    """Is an NPU usable? `ASCEND_VISIBLE_DEVICES` (the card list the seed article and Ascend's
    container runtime use) is handed to CANN as `ASCEND_RT_VISIBLE_DEVICES` before torch_npu loads,
    so `npu:0` is the first card it names."""
    visible = os.environ.get("ASCEND_VISIBLE_DEVICES")
    if visible and "ASCEND_RT_VISIBLE_DEVICES" not in os.environ:
        os.environ["ASCEND_RT_VISIBLE_DEVICES"] = visible
    try:
        import torch_npu  # noqa: F401 - registers torch.npu
    except ImportError:
        return False
    return torch.npu.is_available()  # type: ignore[attr-defined]


def resolve(device: str = "auto") -> Platform:
    """`auto` prefers an NPU, then CUDA, then the CPU; naming one that is absent is a clear error."""
    if device not in DEVICES:
        raise UserError(f"device {device!r}: expected one of {', '.join(DEVICES)}")
    if device in ("npu", "ascend") or (device == "auto" and _npu()):
        if not _npu():
            raise UserError(f"device {device!r}: torch_npu is not importable or sees no NPU "
                            f"(install torch_npu for torch {torch.__version__} and CANN, and check npu-smi info)")
        return Platform(torch.device("npu", 0), "npu", os.environ.get("ASCEND_OP_FUSION") == "1")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("device 'cuda': torch sees no CUDA device (this torch build: "
                            f"{torch.__version__})")
        return Platform(torch.device("cuda", 0), "cuda", False)
    return Platform(torch.device("cpu"), "cpu", False)

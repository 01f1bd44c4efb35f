"""The deployment a checkpoint is checked for: the SoC, the dtype the engine will run it in, the
tensor- and expert-parallel sizes, and whether `--quantization ascend` is given."""

from __future__ import annotations

from dataclasses import dataclass

from ascend_common.errors import UserError
from ascend_common.soc import SocProfile, get_soc

DTYPES = ("auto", "bfloat16", "float16")


@dataclass(frozen=True)
class Deployment:
    soc: SocProfile
    dtype: str  # the engine's --dtype (auto: the config's)
    tp: int = 1
    ep: int = 1
    quantization: bool | None = None  # --quantization ascend given (None: not said; found from the files)

    def model_dtype(self, config: dict) -> str:
        """What the engine computes in: --dtype, else config.json's `torch_dtype`/`dtype` (float32 and
        no dtype at all run as the SoC's preferred half type, as vLLM's auto downcasts float32)."""
        if self.dtype != "auto":
            return self.dtype
        declared = config.get("torch_dtype") or config.get("dtype")
        if declared in ("bfloat16", "float16"):
            return declared
        return self.soc.dtypes[0] if self.soc.dtypes[0] != "float32" else "float16"


def deployment(soc: str, dtype: str = "auto", tp: int = 1, ep: int = 1, quantization: bool | None = None) -> Deployment:
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if tp < 1 or ep < 1:
        raise UserError(f"--tp {tp} --ep {ep}: parallel sizes are at least 1")
    return Deployment(get_soc(soc), dtype, tp, ep, quantization)

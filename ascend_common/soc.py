"""Ascend SoC profiles: which floating dtypes each chip's cube unit computes in.

910A and 310P have no bf16 matmul; asking for it there is an error, not a silent downgrade.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class SocProfile:
    name: str
    product: str
    dtypes: tuple[str, ...]  # supported compute dtypes, preferred first

    def supports(self, dtype: str) -> bool:
        return dtype in self.dtypes


SOCS: dict[str, SocProfile] = {
    p.name: p
    for p in (
        SocProfile("ascend910b", "Atlas 800 A2 / 910B", ("bfloat16", "float16", "float32")),
        SocProfile("ascend910a", "Atlas 800 / 910A", ("float16", "float32")),
        SocProfile("ascend310p", "Atlas 300I Duo / 310P", ("float16", "float32")),
    )
}

SOC_CHOICES = tuple(SOCS)
DTYPE_CHOICES = ("auto", "float16", "bfloat16", "float32")


def get_soc(name: str) -> SocProfile:
    try:
        return SOCS[name]
    except KeyError:
        raise UserError(f"--soc {name}: unknown SoC (choose one of {', '.join(SOCS)})") from None


def resolve_dtype(soc: SocProfile, requested: str, source_dtype: str) -> str:
    """`auto`: bf16 where the chip has it and the source is bf16; fp16 otherwise (a float32 or float16
    source, or a bf16 source on a chip without bf16)."""
    if requested == "auto":
        return "bfloat16" if source_dtype == "bfloat16" and soc.supports("bfloat16") else "float16"
    if requested not in DTYPE_CHOICES:
        raise UserError(f"--dtype {requested}: unknown dtype (choose one of {', '.join(DTYPE_CHOICES)})")
    if not soc.supports(requested):
        raise UserError(
            f"--dtype {requested}: {soc.name} ({soc.product}) has no {requested} support; "
            f"it supports {', '.join(soc.dtypes)}"
        )
    return requested

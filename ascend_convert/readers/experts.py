"""Present a mixture-of-experts checkpoint with the Hub's per-expert tensor names, however it is stored.

transformers v5 saves a layer's routed experts as 3-D parameters (`mlp.experts.gate_up_proj`
[E, 2I, H], `mlp.experts.down_proj` [E, H, I]) and some single tensors under in-memory names
(Mixtral's router `mlp.gate.weight`). vllm-ascend and msModelSlim read the Hub's names, one 2-D tensor
per expert and role, so the readers present those to every consumer (plan, manifest, `verify
--source`, the runtime's loader, calibration): from the spec's `fused_experts` table each 3-D tensor
becomes E tensors per part (gate = rows 0:I of an expert's block, up = rows I:2I), from its `aliases`
table an alias gets its Hub name. The presented `TensorInfo` says where its values are stored
(`StoredPart`) and records what was done (`split_experts:…`, `rename:…`) for the manifest.

An expert's block of a 3-D tensor is contiguous, and so is a row range of it: a reader loads one
slice's bytes, never the whole 3-D tensor per expert.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ascend_common.errors import UserError

from ..layout_names import CONFIG_NAME
from .base import StoredPart, TensorInfo, check_duplicates

if TYPE_CHECKING:
    from ..arch import ArchSpec


def present_experts(stored: list[TensorInfo], spec: ArchSpec, config: dict, root: Path) -> list[TensorInfo]:
    """`stored` (a reader's tensors, in file order) with fused 3-D experts split per expert and
    aliases renamed; unchanged for a dense family or a checkpoint in the Hub's layout."""
    if not spec.fused_experts and not spec.aliases:
        return stored
    out: list[TensorInfo] = []
    experts: int | None = None
    for info in stored:
        fused = spec.fused_expert_of(info.name)
        if fused is not None:
            if experts is None:
                experts = spec.canonical_config(config, where=str(root / CONFIG_NAME))["num_experts"]
            out.extend(_split(info, *fused, experts, spec, root))
            continue
        match = spec.role_of(info.name)
        if match is not None and match.role in spec.tensors:
            hub = spec.name_of(*match)
            if hub != info.name:  # matched through an alias
                out.append(replace(info, name=hub, transforms=(*info.transforms, f"rename:{info.name}"),
                                   stored=StoredPart(info.name)))
                continue
        out.append(info)
    seen: dict[str, str] = {}
    for info in out:  # a layer's experts both fused and per expert (or a router under both names)
        check_duplicates(seen, info.name, info.file if info.stored is None else f"{info.file} as {info.stored.name}")
    return out


def _split(info: TensorInfo, roles: tuple[str, ...], layer: int, experts: int, spec: ArchSpec,
           root: Path) -> list[TensorInfo]:
    """The per-expert tensors of one fused [E, rows, cols] parameter, expert by expert, each
    expert's parts in the roles' order (the order their bytes lie in the file)."""
    where = f"{root / info.file}: tensor {info.name} (layer {layer}'s fused experts)"
    if len(info.shape) != 3:
        raise UserError(f"{where} has shape {list(info.shape)}; a fused experts tensor is 3-D [experts, rows, cols]")
    count, rows, cols = info.shape
    if count != experts:
        raise UserError(f"{where} has shape {list(info.shape)}: its first dim {count} is not the num_experts "
                        f"{experts} of {root / CONFIG_NAME}")
    if rows % len(roles):
        raise UserError(f"{where} has shape {list(info.shape)}: its {rows} rows do not split into "
                        f"{len(roles)} equal parts ({', '.join(roles)})")
    part = rows // len(roles)
    out = []
    for e in range(experts):
        for k, role in enumerate(roles):
            span = (k * part, (k + 1) * part)
            out.append(TensorInfo(spec.name_of(role, layer, e), info.dtype, (part, cols), info.file, info.stored_as,
                                  (*info.transforms, f"split_experts:{info.name}[{e}][{span[0]}:{span[1]}]"),
                                  StoredPart(info.name, e, span)))
    return out


def part_span(offset: int, shape: tuple[int, ...], itemsize: int, part: StoredPart) -> tuple[int, int]:
    """(offset, nbytes) of a stored part inside a stored tensor whose data starts at `offset`."""
    assert part.expert is not None and part.rows is not None
    row = shape[-1] * itemsize
    begin = offset + (part.expert * shape[1] + part.rows[0]) * row
    return begin, (part.rows[1] - part.rows[0]) * row

"""From an exported program to findings: every aten op in the graph, where it comes from, and
whether it reaches an NPU kernel for the target SoC and dtype.

Graphs come from `torch.export` (built on the meta device for HF configs: no weights are read).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .classify import COMPOSITE, FALLBACK, Classifier, Verdict, overload_key
from .npu_stand_ins import NAMESPACE as NPU_NAMESPACE

UNSUPPORTED = "unsupported"
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')
# frames that are plumbing, not the model: torch, transformers' helpers, and the `kernels` package's
# hub wrappers (transformers >= 5.25 routes e.g. `apply_rotary_pos_emb` through them when it is installed)
_INTERNAL = ("/torch/", "/transformers/utils/", "/contextlib.py", "/kernels/_internals/")


@dataclass
class OpUse:
    """One aten overload in a graph: how often, in which dtypes, and where from."""

    op: torch._ops.OpOverload
    count: int = 0
    dtypes: set[str] = field(default_factory=set)
    shapes: list[list[int]] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    example: tuple[tuple, dict] | None = None
    phases: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """`aten::add.Tensor`, or `npu::npu_quant_matmul` for a torch_npu kernel's stand-in."""
        return f"{'npu' if self.op.namespace == NPU_NAMESPACE else 'aten'}::{overload_key(self.op)}"

    def __getstate__(self) -> dict:
        """Picklable (a phase may be traced in a child process): the overload by name."""
        state = dict(self.__dict__)
        op = state.pop("op")
        state["op_name"] = (op.namespace, op._schema.name.split("::", 1)[1], op._overloadname)
        return state

    def __setstate__(self, state: dict) -> None:
        namespace, name, overload = state.pop("op_name")
        self.__dict__.update(state, op=getattr(getattr(getattr(torch.ops, namespace), name), overload))


@dataclass(frozen=True)
class Finding:
    op: str
    kind: str  # fallback | unsupported
    count: int
    dtypes: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    locations: tuple[str, ...]
    via: tuple[str, ...]
    advice: str
    phases: tuple[str, ...] = ()  # the traced steps it occurs in: prefill, decode


def location(node: torch.fx.Node) -> str | None:
    """`file:line (module path)` of the user code that emitted the node: the innermost frame of the
    stack trace outside torch itself."""
    frames = [m for m in _FRAME.finditer(node.meta.get("stack_trace") or "")]
    frames = [m for m in frames if not any(p in m["file"] for p in _INTERNAL)]
    if not frames:
        return None
    last = frames[-1]
    module = ""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        module = " (" + (list(stack.values())[-1][0] or "<root>") + ")"
    path = last["file"].split("site-packages/", 1)[-1]  # `transformers/models/...`: the part a reader knows
    return f"{path}:{last['line']}{module}"


def _value(arg):
    if isinstance(arg, torch.fx.Node):
        return _plain(arg.meta.get("val"))
    if isinstance(arg, (list, tuple)):
        return type(arg)(_value(a) for a in arg)
    return arg


def _plain(value):
    """A graph's values are FakeTensors tied to the tracing session; keep plain meta tensors of the
    same shape, stride and dtype (all the classifier needs, and they pickle)."""
    if isinstance(value, torch.Tensor):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def ops_in(programs: torch.export.ExportedProgram | dict[str, torch.export.ExportedProgram],
           weight: Callable[[torch.fx.Node], int] | None = None) -> dict[str, OpUse]:
    """Every aten overload of the programs (one, or one per phase such as prefill and decode).
    `weight`: how many calls a node stands for (`layers.LayerSample.weight`: one traced layer counts
    for every layer of its kind); 1 each without it."""
    if isinstance(programs, torch.export.ExportedProgram):
        programs = {"graph": programs}
    uses: dict[str, OpUse] = {}
    for phase, program in programs.items():
        for node in program.graph.nodes:
            if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
                continue
            if node.target.namespace not in ("aten", NPU_NAMESPACE):
                continue
            use = uses.setdefault(overload_key(node.target), OpUse(node.target))
            _record(use, node, phase, weight(node) if weight else 1)
    return uses


def merge_uses(into: dict[str, OpUse], other: dict[str, OpUse]) -> dict[str, OpUse]:
    """`into` with `other`'s uses added (uses of two phases traced apart)."""
    for key, use in other.items():
        mine = into.get(key)
        if mine is None:
            into[key] = use
            continue
        mine.count += use.count
        mine.dtypes |= use.dtypes
        mine.shapes += [s for s in use.shapes if s not in mine.shapes][:max(0, 3 - len(mine.shapes))]
        mine.locations += [loc for loc in use.locations if loc not in mine.locations]
        mine.phases += [p for p in use.phases if p not in mine.phases]
    return into


def _record(use: OpUse, node: torch.fx.Node, phase: str, calls: int = 1) -> None:
    use.count += calls
    if phase not in use.phases:
        use.phases.append(phase)
    args, kwargs = _value(node.args), {k: _value(v) for k, v in node.kwargs.items()}
    if use.example is None:
        use.example = (args, kwargs)
    out = node.meta.get("val")
    for t in (*_tensors(args), *_tensors(kwargs), *_tensors(out)):
        if t.is_floating_point():
            use.dtypes.add(str(t.dtype).removeprefix("torch."))
    if isinstance(out, torch.Tensor) and len(use.shapes) < 3 and list(out.shape) not in use.shapes:
        use.shapes.append([int(d) for d in out.shape])
    where = location(node)
    if where and where not in use.locations:
        use.locations.append(where)


def advice_for(name: str, verdict: Verdict, kind: str, soc_dtypes: tuple[str, ...]) -> str:
    if kind == UNSUPPORTED:
        return f"cast the model to {soc_dtypes[0]} (convert --dtype {soc_dtypes[0]})"
    if name.startswith("npu::"):
        kernel = name.split("::", 1)[1]
        if "moe" in kernel or "grouped_matmul" in kernel:
            return (f"this torch_npu release has no {kernel}: the MoE layers cannot run on it; "
                    f"target a torch_npu release that has the kernel")
        return (f"this torch_npu release has no {kernel}: the quantized layers cannot run on it; "
                f"target a torch_npu release that has the kernel, or convert without this quantization")
    via = f" (it runs {' → '.join('aten::' + v for v in verdict.via)}, which has no NPU kernel)" if verdict.via else ""
    return (f"{name} runs on the CPU with torch_npu{via}: rewrite it with NPU-supported ops, or move it "
            f"out of the hot path; TORCH_NPU_FALLBACK_CPU_DISABLE=1 turns the fallback into an error")


def findings(uses: dict[str, OpUse], classifier: Classifier, soc_dtypes: tuple[str, ...]) -> list[Finding]:
    """Fallback ops, and ops computing in a dtype the SoC lacks (bf16 on 910A/310P)."""
    out = []
    for key, use in sorted(uses.items()):
        args, kwargs = use.example or ((), {})
        verdict = classifier.classify(use.op, args, kwargs)
        kinds = []
        if verdict.kind == FALLBACK:
            kinds.append(FALLBACK)
        computes = verdict.kind != COMPOSITE and not use.op.is_view  # views and metadata compute nothing
        if computes and any(d not in soc_dtypes for d in use.dtypes):
            kinds.append(UNSUPPORTED)
        for kind in kinds:
            out.append(Finding(use.name, kind, use.count, tuple(sorted(use.dtypes)), tuple(map(tuple, use.shapes)),
                               tuple(use.locations), verdict.via, advice_for(use.name, verdict, kind, soc_dtypes),
                               tuple(p for p in use.phases if p != "graph")))
    return out

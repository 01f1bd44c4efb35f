"""ATC's view of an ONNX model: does CANN's ONNX parser have a converter for each node?

ATC looks every node up by `domain::opset::OpType` (the opset being the model's `opset_import` for
the node's domain; the default domain "" is `ai.onnx`) and stops with E16002 when no plugin is
registered for that exact key, so a node is a finding when its domain, its op type, or the model's
opset for that op is missing from the manifest built from msit's onnx.yaml. Subgraphs of control-flow
nodes (If/Loop/Scan) are parsed by ATC too and checked the same way, at the model's opsets.

The model is read without its external data (weights are not needed to name operators), so a model
saved as `.onnx` + `.onnx.data` is checked from the `.onnx` alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ascend_common.errors import UserError, first_line

from .trace import UNSUPPORTED, Finding

if TYPE_CHECKING:
    import onnx

DEFAULT_DOMAIN = "ai.onnx"
# Node types ATC's ONNX parser maps itself (its `kOnnxOpMap`), not through the op plugins that
# msit's list describes: a `Constant` node becomes a Const node at any opset.
PARSER_BUILTINS = frozenset({(DEFAULT_DOMAIN, "Constant")})
MAX_NODES = 5  # node names kept per op, for the report's "where" column
_DTYPE_NAMES = {"FLOAT": "float32", "DOUBLE": "float64"}  # the rest: ONNX's name, lower case


@dataclass
class OnnxOpUse:
    """One (domain, op type) of the model: how often, at which opset, in which dtypes, and where."""

    name: str  # `onnx::MatMul` (default domain), `com.microsoft::FusedMatMul`
    domain: str  # `ai.onnx` for the default domain
    op_type: str
    opset: int | None  # the model's opset for the domain (None: not imported)
    count: int = 0
    atc_type: str | None = None  # the Ascend IR type ATC converts it to (`PartitionedCall`: it decomposes it)
    nodes: list[str] = field(default_factory=list)
    dtypes: set[str] = field(default_factory=set)
    shapes: list[tuple[int, ...]] = field(default_factory=list)


def _domain(domain: str) -> str:
    return DEFAULT_DOMAIN if domain in ("", DEFAULT_DOMAIN) else domain


def _op_name(domain: str, op_type: str) -> str:
    return f"onnx::{op_type}" if domain == DEFAULT_DOMAIN else f"{domain}::{op_type}"


def _external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model stored in external data: initializers and attribute tensors, in
    the main graph, its subgraphs and the model-local functions."""
    def in_nodes(nodes):
        for node in nodes:
            for attr in node.attribute:
                tensors = [attr.t] if attr.HasField("t") else []
                tensors += list(attr.tensors)
                sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
                for s in (*sparse, *attr.sparse_tensors):
                    tensors += [s.values, s.indices]
                yield from (t for t in tensors if t.data_location == t.EXTERNAL)
                for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from in_graph(graph)

    def in_graph(graph):
        tensors = [*graph.initializer, *(t for s in graph.sparse_initializer for t in (s.values, s.indices))]
        yield from (t for t in tensors if t.data_location == t.EXTERNAL)
        yield from in_nodes(graph.node)

    yield from in_graph(model.graph)
    for function in model.functions:
        yield from in_nodes(function.node)


def _check(model: onnx.ModelProto) -> None:
    """`onnx.checker` on everything but the external data's bytes.

    Given a path, the checker reads the external data files; given a proto, it resolves their
    locations against the current directory. Neither is wanted (the data is not needed to name the
    operators, and may be absent), and giving it the bytes would mean reading them: so it checks a
    copy in which each external tensor is an empty embedded one (the checker verifies embedded sizes)."""
    import onnx

    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    for tensor in _external_tensors(stripped):
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.dims[:]
        tensor.dims.append(0)
    onnx.checker.check_model(stripped)


def load_model(path: Path) -> onnx.ModelProto:
    """The ModelProto, without external data, checked; a `UserError` naming the file otherwise.

    A protobuf cut at a field boundary parses into a partial model (no opset_import, no graph), so
    the structure is checked as well as the checker's rules."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")

    def invalid(reason: str) -> UserError:
        return UserError(f"{path}: not a valid ONNX model ({reason})")

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - DecodeError, OSError...: the file is not a readable model
        raise invalid(f"{type(exc).__name__}: {first_line(exc)}") from None
    if not model.HasField("graph"):
        raise invalid("no graph")
    if not model.opset_import:
        raise invalid("no opset_import")
    if not model.graph.node:
        raise invalid("the graph has no nodes")
    try:
        _check(model)
    except Exception as exc:  # noqa: BLE001 - ValidationError and the checker's C++ errors
        raise invalid(first_line(exc)) from None
    return model


def _dtype(elem_type: int) -> str:
    import onnx

    name = onnx.TensorProto.DataType.Name(elem_type)
    return _DTYPE_NAMES.get(name, name.lower())


def _value_types(graph: onnx.GraphProto, outer: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name → (dtype, shape; -1 for a symbolic dim) of every value the graph declares a type for,
    on top of the enclosing graphs' (a subgraph may read outer values)."""
    types = dict(outer)
    for t in graph.initializer:
        types[t.name] = (_dtype(t.data_type), tuple(int(d) for d in t.dims))
    for v in (*graph.input, *graph.output, *graph.value_info):
        tensor = v.type.tensor_type
        if v.type.HasField("tensor_type") and tensor.elem_type:
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
            types[v.name] = (_dtype(tensor.elem_type), dims)
    return types


def _nodes(graph: onnx.GraphProto, prefix: str = "",
           outer: dict | None = None) -> Iterator[tuple[onnx.NodeProto, str, dict]]:
    """Every node of the graph and of its nested subgraphs: (node, its display name, value types)."""
    types = _value_types(graph, outer or {})
    for i, node in enumerate(graph.node):
        name = prefix + (node.name or f"<{node.op_type} #{i}>")
        yield node, name, types
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _nodes(sub, f"{name}/{attr.name}/", types)


def ops_in_onnx(model: onnx.ModelProto, manifest: dict) -> dict[str, OnnxOpUse]:
    """Every (domain, op type) of the model, with the ATC type the manifest gives it (if any)."""
    opsets = {_domain(o.domain): int(o.version) for o in model.opset_import}
    ops = manifest["ops"]
    uses: dict[str, OnnxOpUse] = {}
    for node, name, types in _nodes(model.graph):
        domain = _domain(node.domain)
        key = _op_name(domain, node.op_type)
        use = uses.get(key)
        if use is None:
            opset = opsets.get(domain)
            atc = ops.get(domain, {}).get(node.op_type, {}).get(str(opset))
            if (domain, node.op_type) in PARSER_BUILTINS:
                atc = "Const"
            use = uses[key] = OnnxOpUse(key, domain, node.op_type, opset, atc_type=atc)
        use.count += 1
        if len(use.nodes) < MAX_NODES:
            use.nodes.append(name)
        for value in (*node.input, *node.output):
            if value in types:
                use.dtypes.add(types[value][0])
        if node.output and node.output[0] in types:
            shape = types[node.output[0]][1]
            if len(use.shapes) < 3 and shape not in use.shapes:
                use.shapes.append(shape)
    return uses


def _ranges(opsets: list[int]) -> str:
    """`8-18`, `9-11, 13`: the opsets ATC lists for an op, compactly."""
    spans: list[list[int]] = []
    for o in sorted(opsets):
        if spans and o == spans[-1][1] + 1:
            spans[-1][1] = o
        else:
            spans.append([o, o])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _advice(use: OnnxOpUse, manifest: dict, local_functions: set[tuple[str, str]]) -> str:
    ops = manifest["ops"]
    if (use.domain, use.op_type) in local_functions:
        return (f"{use.name} is a model-local function, which ATC does not expand: inline the functions "
                f"(onnx.inliner.inline_local_functions) and check the result")
    if use.domain not in ops:
        known = ", ".join(sorted(ops))
        if use.domain.startswith("com.microsoft"):
            return (f"onnxruntime contrib op: ATC reads only the {known} domains; export without onnxruntime "
                    f"fusions (no ORT transformers optimizer / saved optimized graph) so standard ONNX ops remain")
        return f"ATC reads only the {known} domains: replace {use.name} with standard ONNX ops"
    listed = sorted(int(o) for o in ops[use.domain].get(use.op_type, {}))
    if not listed:
        return (f"ATC has no converter for {use.domain} {use.op_type} at any opset: rewrite it with ops ATC "
                f"lists, or register a custom ATC op plugin for it")
    have = f"opset {use.opset}" if use.opset is not None else "no opset for that domain"
    above = [o for o in listed if use.opset is not None and o > use.opset]
    target = min(above) if above else max(listed)
    return (f"ATC converts {use.domain} {use.op_type} only at opsets {_ranges(listed)}, the model has {have}: "
            f"re-export with opset_version={target} (or onnx.version_converter.convert_version(model, {target}))")


def check_onnx(path: Path, manifest: dict) -> tuple[dict[str, OnnxOpUse], list[Finding]]:
    """The model's ops, and an `unsupported` finding for each that ATC cannot convert."""
    path = Path(path)
    model = load_model(path)
    uses = ops_in_onnx(model, manifest)
    local_functions = {(_domain(f.domain), f.name) for f in model.functions}
    found = []
    for key in sorted(uses):
        use = uses[key]
        if use.atc_type is not None:
            continue
        found.append(Finding(use.name, UNSUPPORTED, use.count, tuple(sorted(use.dtypes)), tuple(use.shapes),
                             tuple(f"{path.name}: node {n}" for n in use.nodes), (),
                             _advice(use, manifest, local_functions)))
    return uses, found

"""check_ops reports: a rich table with one `fallback op: aten::X` line per finding, JSON, SARIF 2.1.0
(for code-scanning UIs), JUnit XML (one test case per distinct op) and markdown (CI summaries)."""

from __future__ import annotations

import io
import json
import re
from dataclasses import asdict
from xml.etree import ElementTree as ET

from .trace import Finding, OpUse

FORMATS = ("table", "json", "sarif", "junit", "markdown")
RULES = {"fallback": "The op has no NPU kernel in the target torch_npu: it runs on the CPU.",
         "unsupported": "The op computes in a dtype the target SoC lacks."}
_LOCATION = re.compile(r"^(?P<file>.+?):(?P<line>\d+)(?: \((?P<module>.*)\))?$")


def _summary(uses: dict[str, OpUse]) -> str:
    kind = "aten" if all(u.name.startswith("aten::") for u in uses.values()) else "ONNX"
    return f"{len(uses)} distinct {kind} ops, {sum(u.count for u in uses.values())} calls"


def _against(target: dict) -> str:
    """What the ops were checked against: a torch_npu release, or ATC's ONNX parser."""
    if target.get("atc"):
        return f"{target['soc']}, ATC's ONNX parser ({target['atc']})"
    experts = f", experts traced as {target['experts']}" if target.get("experts") else ""
    return f"{target['soc']} {target['dtype']}, torch_npu {target['torch_npu']}{experts}{_coverage(target)}"


def _coverage(target: dict) -> str:
    """What a config-only trace stood in for: layers traced once per kind, MoE size, MTP layers
    transformers does not build, a source quantization set aside."""
    parts = []
    if target.get("layers"):
        layers = target["layers"]
        parts.append(f"{layers['traced']} of {layers['total']} decoder layers traced ({layers['kinds']} kinds, "
                     f"each counted for every layer of its kind)")
    if target.get("moe"):
        parts.append(f"{target['moe']['layers']} MoE layers of {target['moe']['routed_experts']} routed experts")
    if target.get("mtp_layers"):
        parts.append(f"{target['mtp_layers']} MTP layer(s) not traced (transformers' class does not build them)")
    if target.get("source_quantization"):
        parts.append(f"source quantization {target['source_quantization']} ignored (the float model is traced)")
    return "".join(f"; {p}" for p in parts)


def _fusion_dict(fusion) -> dict:
    """A fusion as JSON; `in_release` only where it was asked (the MoE kernels)."""
    return {k: v for k, v in asdict(fusion).items() if k != "in_release" or v is not None}


def _fused_op(fusion, target: dict) -> str:
    """The fused op, and that the target release lacks it where it does."""
    if fusion.in_release is False:
        return f"{fusion.fused_op} (not in torch_npu {target.get('torch_npu', '?')})"
    return fusion.fused_op


def report_dict(model: str, target: dict, uses: dict[str, OpUse], found: list[Finding], fusions: list = ()) -> dict:
    return {"model": model, "target": target, "ops": {"distinct": len(uses), "calls": sum(u.count for u in uses.values())},
            "findings": [asdict(f) for f in found], "fusions": [_fusion_dict(f) for f in fusions], "clean": not found}


def render(fmt: str, model: str, target: dict, uses: dict[str, OpUse], found: list[Finding], fusions: list = ()) -> str:
    """`fusions`: `opcheck.fusion.Fusion`s, patterns a torch_npu fused kernel serves (not findings)."""
    if fmt == "json":
        return json.dumps(report_dict(model, target, uses, found, fusions), indent=2) + "\n"
    if fmt == "sarif":
        return json.dumps(sarif(model, found, target), indent=2) + "\n"
    if fmt == "junit":
        return junit(model, uses, found)
    if fmt == "markdown":
        return markdown(model, target, uses, found, fusions)
    from rich.console import Console
    from rich.markup import (
        escape,  # source lines hold brackets: `self.layers[idx]` must not lose `[idx]`
    )
    from rich.table import Table

    buffer = io.StringIO()
    console = Console(file=buffer, width=140)
    # The lines outside the tables are what CI logs are grepped for: never wrapped, however long the path.
    console.print(f"check_ops {model}: {_summary(uses)}; "
                  f"target {_against(target)}", highlight=False, soft_wrap=True)
    if found:
        table = Table("op", "kind", "count", "dtypes", "where", "what to do")
        for f in found:
            table.add_row(f.op, f.kind, str(f.count), ", ".join(f.dtypes), escape("\n".join(f.locations[:3])) or "-",
                          f.advice)
        console.print(table)
    if fusions:
        table = Table("fusion (not a finding)", "count", "torch_npu fused op", "first seen at")
        for u in fusions:  # the notes on how to use each are in the JSON and markdown reports
            table.add_row(u.pattern, str(u.count), _fused_op(u, target), escape(u.locations[0]) if u.locations else "-")
        console.print(table)
    for f in found:
        label = "fallback op" if f.kind == "fallback" else "unsupported op"
        console.print(f"{label}: {f.op}", highlight=False, soft_wrap=True)
    clean = "every op converts in ATC" if target.get("atc") else "every op reaches an NPU kernel"
    console.print(f"no findings: {clean}" if not found else f"{len(found)} finding(s)",
                  highlight=False)
    return buffer.getvalue()


def _message(f: Finding) -> str:
    return f"{f.kind} op: {f.op} ({f.count} calls, {', '.join(f.dtypes) or '-'}). {f.advice}"


def sarif(model: str, found: list[Finding], target: dict | None = None) -> dict:
    """`target`: the check's target; an MoE model's experts implementation goes in the run's properties."""
    from ascend_common import __version__

    results = []
    for f in found:
        locations = []
        for loc in f.locations[:10]:
            m = _LOCATION.match(loc)
            if m:
                physical = {"artifactLocation": {"uri": m["file"]}, "region": {"startLine": int(m["line"])}}
                entry = {"physicalLocation": physical}
                if m["module"]:
                    entry["logicalLocations"] = [{"fullyQualifiedName": m["module"], "kind": "module"}]
                locations.append(entry)
        if not locations:  # ONNX nodes, or ops with no Python frame: point at the model itself
            uri = model if model.endswith((".onnx", ".pt2")) else f"{model}/config.json"
            locations = [{"physicalLocation": {"artifactLocation": {"uri": uri}}}]
        results.append({"ruleId": f.kind, "level": "error", "message": {"text": _message(f)},
                        "locations": locations, "properties": {"op": f.op, "count": f.count, "via": list(f.via)}})
    rules = [{"id": rule, "shortDescription": {"text": text}} for rule, text in RULES.items()]
    run = {"tool": {"driver": {"name": "ascendkit check_ops", "version": __version__, "rules": rules}},
           "results": results}
    if target and target.get("experts"):
        run["properties"] = {"experts_implementation": target["experts"]}
    return {"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0", "runs": [run]}


def junit(model: str, uses: dict[str, OpUse], found: list[Finding]) -> str:
    by_op: dict[str, list[Finding]] = {}
    for f in found:
        by_op.setdefault(f.op, []).append(f)
    suite = ET.Element("testsuite", name="check_ops", tests=str(len(uses)), failures=str(len(by_op)), errors="0")
    for use in sorted(uses.values(), key=lambda u: u.name):
        case = ET.SubElement(suite, "testcase", classname=f"check_ops.{model}", name=use.name)
        for f in by_op.get(use.name, []):
            failure = ET.SubElement(case, "failure", message=f"{f.kind} op: {f.op}", type=f.kind)
            failure.text = _message(f) + ("\n" + "\n".join(f.locations) if f.locations else "")
    root = ET.Element("testsuites")
    root.append(suite)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def markdown(model: str, target: dict, uses: dict[str, OpUse], found: list[Finding], fusions: list = ()) -> str:
    lines = [f"### check_ops: `{model}`", "",
             (f"Target {_against(target)}: {_summary(uses)}, "
              f"**{len(found)} finding(s)**."), ""]
    if found:
        lines += ["| op | kind | count | dtypes | where | what to do |", "|---|---|---:|---|---|---|"]
        for f in found:
            where = "<br>".join(f"`{loc}`" for loc in f.locations[:3]) or "-"
            lines.append(f"| `{f.op}` | {f.kind} | {f.count} | {', '.join(f.dtypes)} | {where} | "
                         f"{f.advice.replace('|', '/')} |")
    else:
        lines.append("Every op reaches an NPU kernel.")
    if fusions:
        lines += ["", "| pattern | count | NPU fused op | note |", "|---|---:|---|---|"]
        lines += [f"| {u.pattern} | {u.count} | {_fused_op(u, target).replace(u.fused_op, f'`{u.fused_op}`')} | "
                  f"{u.note.replace('|', '/')} |" for u in fusions]
    return "\n".join(lines) + "\n"

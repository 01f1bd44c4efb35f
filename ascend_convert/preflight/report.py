"""preflight's reports, in check_ops' formats: a rich table with one `<severity> <rule>: <subject>:
<message>` line per finding (what CI logs are grepped for), JSON, SARIF 2.1.0 (each finding at the
file it is in, the rule set's rules with their sources), JUnit XML (one test case per rule) and
markdown (CI summaries)."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from xml.etree import ElementTree as ET

from .run import PreflightResult

FORMATS = ("table", "json", "sarif", "junit", "markdown")


def _against(r: PreflightResult) -> str:
    t = r.target
    return (f"{t['engine']}@{t['release']} on {t['soc']} {t['dtype']}, TP {t['tp']}"
            + (f", EP {t['ep']}" if t["ep"] > 1 else "") + ("" if t["scope"] == "all" else f", {t['scope']} rules only"))


def _summary(r: PreflightResult) -> str:
    errors = len(r.errors)
    return (f"{r.tensors} tensors in {r.files} weight file(s); {errors} error(s), "
            f"{len(r.findings) - errors} warning(s)" + (f", {len(r.accepted)} accepted" if r.accepted else ""))


def render(fmt: str, r: PreflightResult) -> str:
    if fmt == "json":
        return json.dumps(report_dict(r), indent=2) + "\n"
    if fmt == "sarif":
        return json.dumps(sarif(r), indent=2) + "\n"
    if fmt == "junit":
        return junit(r)
    if fmt == "markdown":
        return markdown(r)
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    buffer = io.StringIO()
    console = Console(file=buffer, width=160)
    console.print(f"preflight {r.model}: {_summary(r)}; target {_against(r)}", highlight=False, soft_wrap=True)
    if r.findings:
        table = Table("severity", "rule", "subject", "what the loader does", "source")
        for f in r.findings:
            table.add_row(f.severity, f.rule, escape(f.subject), f.action, escape(f.source))
        console.print(table)
    for note in r.notes:
        console.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    for f in r.findings:
        console.print(escape(f.line), highlight=False, soft_wrap=True)
    for a in r.accepted:
        console.print(f"accepted {a['rule']}: {escape(a['subject'])} ({escape(a['reason'])})", highlight=False,
                      soft_wrap=True)
    console.print("no findings: the engine's loader rules all hold" if not r.findings else
                  f"{len(r.errors)} error(s), {len(r.findings) - len(r.errors)} warning(s)", highlight=False)
    return buffer.getvalue()


def report_dict(r: PreflightResult) -> dict:
    return {"model": r.model, "target": r.target, "tensors": r.tensors, "files": r.files,
            "findings": [asdict(f) for f in r.findings], "notes": r.notes, "accepted": r.accepted,
            "clean": not r.errors}


def sarif(r: PreflightResult) -> dict:
    from ascend_common import __version__

    results = []
    for f in r.findings:
        uri = f"{r.model}/{f.file}" if f.file else r.model
        results.append({"ruleId": f.rule, "level": f.severity, "message": {"text": f"{f.subject}: {f.message}"},
                        "locations": [{"physicalLocation": {"artifactLocation": {"uri": uri}},
                                       "logicalLocations": [{"fullyQualifiedName": f.subject}]}],
                        "properties": {"action": f.action, "source": f.source}})
    rules = [{"id": rule.id, "shortDescription": {"text": rule.what}, "help": {"text": f"Source: {rule.source}"},
              "defaultConfiguration": {"level": rule.severity},
              "properties": {"action": rule.action, "scope": rule.scope}} for rule in r.rules.rules.values()]
    run = {"tool": {"driver": {"name": "ascendkit preflight", "version": __version__, "rules": rules}},
           "results": results, "properties": {"engine": r.rules.name, "target": r.target}}
    return {"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0", "runs": [run]}


def junit(r: PreflightResult) -> str:
    by_rule: dict[str, list] = {}
    for f in r.findings:
        by_rule.setdefault(f.rule, []).append(f)
    suite = ET.Element("testsuite", name="preflight", tests=str(len(r.rules.rules)), failures=str(len(by_rule)),
                       errors="0")
    for rule_id in sorted(r.rules.rules):
        case = ET.SubElement(suite, "testcase", classname=f"preflight.{r.model}", name=rule_id)
        for f in by_rule.get(rule_id, []):
            failure = ET.SubElement(case, "failure", message=f.line, type=f.severity)
            failure.text = f"{f.message}\nthe loader: {f.action}\nsource: {f.source}"
    root = ET.Element("testsuites")
    root.append(suite)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def markdown(r: PreflightResult) -> str:
    lines = [f"### preflight: `{r.model}`", "", f"Target {_against(r)}: {_summary(r)}.", ""]
    if r.findings:
        lines += ["| severity | rule | subject | message | the loader | source |", "|---|---|---|---|---|---|"]
        lines += [f"| {f.severity} | `{f.rule}` | `{f.subject}` | {f.message.replace('|', '/')} | {f.action} | "
                  f"{f.source.replace('|', '/')} |" for f in r.findings]
    else:
        lines.append("The engine's loader rules all hold.")
    if r.notes:
        lines += [""] + [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"

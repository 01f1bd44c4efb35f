"""What `ascendkit gate` leaves for CI: `gate.json` (everything), `gate.junit.xml` (one test case per
rule, for test-report UIs), `gate.sarif` (SARIF 2.1.0: the failed rules pointing at their policy
line, plus check_ops' findings, for code-scanning UIs) and `gate.md` (the summary a person reads,
appended to `$GITHUB_STEP_SUMMARY` when that is set). Each file is written to a temp name and renamed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from ascend_common.atomic_write import write_text_atomic
from runtime.evaluation.report_output import figure as _f
from runtime.evaluation.smoke import answer_status, stability_lines

from .gate import FAIL, PASS, SKIP, GateRun

FILES = {"json": "gate.json", "junit": "gate.junit.xml", "sarif": "gate.sarif", "markdown": "gate.md"}
_HEADER = re.compile(r"^\s*\[\[?\s*([\w.]+)\s*\]\]?")


def to_dict(run: GateRun) -> dict[str, Any]:
    from opcheck.report import report_dict

    return {"verdict": run.verdict, "exit_code": run.exit_code, "error": run.error, "model": str(run.model),
            "policy": str(run.policy_path), "converted": str(run.converted) if run.converted else None,
            "target": run.policy.target.model_dump(),
            "rules": [{"id": r.id, "status": r.status, "message": r.message, "key": r.key} for r in run.rules],
            "failed": [r.id for r in run.failed], "seconds": {k: round(v, 2) for k, v in run.seconds.items()},
            "plot": str(run.plot) if run.plot else None, "stages": run.stages,
            "check_ops": {which: report_dict(c.model, c.target, c.uses, c.found, c.fusions)
                          for which, c in run.checks.items()}}


# -- JUnit -------------------------------------------------------------------------------------------
def junit(run: GateRun) -> str:
    suite = ET.Element("testsuite", name="ascendkit gate", tests=str(len(run.rules) + bool(run.error)),
                       failures=str(len(run.failed)), errors=str(int(bool(run.error))),
                       skipped=str(sum(r.status == SKIP for r in run.rules)),
                       time=f"{sum(run.seconds.values()):.2f}")
    for r in run.rules:
        case = ET.SubElement(suite, "testcase", classname=f"gate.{r.id.split('.')[0]}", name=r.id)
        if r.status == FAIL:
            ET.SubElement(case, "failure", message=r.message, type="policy").text = r.message
        elif r.status == SKIP:
            ET.SubElement(case, "skipped", message=r.message)
        else:
            ET.SubElement(case, "system-out").text = r.message
    if run.error:
        case = ET.SubElement(suite, "testcase", classname="gate", name="gate")
        ET.SubElement(case, "error", message=run.error, type="error").text = run.error
    root = ET.Element("testsuites")
    root.append(suite)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


# -- SARIF -------------------------------------------------------------------------------------------
def key_line(policy_text: str, key: str) -> int | None:
    """The 1-based line of `section.name` in a TOML policy, or of the i-th `[[section.name]]` table for
    `section.name[i]`; else its section's header (a default that failed points at the section), or
    None when neither is written."""
    indexed = re.fullmatch(r"(.+)\[(\d+)\]", key)
    if indexed:
        tables = [n for n, line in enumerate(policy_text.splitlines(), 1)
                  if (m := _HEADER.match(line)) and line.lstrip().startswith("[[") and m.group(1) == indexed[1]]
        index = int(indexed[2])
        if index <= len(tables):
            return tables[index - 1]
        key = indexed[1]
    section, _, name = key.rpartition(".")
    current, header_line = "", None
    for number, line in enumerate(policy_text.splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            current = m.group(1)
            if current == section and header_line is None:
                header_line = number
            continue
        if current == section and re.match(rf"^\s*{re.escape(name)}\s*=", line):
            return number
        if not current and re.match(rf"^\s*{re.escape(key)}\s*=", line):  # a dotted key at the top
            return number
    return header_line


def sarif(run: GateRun) -> dict[str, Any]:
    from ascend_common import __version__
    from opcheck.report import sarif as check_ops_sarif

    try:
        policy_text = run.policy_path.read_text(encoding="utf-8")
    except OSError:
        policy_text = ""
    rules, results = {}, []
    for r in run.rules:
        rules.setdefault(r.id, {"id": r.id, "shortDescription": {"text": f"policy rule {r.id}"}})
        location = {"artifactLocation": {"uri": run.policy_path.as_posix()}}
        line = key_line(policy_text, r.key) if r.key else None
        if line is not None:
            location["region"] = {"startLine": line}
        kind = {PASS: "pass", FAIL: "fail", SKIP: "notApplicable"}[r.status]
        results.append({"ruleId": r.id, "kind": kind, "level": "error" if r.status == FAIL else "none",
                        "message": {"text": r.message}, "locations": [{"physicalLocation": location}]})
    gate_run = {"tool": {"driver": {"name": "ascendkit gate", "version": __version__, "rules": list(rules.values())}},
                "results": results, "automationDetails": {"id": "ascendkit-gate/"}}
    if run.error:
        gate_run["invocations"] = [{"executionSuccessful": False, "toolExecutionNotifications": [
            {"level": "error", "message": {"text": run.error}}]}]
    runs = [gate_run]
    for which, check in run.checks.items():  # each check_ops run keeps its own tool and rules
        check_run = check_ops_sarif(check.model, check.found)["runs"][0]
        check_run["automationDetails"] = {"id": f"ascendkit-check-ops-{which}/"}
        runs.append(check_run)
    return {"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0", "runs": runs}


# -- markdown ----------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown(run: GateRun) -> str:
    from opcheck.report import markdown as check_ops_markdown

    mark = {"PASS": "✅ PASS", "FAIL": "❌ FAIL", "ERROR": "⚠️ ERROR"}[run.verdict]
    t = run.policy.target
    lines = [f"## ascendkit gate: {mark}", "",
             f"Model `{run.model}`" + (f" → `{run.converted}`" if run.converted and run.converted != run.model else "")
             + f", target {t.soc} {t.dtype}" + (f" {t.quantize}" if t.quantize != "none" else "")
             + f", torch_npu {t.torch_npu}; policy `{run.policy_path}`.", ""]
    if run.error:
        lines += [f"**The gate could not decide:** {_cell(run.error)}", ""]
    if run.failed:
        lines += ["**Failed rules:** " + ", ".join(f"`{r.id}`" for r in run.failed), ""]
    icons = {PASS: "✅", FAIL: "❌", SKIP: "➖"}
    lines += ["| rule | result | detail |", "|---|:---:|---|"]
    lines += [f"| `{r.id}` | {icons[r.status]} | {_cell(r.message)} |" for r in run.rules]
    smoke = run.stages.get("smoke")
    if smoke and smoke.get("load"):  # an endpoint that could not be reached has neither answers nor figures
        lines += ["", "### Smoke answers (greedy)", "", "| prompt | answer | vs reference |", "|---|---|---|"]
        for r in smoke["results"]:
            status = _cell(answer_status(r, markup=False))
            lines.append(f"| {_cell(r['prompt'])} | {_cell(r['text'])[:200]} | {status} |")
        load = smoke["load"]
        title = (f"### Serving figures ({smoke['device']}, {smoke['dtype']}; {load['requests']} requests, "
                 f"concurrency {load['concurrency']}, {load['prompt_len']} in / {load['tokens_per_request']} out)")
        header = ("| throughput (tok/s) | average latency (ms/token) | memory (GB) | TTFT p50 / p99 (ms) | "
                  "TPOT p50 / p99 (ms) | TPOT std (ms) |")
        row = (f"| {_f(load['output_throughput_tok_s'])} | {_f(load['latency_ms_per_token'], 2)} | "
               f"{_f(load['memory_gb'], 2)} | {_f(load['ttft_ms']['p50'])} / {_f(load['ttft_ms']['p99'])} | "
               f"{_f(load['tpot_ms']['p50'])} / {_f(load['tpot_ms']['p99'])} | {_f(load['tpot_ms']['std'], 2)} |")
        lines += ["", title, "", header, "|---:|---:|---:|---:|---:|---:|", row]
        lines += [""] + [f"- {_cell(line)}" for line in stability_lines(smoke["stability"])]
    sweep = run.stages.get("sweep")
    if sweep:
        rec = sweep["recommended"]
        lines += ["", "### Batch-size sweep", ""]
        if run.plot:
            lines += [f"![throughput and TPOT against batch size]({run.plot.name})", "",
                      f"Plot: [`{run.plot.name}`]({run.plot.name}) (in the report directory).", ""]
        elif sweep.get("plot_note"):
            lines += [f"No plot: {sweep['plot_note']}.", ""]
        lines.append(f"Recommended `max_num_seqs` = {rec['max_num_seqs']} ({rec['reason']})."
                     if rec["max_num_seqs"] else f"No recommendation: {rec['reason']}.")
    for c in run.checks.values():
        lines += ["", check_ops_markdown(c.label, c.target, c.uses, c.found, c.fusions).rstrip()]
    lines += ["", "Stage times: " + ", ".join(f"{k} {v:.1f} s" for k, v in run.seconds.items()) + "."]
    return "\n".join(lines) + "\n"


def write_reports(run: GateRun) -> dict[str, Path]:
    """Every report into the run's report directory; the markdown also onto `$GITHUB_STEP_SUMMARY`."""
    run.report_dir.mkdir(parents=True, exist_ok=True)
    texts = {"json": json.dumps(to_dict(run), indent=2, default=str) + "\n", "junit": junit(run),
             "sarif": json.dumps(sarif(run), indent=2) + "\n", "markdown": markdown(run)}
    written = {}
    for kind, text in texts.items():
        path = run.report_dir / FILES[kind]
        write_text_atomic(path, text)
        written[kind] = path
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(texts["markdown"])
    return written

"""`ascendkit gate`: the pre-deployment CI step. One run does what a release review does by hand —
doctor, convert (or verify a converted directory), preflight (would the engine load it), check_ops on
the model and on the runtime, the smoke test — and decides each policy rule, so CI gets a verdict and every failed rule by name.

The stages themselves (convert + verify, check_ops, smoke, the sweep's bench) are `stages.py`'s, shared
with `ascendkit demo`, and run by the same `StageRunner`; this module is the gate's pipeline: which
stages the policy asks for, with its options, and how each result is judged as rules.

Stages run in order; a failed rule does not stop the run (CI wants every failure at once), an error
does (later stages need what the failed one makes). Exit codes: 0 every rule passed, 1 a rule
failed, 2 the gate could not decide (bad input, a stage that raised).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ascend_common.errors import first_line

from . import stages
from .gate_policy import Policy
from .stage_runner import LogLines, StageError, StageRunner

PASS, FAIL, SKIP = "pass", "fail", "skip"
#: [performance] key → (the smoke load's figure, how it reads, True for a floor / False for a ceiling)
PERFORMANCE = {
    "min_throughput_tok_s": (("load", "output_throughput_tok_s"), "throughput {v:.1f} tok/s", True),
    "max_ms_per_token": (("load", "latency_ms_per_token"), "average latency {v:.2f} ms/token", False),
    "max_ttft_p99_ms": (("load", "ttft_ms", "p99"), "TTFT p99 {v:.1f} ms", False),
    "max_tpot_p50_ms": (("load", "tpot_ms", "p50"), "TPOT p50 {v:.1f} ms", False),
    "max_tpot_p99_ms": (("load", "tpot_ms", "p99"), "TPOT p99 {v:.1f} ms", False),
    "max_tpot_std_ms": (("load", "tpot_ms", "std"), "TPOT standard deviation {v:.2f} ms", False),
    "max_session_switch_ms": (("stability", "session_switch", "follow_up_ttft_ms", "p99"),
                              "session switch (a follow-up turn's TTFT) p99 {v:.1f} ms", False),
    "max_memory_gb": (("load", "memory_gb"), "memory {v:.2f} GB", False),
}


@dataclass
class Rule:
    """One decision. `key` is the policy key that asked for it (SARIF points at its line)."""

    id: str
    status: str  # pass | fail | skip
    message: str
    key: str | None = None


@dataclass
class GateRun:
    model: Path
    policy_path: Path
    policy: Policy
    report_dir: Path
    converted: Path | None = None
    source: Path | None = None
    quantized: bool = False
    rules: list[Rule] = field(default_factory=list)
    stages: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)  # "model"/"runtime" → opcheck.check.CheckResult
    plot: Path | None = None
    error: str | None = None
    endpoint: dict[str, Any] | None = None  # the deployment the smoke stage asks (url, served_model, ...)

    @property
    def failed(self) -> list[Rule]:
        return [r for r in self.rules if r.status == FAIL]

    @property
    def verdict(self) -> str:
        return "ERROR" if self.error else "FAIL" if self.failed else "PASS"

    @property
    def exit_code(self) -> int:
        return {"PASS": 0, "FAIL": 1, "ERROR": 2}[self.verdict]

    def add(self, rule_id: str, passed: bool | None, message: str, key: str | None = None) -> None:
        """`passed` None: the rule does not apply here (skipped, with the reason in `message`)."""
        status = SKIP if passed is None else PASS if passed else FAIL
        self.rules.append(Rule(rule_id, status, message, key))


# -- the stages, judged ------------------------------------------------------------------------------
def stage_doctor(run: GateRun) -> None:
    from .doctor import diagnose

    report = diagnose()
    run.stages["doctor"] = report.to_dict()
    warnings = report.warnings
    run.add("doctor", not warnings, "; ".join(f"{c.name}: {c.value} ({c.detail})" for c in warnings)
            if warnings else ("no mismatch" if report.has_npu else "no NPU on this machine: nothing to mismatch"))
    wanted = run.policy.target.torch_npu
    installed = next(c.value for c in report.checks if c.name == "torch_npu")
    if installed == "not installed":
        run.add("target.torch_npu", True, f"torch_npu not installed here: operators checked against torch_npu "
                                          f"{wanted}'s kernel list", "target.torch_npu")
    else:
        run.add("target.torch_npu", installed == wanted or installed.startswith(wanted + "."),
                f"torch_npu {installed} installed, the policy targets {wanted}", "target.torch_npu")
    chip = run.policy.target.soc.removeprefix("ascend").upper()
    for npu in report.npus:
        run.add(f"target.soc.npu{npu['npu']}", chip in npu["name"].upper(),
                f"NPU {npu['npu']} is a {npu['name']}, the policy targets {run.policy.target.soc}", "target.soc")


def stage_brought(run: GateRun) -> None:
    """MODEL is a quantized directory made elsewhere (msModelSlim's): deployed as it is, so judged as it
    is: its dtype and quantization from its own files, nothing to verify (preflight checks its files)."""
    from ascend_convert.quant_layout import QUANT_TYPES, read_description
    from ascend_convert.readers.base import read_config

    target = run.policy.target
    run.converted, run.source, run.quantized = run.model, None, True
    config = read_config(run.model) if (run.model / "config.json").is_file() else {}  # none: preflight says so
    dtype = config.get("torch_dtype") or config.get("dtype")
    description = read_description(run.model) or {}
    recorded = description.get("model_quant_type")
    quant = {t: kind for kind, t in QUANT_TYPES.items()}.get(recorded, str(recorded).lower())
    run.stages["convert"] = {"action": "brought", "output": str(run.model), "source": "",
                             "target": {"dtype": dtype, "quantize": recorded}}
    run.add("target.soc", None, "brought as it is (no ascend_manifest.json): no SoC is recorded; preflight checks it "
                                f"for {target.soc}", "target.soc")
    run.add("target.dtype", dtype == target.dtype, f"config.json says {dtype}, the policy wants {target.dtype}",
            "target.dtype")
    run.add("target.quantize", quant == target.quantize, f"quantization {quant} (model_quant_type {recorded!r}), the "
                                                         f"policy wants {target.quantize}", "target.quantize")
    run.add("convert.verify", None, "brought as it is: no manifest to verify against; preflight checks its files "
                                    "against the engine's loader", "convert.verify_source")


def stage_convert(run: GateRun, output: Path, force: bool, progress: bool) -> None:
    """Convert MODEL for the policy's target, or verify it when it is already converted (or take a
    quantized directory made elsewhere as it is)."""
    target, options = run.policy.target, run.policy.convert
    if stages.is_brought(run.model):
        stage_brought(run)
        return
    if stages.is_converted(run.model):  # already converted: verified, not converted again
        conversion = stages.open_converted(run.model)
    else:
        conversion = stages.convert(run.model, output, label="convert", progress=progress, soc=target.soc,
                                    dtype=target.dtype, quantize=None if target.quantize == "none" else target.quantize,
                                    on_overflow=options.on_overflow, mtp=options.mtp, force=force,
                                    engine="none")  # the preflight stage judges it: every finding, as rules
    run.converted, run.source = conversion.output, conversion.source
    # every mismatch collected: a tampered file is the `convert.verify` rule failing (exit 1), not an error
    report = stages.verify(conversion, against_source=options.verify_source)
    verify_source = run.source if options.verify_source else None
    manifest, got = conversion.manifest, conversion.target
    run.quantized = conversion.quantized
    run.stages["convert"] = {"action": conversion.action, "output": str(run.converted), "source": str(run.source or ""),
                             "target": got, "summary": manifest.get("summary"),
                             "verify": {"ok": report.ok, "files": report.files_checked,
                                        "tensors": report.tensors_checked, "source_tensors": report.source_checked,
                                        "failures": report.failures[:20]}}
    run.add("target.soc", got["soc"] == target.soc, f"converted for {got['soc']}, the policy targets {target.soc}",
            "target.soc")
    run.add("target.dtype", got["dtype"] == target.dtype, f"weights in {got['dtype']}, the policy wants "
                                                          f"{target.dtype}", "target.dtype")
    from ascend_convert.quant_layout import QUANT_TYPES

    recorded = got.get("quantize")  # msModelSlim's type name (W8A8_DYNAMIC); the policy spells --quantize's
    quant = {t: kind for kind, t in QUANT_TYPES.items()}.get(recorded, (recorded or "none").lower())
    run.add("target.quantize", quant == target.quantize, f"quantization {quant}, the policy wants {target.quantize}",
            "target.quantize")
    proof = f"{report.files_checked} files and {report.tensors_checked} tensors match the manifest's sha256"
    if verify_source is not None:
        proof += f"; {report.source_checked} tensors equal the checked conversion of {verify_source}"
    elif options.verify_source:
        proof += f"; source {manifest['source']['path']} not found, so not compared with it"
    run.add("convert.verify", report.ok, proof if report.ok else "; ".join(report.failures[:3]),
            "convert.verify_source")


def stage_preflight(run: GateRun) -> None:
    """The converted (or brought) directory against the engine's loader rules, for the policy's
    target: one rule per finding (an error fails; a warning fails only with `strict`)."""
    target, options = run.policy.target, run.policy.preflight
    allowed = [a.model_dump() for a in options.allow]
    result = stages.preflight(run.converted, soc=target.soc, dtype=target.dtype, tp=target.tp, ep=target.ep,
                              engine=options.engine, nz_mode=options.nz_mode, allowed=allowed)
    from ascend_convert.preflight.report import report_dict

    run.stages["preflight"] = report_dict(result)
    failing = result.findings if options.strict else result.errors
    said = (f"{result.tensors} tensors in {result.files} weight file(s) against {result.rules.name}, TP {target.tp}"
            + (f", EP {target.ep}" if target.ep > 1 else ""))
    if result.accepted:
        said += "; accepted by the policy: " + ", ".join(f"{a['rule']} {a['subject']} ({a['reason']})"
                                                          for a in result.accepted)
    run.add("preflight", not failing, (f"{len(failing)} finding(s) — " if failing else "the loader's rules hold: ")
            + said, "preflight")
    for f in result.findings:
        run.add(f"preflight.{f.rule}", f not in failing, f"{f.severity}: {f.subject}: {f.message} (the loader: "
                                                        f"{f.action}; {f.source})", "preflight")


def stage_check_ops(run: GateRun, which: str) -> None:
    """check_ops on the converted model (`hf`) or on the runtime's own model (`runtime`)."""
    ops, target = run.policy.ops, run.policy.target
    manifest = Path(ops.manifest) if ops.manifest else None
    if manifest is not None and not manifest.is_absolute():
        manifest = run.policy_path.parent / manifest
    result = stages.check_ops(run.converted, "hf" if which == "model" else "runtime", soc=target.soc,
                       dtype=target.dtype, version=target.torch_npu, manifest_file=manifest, seq_len=ops.seq_len,
                       allowed=run.policy.allowed_ops())
    run.checks[which] = result
    allowed = result.target["allowed"]
    calls = sum(u.count for u in result.uses.values())
    said = f"{len(result.uses)} distinct ops, {calls} calls against torch_npu {target.torch_npu} on {target.soc}"
    if allowed:
        said += "; allowed by the policy: " + ", ".join(f"{a['op']} ({a['reason']})" for a in allowed)
    if result.found:
        said = ", ".join(f"{f.kind} op {f.op} ({f.count} calls)" for f in result.found) + f" — {said}"
    run.add(f"ops.{which}", not result.found, said, f"ops.{which}")


def _figure(load: dict, path: tuple[str, ...]) -> float | None:
    value: Any = load
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def deployment(policy: Policy, policy_path: Path, endpoint: str | None) -> dict[str, Any] | None:
    """The deployment the smoke stage asks (the command line's --endpoint, else the policy's), as
    `stages.smoke` takes it; None: serve the model here."""
    import os

    url = endpoint or policy.deployment.endpoint
    if url is None:
        return None
    tokenizer = policy.deployment.tokenizer
    variable = policy.deployment.api_key_env
    return {"url": url, "served_model": policy.deployment.model, "api_key": os.environ.get(variable) or None,
            "key_hint": f"set {variable} (the policy's deployment.api_key_env) to the deployment's key",
            "tokenizer_dir": (policy_path.parent / tokenizer) if tokenizer else None}


def stage_smoke(run: GateRun) -> None:
    """Serve the converted model (or ask the deployment), ask the policy's prompts, run the load and
    the stability figures; decide prompts, agreement, the answer checks and the performance limits."""
    smoke, policy = run.policy.smoke, run.policy
    prompts = [("chat" if p.chat else "plain", p.prompt) for p in smoke.prompts] or None
    measures = {"requests": smoke.load.requests, "concurrency": smoke.load.concurrency,
                "prompt_len": smoke.load.prompt_len, "load_tokens": smoke.load.tokens, "sessions": smoke.load.sessions,
                "turns": smoke.load.turns, "long_context": policy.performance.long_context}
    # An unquantized conversion is the source's weights, cast (verify proves it): transformers runs them
    # as they are. A quantized one is compared with the source its manifest names (run_smoke's rule).
    report = stages.smoke(run.converted, prompts=prompts, max_tokens=smoke.max_tokens, measures=measures,
                          runtime=policy.runtime.model_dump(), endpoint=run.endpoint)
    run.stages["smoke"] = report
    if run.endpoint is not None and not judge_endpoint(run, report):
        return
    if not smoke.prompts:  # the fixed prompts: a refused one is a failure too, not only an unjudged answer
        refused = [r for r in report["results"] if r["status"] == "error"]
        run.add("smoke.prompts", not refused, f"{len(report['results']) - len(refused)}/{len(report['results'])} "
                f"of the fixed prompts answered" + (f"; {refused[0]['prompt']!r}: {refused[0]['error']}" if refused
                                                    else ""), "smoke.prompts")
    for i, (p, r) in enumerate(zip(smoke.prompts, report["results"]), 1):
        if r["status"] == "error":
            run.add(f"smoke.prompts[{i}]", False, f"{p.prompt!r}: refused ({r['error']})", f"smoke.prompts[{i}]")
            continue
        if not p.expect:
            continue
        text = r["text"].lower() if p.ignore_case else r["text"]
        missing = [e for e in p.expect if (e.lower() if p.ignore_case else e) not in text]
        answer = " ".join(r["text"].split())
        run.add(f"smoke.prompts[{i}]", not missing,
                f"{p.prompt!r} → {answer!r}" + (f" lacks {', '.join(map(repr, missing))}" if missing else ""),
                f"smoke.prompts[{i}]")
    compared = [r for r in report["results"] if r["status"] in ("match", "tie", "mismatch")]
    if smoke.same_weights and report.get("not_compared"):
        run.add("smoke.same_weights", None, f"the deployment's answers: {report['not_compared']}",
                "smoke.same_weights")
    elif smoke.same_weights and run.quantized:
        run.add("smoke.same_weights", None, "quantized weights: transformers cannot run msModelSlim's layout, so "
                                            "the runtime is compared with the source (smoke.min_greedy_agreement)",
                "smoke.same_weights")
    elif smoke.same_weights:
        bad = [r for r in compared if r["status"] == "mismatch"]
        run.add("smoke.same_weights", not bad and len(compared) == len(report["results"]),
                f"{report['prompts_agreeing']}/{report['prompts']} prompts give transformers' greedy tokens on the "
                f"same weights" + (f"; first mismatch: {bad[0]['prompt']!r} at token {bad[0]['index']}" if bad
                                   else ""), "smoke.same_weights")
    if smoke.min_greedy_agreement is not None:
        agreement = report.get("greedy_agreement")
        against = f"the source {report['reference']}" if run.quantized else "transformers on the converted weights"
        if agreement is None:
            why = (report.get("not_compared") or ("no source to compare with (the manifest's source is gone)"
                                                  if run.quantized else "the server refused every prompt"))
            run.add("smoke.min_greedy_agreement", False, f"not measured: {why}", "smoke.min_greedy_agreement")
        else:
            run.add("smoke.min_greedy_agreement", agreement >= smoke.min_greedy_agreement,
                    f"{agreement:.1%} of the greedy tokens of {against} reproduced "
                    f"(minimum {smoke.min_greedy_agreement:.0%})", "smoke.min_greedy_agreement")
    load = report["load"]
    run.add("smoke.load", load["failed"] == 0, f"{load['requests'] - load['failed']}/{load['requests']} load "
                                               f"requests answered" + (f"; {load['errors'][0]}" if load["errors"]
                                                                       else ""), "smoke.load")
    judge_stability(run, report["stability"])
    for key, (path, text, floor) in PERFORMANCE.items():
        limit = getattr(policy.performance, key)
        if limit is None:
            continue
        value = _figure(report, path)
        if value is None:
            run.add(f"performance.{key}", False, f"{text.split(' {')[0]} not measured", f"performance.{key}")
            continue
        ok = value >= limit if floor else value <= limit
        run.add(f"performance.{key}", ok, f"{text.format(v=value)}, {'floor' if floor else 'ceiling'} {limit:g}",
                f"performance.{key}")


def judge_endpoint(run: GateRun, report: dict[str, Any]) -> bool:
    """The deployment's own rules: reached (else nothing more can be decided: False), and each answer
    check (the same answer twice, streamed = plain, limits, stop strings, usage)."""
    if report.get("error"):
        run.add("deployment.endpoint", False, report["error"], "deployment.endpoint")
        return False
    info = report["endpoint"]
    absent = [name for name, there in info["extras"].items() if not there]
    run.add("deployment.endpoint", True, f"{info['url']} serves {info['model']}"
            + (f"; absent (vLLM's extras): {', '.join(absent)}" if absent else "; every vLLM extra present"),
            "deployment.endpoint")
    for check, summary in report["answer_checks"].items():
        said = summary["first_failure"] or summary["detail"]
        run.add(f"deployment.answers.{check}", summary["first_failure"] is None,
                f"{summary['passed']}/{summary['checked']}: {said}", "deployment.endpoint")
    return True


def judge_stability(run: GateRun, stability: dict[str, Any]) -> None:
    """Every turn of the interleaved sessions answered; long context, where the policy asks for it."""
    sessions = stability.get("session_switch")
    if sessions is not None:
        run.add("smoke.sessions", sessions["failed"] == 0,
                f"{sessions['sessions']} conversations x {sessions['turns']} turns interleaved"
                + (f"; {sessions['failed']} turn(s) failed: {sessions['errors'][0]}" if sessions["failed"] else
                   ", every turn answered"), "smoke.load.sessions")
    long = stability.get("long_context")
    if run.policy.performance.long_context:
        from runtime.evaluation.smoke import stability_lines

        said = stability_lines({"long_context": long})[0] if long else "long context: not measured"
        run.add("performance.long_context", bool(long and long["ok"]), said, "performance.long_context")


def stage_sweep(run: GateRun, progress: bool) -> None:
    """The optional batch-size sweep: its table goes in the reports, its plot beside them."""
    sweep = run.policy.sweep
    report = stages.bench(run.converted, device=run.policy.runtime.device, progress=progress, workloads=[],
                          baselines=[], prompt_len=sweep.prompt_len, new_tokens=sweep.new_tokens, repeat=1,
                          sweep_sizes=sweep.sizes, tpot_ms=sweep.tpot_ms)
    run.stages["sweep"] = report["sweep"]
    try:
        import matplotlib  # noqa: F401 - only to know whether the plot can be drawn

        from runtime.evaluation.bench.sweep_plot import plot_sweep
    except ImportError:
        run.stages["sweep"]["plot_note"] = "matplotlib is not installed: pip install 'ascend-deploy-kit[plot]'"
        return
    run.report_dir.mkdir(parents=True, exist_ok=True)  # not made yet when --output is elsewhere
    plot = run.report_dir / "sweep.png"
    try:  # a drawing is a picture of the figures, not a rule: it never turns the verdict into ERROR
        plot_sweep(report["sweep"], plot, f"{run.converted.name} ({report['dtype']}, {report['device']})")
    except Exception as exc:  # noqa: BLE001 - said in the reports instead
        run.stages["sweep"]["plot_note"] = f"the plot could not be drawn ({type(exc).__name__}: {first_line(exc)})"
        return
    run.plot = plot


# -- the pipeline ------------------------------------------------------------------------------------
def run_gate(model: Path, policy_path: Path, policy: Policy, report_dir: Path, output: Path | None = None,
             force: bool = False, progress: bool = False, say: Callable[[str], None] = print,
             debug: bool = False, endpoint: str | None = None) -> GateRun:
    """Every stage in order; the run's rules, stage reports and any error (which stops it). `endpoint`:
    the deployment to smoke-test (the command line's; else the policy's; else the model is served here)."""
    run = GateRun(model, policy_path, policy, report_dir, endpoint=deployment(policy, policy_path, endpoint))
    output = output or report_dir / "converted"
    pipeline: list[tuple[str, Callable[[], None]]] = [
        ("doctor", lambda: stage_doctor(run)),
        ("convert", lambda: stage_convert(run, output, force, progress)),
    ]
    if policy.preflight.check:
        pipeline.append(("preflight", lambda: stage_preflight(run)))
    pipeline += [(f"check_ops {w}", lambda w=w: stage_check_ops(run, w))
               for w in ("model", "runtime") if getattr(policy.ops, w)]
    if policy.smoke.check or run.endpoint is not None:
        pipeline.append(("smoke" if run.endpoint is None else f"smoke {run.endpoint['url']}", lambda: stage_smoke(run)))
    if policy.sweep is not None:
        pipeline.append(("sweep", lambda: stage_sweep(run, progress)))
    # an error stops the run (later stages need what the failed one makes) and is the run's verdict;
    # --debug lets it through with its traceback instead
    runner = StageRunner(len(pipeline), LogLines(say), errors="raise" if debug else "stage", seconds=run.seconds)
    for name, stage in pipeline:
        before = len(run.rules)
        try:
            runner.run(name, stage)
        except StageError as exc:
            run.error = str(exc)
            break
        for rule in run.rules[before:]:
            if rule.status == FAIL:
                say(f"      FAIL {rule.id}: {rule.message}")
    if not policy.smoke.check and run.endpoint is None and run.error is None:  # a rule, so the reports show what this run did not decide
        run.add("smoke", None, "not served here (smoke.check = false): the prompts, the greedy agreement and the "
                               "load are decided where the model is deployed", "smoke.check")
    return run


def print_verdict(run: GateRun, stream=sys.stdout) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=stream, width=None if stream.isatty() else 140)
    table = Table(title=f"ascendkit gate {run.model} — policy {run.policy_path}", title_justify="left")
    for column in ("rule", "result", "detail"):
        table.add_column(column)
    colours = {PASS: "green", FAIL: "red", SKIP: "yellow"}
    for r in run.rules:
        table.add_row(r.id, f"[{colours[r.status]}]{r.status}[/]", escape(r.message))  # answers hold brackets
    console.print(table)
    if run.error:
        console.print(f"[bold red]ERROR[/] {escape(run.error)}", highlight=False)
    elif run.failed:
        console.print(f"[bold red]FAIL[/]: {len(run.failed)} rule(s) failed: "
                      + ", ".join(r.id for r in run.failed), highlight=False)
    else:
        console.print(f"[bold green]PASS[/]: {len(run.rules)} rules", highlight=False)

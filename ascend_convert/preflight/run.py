"""One preflight: read the checkpoint's metadata, apply every rule of the engine release for the
deployment, and return the findings (what `ascendkit preflight` prints, `gate` judges and `convert`
refuses on)."""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from .check_files import check_files
from .check_mla import check_mla
from .check_model import check_model
from .check_mtp import check_mtp
from .check_nz import check_nz
from .check_parallel import check_parallel
from .check_quant import check_quant
from .checkpoint import Checkpoint, load_checkpoint, load_description
from .findings import ERROR, Collector, Finding
from .ruleset import DEFAULT_ENGINE, RuleSet, load_ruleset
from .target import deployment


@dataclass
class PreflightResult:
    model: str
    rules: RuleSet
    target: dict
    tensors: int
    files: int
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)
    accepted: list[dict] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    def exit_code(self, strict: bool = False) -> int:
        """0 clean, 1 findings (errors; warnings too with --strict)."""
        return 1 if (self.findings if strict else self.errors) else 0


def run_preflight(model_dir: Path, *, soc: str = "ascend910b", dtype: str = "auto", tp: int = 1, ep: int = 1,
                  quantization: bool | None = None, engine: str = DEFAULT_ENGINE, rules_file: Path | None = None,
                  nz_mode: int | None = None, rehash: bool = False, allowed: list[dict] | None = None,
                  scope: str | None = None) -> PreflightResult:
    """`allowed`: `allow.load_allow`'s accepted findings. `scope` "checkpoint": only the rules about
    the files themselves (what convert refuses on), not the deployment's (SoC support, TP size, NZ)."""
    root = Path(model_dir)
    rules = load_ruleset(engine, rules_file)
    target = deployment(soc, dtype, tp, ep, quantization)
    facts = rules.facts
    mode = facts["nz"]["default_mode"] if nz_mode is None else nz_mode
    out = Collector(rules)
    ckpt = load_checkpoint(root, facts, out)
    load_description(ckpt, facts, out)
    check_files(ckpt, out, rehash)
    check_model(ckpt, target, facts, out)
    check_mla(ckpt, target, facts, out)
    check_quant(ckpt, target, facts, out)
    check_mtp(ckpt, facts, out)
    check_parallel(ckpt, target, facts, out)
    check_nz(ckpt, target, mode, facts, out)
    found = [dataclasses.replace(f, file=_locate(ckpt, f)) for f in out.findings
             if scope is None or rules.rules[f.rule].scope == scope]
    found, accepted = split_allowed(found, allowed or [])
    info = {"engine": rules.engine, "release": rules.release, "soc": soc, "dtype": target.model_dtype(ckpt.text_config()),
            "tp": tp, "ep": ep, "nz_mode": mode, "quantized": ckpt.description is not None,
            "rules": len(rules.rules), "scope": scope or "all"}
    return PreflightResult(str(model_dir), rules, info, len(ckpt.tensors), len(ckpt.weight_files), found, out.notes,
                           accepted)


def _locate(ckpt: Checkpoint, f: Finding) -> str:
    """The file a finding points at: the weight file holding its tensor, the description, the config."""
    first = f.subject.split(",")[0].split(" ")[0]
    if first in ckpt.tensors:
        return ckpt.tensors[first].file
    if f.rule.startswith("quant.") and ckpt.description_file and f.rule not in ("quant.leftover_config",):
        return ckpt.description_file
    if f.subject.startswith("config.json") or f.rule.startswith(("model.", "tp.", "ep.")):
        return "config.json"
    if (ckpt.root / first).is_file():
        return first
    return ""


def split_allowed(found: list[Finding], allowed: list[dict]) -> tuple[list[Finding], list[dict]]:
    """(findings still standing, accepted ones with their reasons). An entry names a rule and,
    optionally, a subject glob (`model.layers.*.mlp.experts`)."""
    remaining, accepted = [], []
    for f in found:
        entry = next((e for e in allowed if e["rule"] == f.rule
                      and fnmatch.fnmatchcase(f.subject, e.get("subject", "*"))), None)
        if entry is None:
            remaining.append(f)
        else:
            accepted.append({"rule": f.rule, "subject": f.subject, "reason": entry["reason"]})
    return remaining, accepted

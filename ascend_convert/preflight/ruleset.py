"""An engine release's loader rules, read from `rules/<engine>-<release>.json`.

A rule set holds the loader's facts as it was read (the description file's name, the packed-module
map per `model_type`, each registered quant scheme with the tensors, dtypes and shapes its method
declares, the supported-models matrix, the FRACTAL_NZ policy) and its rules, each with the action
the loader takes and the file and line it was read from. Adding a release is adding a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ascend_common.errors import UserError

from .findings import ERROR, WARNING, Finding

DEFAULT_ENGINE = "vllm-ascend"


@dataclass(frozen=True)
class Rule:
    id: str
    what: str  # what the rule checks, one sentence (SARIF's shortDescription)
    action: str  # what the loader does when it is broken
    source: str  # where in the engine's code (or docs, or a maintainer's word) it was read
    severity: str = ERROR
    #: "checkpoint": a property of the files (convert refuses to publish them); "deployment": of the
    #: deployment (SoC, TP size, engine settings), reported by convert but not refused
    scope: str = "checkpoint"


@dataclass(frozen=True)
class RuleSet:
    engine: str
    release: str
    date: str
    read_from: str
    rules: dict[str, Rule]
    facts: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.engine}@{self.release}"

    def finding(self, rule_id: str, subject: str, message: str, severity: str | None = None) -> Finding | None:
        """The finding of rule `rule_id`, or None where this release has no such rule."""
        rule = self.rules.get(rule_id)
        if rule is None:
            return None
        return Finding(rule_id, subject, message, rule.action, rule.source, severity or rule.severity)


def _rules_dir():
    return resources.files(__package__) / "rules"


def shipped() -> dict[str, list[str]]:
    """engine → its shipped releases, newest (by the date each was read from) first."""
    found: dict[str, list[tuple[str, str]]] = {}
    for entry in _rules_dir().iterdir():
        if entry.name.endswith(".json"):
            data = json.loads(entry.read_text(encoding="utf-8"))
            found.setdefault(data["engine"], []).append((data["date"], data["release"]))
    return {engine: [r for _, r in sorted(releases, reverse=True)] for engine, releases in found.items()}


def load_ruleset(engine: str = DEFAULT_ENGINE, rules_file: Path | None = None) -> RuleSet:
    """`--engine NAME[@RELEASE]` (a shipped rule set; the newest release without @), or `--rules FILE`."""
    if rules_file is not None:
        try:
            return parse_ruleset(json.loads(Path(rules_file).read_text(encoding="utf-8")), str(rules_file))
        except FileNotFoundError:
            raise UserError(f"--rules {rules_file}: no such file") from None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"--rules {rules_file}: not a JSON rule set ({exc})") from None
    name, _, release = engine.partition("@")
    available = shipped()
    if name not in available:
        raise UserError(f"--engine {engine}: no shipped rules for {name} (shipped: {', '.join(sorted(available))})")
    release = release or available[name][0]
    if release not in available[name]:
        raise UserError(f"--engine {engine}: no shipped rules for {name} release {release} "
                        f"(shipped: {', '.join(available[name])}); pass --rules FILE for another")
    path = _rules_dir() / f"{name}-{release}.json"
    return parse_ruleset(json.loads(path.read_text(encoding="utf-8")), path.name)


def parse_ruleset(data: Any, where: str) -> RuleSet:
    """Check a rule set's shape: every rule with its action and source (a rule without a source is
    an invented one, and refused)."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: a rule set is a JSON object")
    missing = [k for k in ("engine", "release", "date", "read_from", "rules", "facts") if k not in data]
    if missing:
        raise UserError(f"{where}: missing field(s) {', '.join(missing)}")
    rules = {}
    for rule_id, rule in data["rules"].items():
        if not isinstance(rule, dict) or not all(isinstance(rule.get(k), str) and rule[k].strip()
                                                 for k in ("what", "action", "source")):
            raise UserError(f"{where}: rule {rule_id}: needs 'what', 'action' and 'source' (the loader's file and line)")
        severity = rule.get("severity", ERROR)
        if severity not in (ERROR, WARNING):
            raise UserError(f"{where}: rule {rule_id}: severity {severity!r} is not error or warning")
        scope = rule.get("scope", "checkpoint")
        if scope not in ("checkpoint", "deployment"):
            raise UserError(f"{where}: rule {rule_id}: scope {scope!r} is not checkpoint or deployment")
        rules[rule_id] = Rule(rule_id, rule["what"], rule["action"], rule["source"], severity, scope)
    return RuleSet(data["engine"], data["release"], data["date"], data["read_from"], rules, data["facts"])

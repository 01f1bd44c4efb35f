"""What a preflight check produces: findings (what the loader would do wrong, with the rule's
source) and notes (what was checked and found fine, or could not be checked, and why)."""

from __future__ import annotations

from dataclasses import dataclass

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Finding:
    """One rule broken by one subject (a tensor, a config field, a file).

    `action` is what the target loader does with it, in its words: refuse (raises at load), skip
    (loads without it), cast (converts the values), garbage (loads uninitialised or wrong values),
    fail at NZ (the FRACTAL_NZ cast at load). `severity` error: the model does not load or loads
    wrong; warning: it loads, but not as the checkpoint's author meant (or untested)."""

    rule: str
    subject: str
    message: str
    action: str
    source: str
    severity: str = ERROR
    file: str = ""  # the file the subject is in, relative to the checkpoint (SARIF's location)

    @property
    def line(self) -> str:
        """The one line CI logs are grepped for."""
        return f"{self.severity} {self.rule}: {self.subject}: {self.message}"


class Collector:
    """What the checks add to: findings of the rule set's rules (a rule the release lacks is not
    applied) and notes (what was checked and is fine, or what could not be checked, and why)."""

    def __init__(self, rules) -> None:  # rules: ruleset.RuleSet
        self.rules = rules
        self.findings: list[Finding] = []
        self.notes: list[str] = []

    def add(self, rule_id: str, subject: str, message: str, severity: str | None = None) -> None:
        finding = self.rules.finding(rule_id, subject, message, severity)
        if finding is not None:
            self.findings.append(finding)

    def note(self, text: str) -> None:
        self.notes.append(text)

"""Operator coverage checks for Ascend NPUs (check_ops). Where it sits among the packages:
docs/ARCHITECTURE.md; what it reports: the README's check_ops section."""

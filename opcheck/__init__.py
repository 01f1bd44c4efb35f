"""Operator coverage checks for Ascend NPUs (check_ops): see DESIGN.md §check_ops."""

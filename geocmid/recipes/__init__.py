"""Analyst recipes: one YAML file runs a workflow (validate → plan → run → report)."""

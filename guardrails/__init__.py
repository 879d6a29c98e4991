"""Guardrails judge: pure, deterministic functions callable from workflows and tests."""

from guardrails.calls import CallVerdict, check_call, schema_problems

__all__ = ["CallVerdict", "check_call", "schema_problems"]

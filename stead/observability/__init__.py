"""Seeing runs: OpenTelemetry metrics and traces, logs, stuck-run detection."""

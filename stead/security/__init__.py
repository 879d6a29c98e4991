"""Payload encryption and its codec server, Temporal TLS, tool secrets and redaction."""

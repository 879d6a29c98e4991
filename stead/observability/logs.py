"""Process logging: readable text as before, or one JSON object per line that says which run
(and which trace) each line belongs to.

    configure_logging(settings)          # at process start: stead up / stead worker / worker.py

``STEAD_LOG_FORMAT=json`` writes lines such as::

    {"time": "2025-05-01T09:30:12.345Z", "level": "INFO", "logger": "stead.agents.ops.tools",
     "message": "restarting checkout-api", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
     "span_id": "00f067aa0ba902b7", "workflow_id": "acme-ops-1a2b3c4d5e6f",
     "run_id": "0196...", "activity": "tool.restart_service", "tenant": "acme", "agent": "ops"}

``trace_id``/``span_id`` come from the current OpenTelemetry span (with tracing on, the
``execute_tool`` or ``chat`` span a line was written under; in workflow code, the run's
``invoke_agent`` span), so a log line leads to its trace and back. ``workflow_id``, ``run_id``
and ``activity`` come from Temporal's activity and workflow context, ``tenant`` and ``agent``
from the run the activity works for (:class:`RunLogContext`) or the workflow's search
attributes. Keys are present only when known; an exception adds ``exception`` (its traceback).

Secrets never reach a handler: :func:`configure_logging` installs the process-wide record
redaction of :mod:`stead.security.secrets` (credential and PII patterns, known secret values,
``STEAD_REDACT_PATTERNS``) for both formats.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import opentelemetry.trace as otel
from temporalio import activity, workflow
from temporalio.common import SearchAttributeKey
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from stead.contracts.models import RunRef
from stead.security.secrets import Redactor, install_log_redaction
from stead.settings import Settings

__all__ = ["TEXT_FORMAT", "JsonFormatter", "RunContextFilter", "RunLogContext",
           "configure_logging"]

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The text format stead's processes have always used."""

_TENANT_KEY: Final = SearchAttributeKey.for_keyword("SteadTenant")
_AGENT_KEY: Final = SearchAttributeKey.for_keyword("SteadAgent")
_CONTEXT_ATTR: Final = "stead_context"
"""LogRecord attribute holding the fields :class:`RunContextFilter` found."""


@dataclass(frozen=True)
class _Run:
    tenant: str
    agent: str


_RUN: ContextVar[_Run | None] = ContextVar("stead_log_run", default=None)


class RunLogContext(Interceptor):
    """Worker interceptor: while an activity runs for a run (its input carries a ``RunRef``
    as ``ref``), log lines know that run's tenant and agent."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _RunActivityContext(next)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunLogContext)  # stateless: any instance does the same

    def __hash__(self) -> int:
        return hash(RunLogContext)


class _RunActivityContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        ref = getattr(input.args[0], "ref", None) if input.args else None
        if not isinstance(ref, RunRef):
            return await self.next.execute_activity(input)
        token = _RUN.set(_Run(tenant=ref.tenant, agent=ref.agent))
        try:
            return await self.next.execute_activity(input)
        finally:
            _RUN.reset(token)


class RunContextFilter(logging.Filter):
    """Attaches trace, span, workflow, run, activity, tenant and agent to each record, in the
    thread (and task) that logs it: formatters may run later or elsewhere."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, _CONTEXT_ATTR):
            setattr(record, _CONTEXT_ATTR, _context(record))
        return True


def _context(record: logging.LogRecord) -> dict[str, str]:
    fields: dict[str, str] = {}
    span = otel.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = otel.format_trace_id(span.trace_id)
        fields["span_id"] = otel.format_span_id(span.span_id)
    run = _RUN.get()
    if activity.in_activity():
        info = activity.info()
        fields.update(workflow_id=info.workflow_id or "", run_id=info.workflow_run_id or "",
                      activity=info.activity_type)
    elif workflow.in_workflow():
        winfo = workflow.info()
        fields.update(workflow_id=winfo.workflow_id, run_id=winfo.run_id)
        attrs = winfo.typed_search_attributes
        tenant, agent = attrs.get(_TENANT_KEY), attrs.get(_AGENT_KEY)
        if tenant and agent:
            run = _Run(tenant=tenant, agent=agent)
    else:  # Temporal's own records about a task (e.g. a failed activation) name it in extra
        details = getattr(record, "temporal_activity", None) or \
            getattr(record, "temporal_workflow", None)
        if isinstance(details, dict):
            fields.update({k: str(details[src]) for k, src in (
                ("workflow_id", "workflow_id"), ("run_id", "workflow_run_id"),
                ("run_id", "run_id"), ("activity", "activity_type")) if details.get(src)})
    if run is not None:
        fields.update(tenant=run.tenant, agent=run.agent)
    return {k: v for k, v in fields.items() if v}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ms), level, logger, message, context fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        for key in ("temporal_activity", "temporal_workflow"):
            # Temporal's adapters append their details to the text; here they are fields.
            details = getattr(record, key, None)
            suffix = f" ({details})"
            if details is not None and message.endswith(suffix):
                message = message[: -len(suffix)]
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname, "logger": record.name, "message": message}
        context = getattr(record, _CONTEXT_ATTR, None)
        doc.update(context if isinstance(context, dict) else _context(record))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # set (already redacted) by stead.secrets' record factory
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return json.dumps(doc, ensure_ascii=False, default=str)


_HANDLER_NAME: Final = "stead"


def configure_logging(settings: Settings, *, stream: TextIO | None = None,
                      level: int | str | None = None,
                      redactor: Redactor | None = None) -> logging.Handler:
    """Send the root logger's records to ``stream`` (default stderr) in
    ``STEAD_LOG_FORMAT`` at ``STEAD_LOG_LEVEL`` (or ``level``), redacted by ``redactor``
    (default: what the settings know, ``Redactor.from_settings``).

    Calling it again replaces the handler it installed before (never a second copy of each
    line); handlers others installed are left alone. Returns the handler."""
    install_log_redaction(redactor if redactor is not None else Redactor.from_settings(settings))
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    if settings.telemetry.log_format == "json":
        handler.setFormatter(JsonFormatter())
        handler.addFilter(RunContextFilter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level if level is not None else settings.telemetry.log_level)
    return handler

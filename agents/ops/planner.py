"""The ops agent's offline model: a small rule-based planner, not a table of canned replies.

It reads the request (intent words, service names), plans tool calls, reacts to what the
tools returned (a rejected call is corrected, an unknown tool is replaced, a failed tool is
reported) and writes the answer from the tool results. It is a pure function of the
transcript, so a retried or replayed model call gives the same turn. Like a real model it
sometimes gets a call wrong first — a service named loosely in the request ("Checkout API") is
first passed under the wrong field — and recovers from the error it gets back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from stead.contracts.models import Message, ModelTurn, ToolCall, ToolSchema
from stead.integrations.llm import FunctionModel, ToolHistory, tool_history

_INTENTS: dict[str, tuple[str, ...]] = {
    "status": ("status", "health", "healthy", "down", "up?", "check", "how is", "state",
               "slow", "latency", "error", "500", "failing", "broken", "outage", "look"),
    "logs": ("log", "logs", "why", "error", "errors", "500", "crash", "exception", "failing",
             "investigate", "diagnose", "root cause"),
    "ticket": ("ticket", "incident", "open a", "file a", "jira", "track", "report"),
    "restart": ("restart", "bounce", "reboot", "recycle", "kick"),
    "page": ("page", "on-call", "oncall", "wake", "escalate"),
}

_KEBAB = re.compile(r"\b[a-z0-9]+(?:-[a-z0-9]+)+\b")




def intents(text: str) -> list[str]:
    low = text.lower()
    found = [name for name, words in _INTENTS.items()
             if any(re.search(r"(?<![a-z])" + re.escape(w), low) for w in words)]
    return found or ["status"]


def find_service(text: str, known: Sequence[str]) -> tuple[str | None, bool]:
    """(service, written exactly) — matches kebab-case names or their words in any order."""
    low = text.lower()
    for token in _KEBAB.findall(low):
        if not known or token in known:
            return token, True
    for name in known:
        parts = name.split("-")
        if all(re.search(r"\b" + re.escape(p) + r"\b", low) for p in parts):
            return name, False
    for name in known:  # "checkout is failing" -> checkout-api
        if re.search(r"\b" + re.escape(name.split("-")[0]) + r"\b", low):
            return name, False
    return None, False


class OpsPlanner:
    """Plans the ops agent's next turn from the transcript."""

    def __init__(self) -> None:
        self.model = FunctionModel(self.next_turn, name="scripted:ops")

    def next_turn(self, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        request = next((m.content or "" for m in messages if m.role == "user"), "")
        done = tool_history(messages)
        turn_no = sum(1 for m in messages if m.role == "assistant")
        available = {t.name for t in tools}
        wanted = intents(request)

        def call(name: str, args: dict[str, Any]) -> ModelTurn:
            return ModelTurn(tool_calls=[ToolCall(id=f"call_{turn_no}_{name}", name=name,
                                                  arguments=json.dumps(args))])

        known = done.results.get("list_services", {}).get("services", [])
        service, exact = find_service(request, known)
        if service is None or (not exact and not known):
            if "list_services" not in done.results and "list_services" in available:
                return call("list_services", {})
            if service is None:
                names = ", ".join(known) or "none"
                return ModelTurn(content=f"I could not tell which service you mean. Known "
                                         f"services: {names}. Please name one.")
        assert service is not None

        # 1. status first: it decides priority and whether a restart makes sense.
        if "status" in wanted or "restart" in wanted or "ticket" in wanted:
            status_calls = [c for c in done.calls if c.name == "service_status"]
            if "service_status" not in done.results and "service_status" not in done.errors:
                if not exact and not status_calls:
                    # The loose-name slip: wrong field and raw wording, as models do.
                    raw = _loose_name(request, service)
                    return call("service_status", {"name": raw})
                return call("service_status", {"service": service})
            if (done.errors.get("service_status", {}).get("type") == "invalid_arguments"
                    and len(status_calls) < 2):
                return call("service_status", {"service": service})

        if "logs" in wanted and "recent_logs" not in done.results \
                and "recent_logs" not in done.errors:
            return call("recent_logs", {"service": service, "limit": 20})

        status = done.results.get("service_status", {})
        if "restart" in wanted and "restart_service" not in done.results \
                and "restart_service" not in done.errors:
            return call("restart_service", {"service": service,
                                            "reason": _reason(request, status)})

        paged = any(c.name == "page_oncall" for c in done.calls)
        if "page" in wanted and not paged:
            # No paging tool exists; a model would still try the obvious name first.
            return call("page_oncall", {"service": service, "urgency": "high"})

        if ("ticket" in wanted or ("page" in wanted and "page_oncall" in done.errors)) \
                and "create_ticket" not in done.results and "create_ticket" not in done.errors:
            priority = _priority(status, "page" in wanted)
            return call("create_ticket", {
                "service": service,
                "title": f"{service}: {status.get('status', 'needs attention')}"[:200],
                "priority": priority,
                "body": _ticket_body(request, done),
            })
        answer = _answer(service, done, wanted)
        advice = runbook_advice(messages, service)
        return ModelTurn(content=f"{answer} {advice}" if advice else answer)


def _sentence(text: object) -> str:
    """End a quoted message with exactly one full stop."""
    return str(text).rstrip().rstrip(".") + "."


def _loose_name(request: str, service: str) -> str:
    parts = service.split("-")
    m = re.search(r"\b" + r"\W+".join(re.escape(p) for p in parts) + r"\b", request,
                  re.IGNORECASE)
    return m.group(0) if m else service


def _priority(status: dict[str, Any], paged: bool) -> str:
    s = status.get("status")
    if s == "down" or paged:
        return "urgent" if s == "down" else "high"
    if s == "degraded":
        return "high"
    return "medium"


def _reason(request: str, status: dict[str, Any]) -> str:
    s = status.get("status")
    base = f"requested: {request.strip()}"[:300]
    return f"{base} (status {s})" if s else base


def _ticket_body(request: str, done: ToolHistory) -> str:
    lines = [f"Request: {request.strip()}"]
    if "service_status" in done.results:
        s = done.results["service_status"]
        lines.append(f"Status: {s.get('status')} (error rate {s.get('error_rate', 0):.1%}, "
                     f"p95 {s.get('p95_ms')} ms, version {s.get('version')})")
    if "recent_logs" in done.results:
        lines.append("Recent errors:")
        lines += [f"  {ln}" for ln in done.results["recent_logs"].get("lines", [])
                  if ln.startswith("ERROR")][:5]
    return "\n".join(lines)


def recalled(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Items from the run's recalled-memory message (see AgentWorkflow._recall)."""
    items: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system" and (m.content or "").startswith("Recalled memory"):
            for line in (m.content or "").splitlines()[1:]:
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(item, dict) and isinstance(item.get("text"), str):
                    items.append(item)
    return items


def runbook_advice(messages: Sequence[Message], service: str) -> str | None:
    """The remedy from the best recalled runbook about ``service``, if memory had one."""
    for item in recalled(messages):
        text: str = item["text"]
        if item.get("namespace") != "runbooks" or f"({service})" not in text:
            continue
        title = text.split(f" ({service})", 1)[0]
        remedy = text.split("Remedy:", 1)[1].strip() if "Remedy:" in text else ""
        first = remedy.split(". ")[0].rstrip(".")
        if first:
            return f"Runbook “{title}” says: {first}."
    return None


def _answer(service: str, done: ToolHistory, wanted: list[str]) -> str:
    parts: list[str] = []
    status = done.results.get("service_status")
    if status:
        via = " (via health probe; metrics unavailable)" if status.get("source") == "probe" \
            else ""
        parts.append(f"{service} is {status['status']}: error rate "
                     f"{status['error_rate']:.1%}, p95 {status['p95_ms']} ms, version "
                     f"{status['version']}{via}.")
    elif "service_status" in done.errors:
        err = done.errors["service_status"]
        parts.append(f"I could not determine the status of {service}: "
                     f"{_sentence(err.get('message', 'the status tools failed'))}")
    logs = done.results.get("recent_logs")
    if logs:
        errors = [ln for ln in logs.get("lines", []) if ln.startswith("ERROR")]
        if errors:
            common = max(set(errors), key=errors.count)
            parts.append(f"Recent logs show {len(errors)} error line(s); most frequent: "
                         f"“{common.removeprefix('ERROR ')}”.")
        else:
            parts.append("Recent logs show no errors.")
    elif "recent_logs" in done.errors:
        parts.append(f"I could not read its logs: "
                     f"{_sentence(done.errors['recent_logs'].get('message', 'log tool failed'))}")
    restart = done.results.get("restart_service")
    if restart:
        parts.append(f"I restarted {service} (restart #{restart['restart_id']}).")
    elif "restart_service" in done.errors:
        parts.append(f"The restart of {service} did not go through: "
                     f"{_sentence(done.errors['restart_service'].get('message', 'failed'))}")
    if "page_oncall" in done.errors:
        parts.append("There is no paging tool available to me, so I opened a ticket instead.")
    ticket = done.results.get("create_ticket")
    if ticket:
        parts.append(f"Opened ticket {ticket['ticket_id']} (priority {ticket['priority']}).")
    elif "create_ticket" in done.errors:
        parts.append(f"I could not open a ticket: "
                     f"{_sentence(done.errors['create_ticket'].get('message', 'failed'))}")
    return " ".join(parts) or f"Nothing to report on {service}."

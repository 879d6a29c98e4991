"""Structured logs: JSON lines that name their run and trace, text as before, secrets redacted.

Log lines come from real activity and workflow code on a real worker; the handler under test
is the one :func:`stead.observability.logs.configure_logging` installs, writing to a buffer.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import pytest
from _cli import STEAD, cli_env, stead
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from stead.authoring.agent import Agent, AgentCatalog
from stead.authoring.tools import ToolContext, tool
from stead.client import connect, start_run
from stead.contracts.models import Message, ModelTurn, RunRequest, ToolSchema
from stead.integrations.llm import FunctionModel, assistant_turns, call
from stead.observability.logs import TEXT_FORMAT, configure_logging
from stead.observability.tracing import SteadTracing
from stead.settings import Settings
from stead.worker import PASSTHROUGH, WorkerHost, worker_interceptors

API_KEY = "sk-proj8f7e6d5c4b3a2918a7b6c5d4e3f2"
TENANT_KEY = SearchAttributeKey.for_keyword("SteadTenant")
AGENT_KEY = SearchAttributeKey.for_keyword("SteadAgent")


class Key(BaseModel):
    key: str


class Value(BaseModel):
    value: str


def logging_agent() -> Agent:
    """Its one tool logs through Temporal's activity logger and through a plain logger."""
    @tool
    async def lookup(args: Key, ctx: ToolContext) -> Value:
        """Read a value."""
        activity.logger.info("looking up %s with key %s", args.key, API_KEY)
        logging.getLogger("tests.lookup").warning("plain logger in %s", args.key)
        return Value(value="42")

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        if assistant_turns(messages) == 0:
            return ModelTurn(tool_calls=[call("lookup", key="answer")])
        return ModelTurn(content="It is 42.")

    return Agent(name="logs", instructions="Look it up.", tools=[lookup],
                 offline_model=FunctionModel(plan, name="scripted:logs"))


@workflow.defn(name="LogProbe", sandboxed=True)
class LogProbe:
    """Logs once from workflow code (through the sandbox) and returns."""

    @workflow.run
    async def run(self, word: str) -> str:
        workflow.logger.info("probing %s", word)
        return word


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, list[logging.Handler]]]:
    """Restores the root logger (handlers, level) after a test configured logging."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buf = io.StringIO()
    yield buf, handlers
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def json_lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.startswith("{")]


async def test_activity_json_lines_carry_trace_span_run_and_tenant(
        settings: Settings, capture: tuple[io.StringIO, list[logging.Handler]]) -> None:
    """A tool's log lines (Temporal's activity logger and a plain one) are JSON objects with
    the trace and span of its execute_tool span, the workflow and run ids, the activity type,
    the run's tenant and agent; the key in the message is redacted."""
    buf, _ = capture
    s = settings.replace(log_format="json")
    configure_logging(s, stream=buf)
    exporter = InMemorySpanExporter()
    tracing = SteadTracing.from_settings(s.telemetry, exporters=[exporter])
    async with WorkerHost(s, AgentCatalog([logging_agent()]), tracing=tracing) as host:
        assert host.client is not None
        h = await start_run(host.client, RunRequest(agent="logs", input="what is it?",
                                                    tenant="acme"), temporal=s.temporal)
        assert (await h.result()).status == "completed"
    lines = json_lines(buf)
    [line] = [x for x in lines if x["message"].startswith("looking up")]
    [plain] = [x for x in lines if x["logger"] == "tests.lookup"]
    [tool_span] = [x for x in exporter.get_finished_spans() if x.name == "execute_tool lookup"]
    for entry in (line, plain):
        assert entry["trace_id"] == f"{tool_span.context.trace_id:032x}"
        assert entry["span_id"] == f"{tool_span.context.span_id:016x}"
        assert entry["workflow_id"] == h.id
        assert entry["run_id"] == h.result_run_id
        assert entry["activity"] == "tool.lookup"
        assert entry["tenant"] == "acme" and entry["agent"] == "logs"
    # Temporal's "(details)" suffix is gone: they are fields now.
    assert line["message"] == "looking up answer with key [REDACTED:openai_key]"
    assert line["level"] == "INFO" and plain["level"] == "WARNING"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert API_KEY not in buf.getvalue()
    # Lines about no run (the worker's own) carry no run fields.
    assert any("trace_id" not in x and "workflow_id" not in x for x in lines)


async def test_workflow_json_lines_name_the_run_and_its_tenant(
        settings: Settings, capture: tuple[io.StringIO, list[logging.Handler]]) -> None:
    """A line logged by workflow code carries the workflow and run ids, the tenant and agent
    from the run's search attributes and, with a traced client, the client's trace."""
    buf, _ = capture
    s = settings.replace(log_format="json")
    configure_logging(s, stream=buf)
    tracing = SteadTracing.from_settings(s.telemetry,
                                         exporters=[exporter := InMemorySpanExporter()])
    client = await connect(s, interceptors=tracing.interceptors)
    worker_client = await connect(s)
    async with Worker(worker_client, task_queue=s.temporal.task_queue, workflows=[LogProbe],
                      interceptors=worker_interceptors(tracing),
                      workflow_runner=SandboxedWorkflowRunner(
                          restrictions=SandboxRestrictions.default.with_passthrough_modules(
                              *PASSTHROUGH))):
        word = f"w{uuid.uuid4().hex[:6]}"
        result = await client.execute_workflow(
            "LogProbe", word, id=f"probe-{word}", task_queue=s.temporal.task_queue,
            search_attributes=TypedSearchAttributes([
                SearchAttributePair(TENANT_KEY, "acme"), SearchAttributePair(AGENT_KEY, "probe")]),
            execution_timeout=timedelta(seconds=30))
    assert result == word
    [line] = [x for x in json_lines(buf) if x["message"] == f"probing {word}"]
    [start] = [x for x in exporter.get_finished_spans()
               if x.name == "StartWorkflow:LogProbe"]
    assert line["workflow_id"] == f"probe-{word}"
    assert line["run_id"]
    assert line["tenant"] == "acme" and line["agent"] == "probe"
    assert line["trace_id"] == f"{start.context.trace_id:032x}"
    assert "activity" not in line


def test_text_format_stays_and_secrets_are_redacted(
        capture: tuple[io.StringIO, list[logging.Handler]]) -> None:
    """Text lines keep the old format; messages and tracebacks are redacted in both formats;
    configuring twice replaces stead's handler instead of doubling every line."""
    buf, before = capture
    configure_logging(Settings(log_format="text"), stream=buf)
    configure_logging(Settings(log_format="text", log_level="DEBUG"), stream=buf)
    assert len(logging.getLogger().handlers) == len(before) + 1
    assert logging.getLogger().level == logging.DEBUG
    log = logging.getLogger("tests.text")
    log.info("token=%s", "abcd1234efgh5678")
    try:
        raise RuntimeError(f"failed with {API_KEY}")
    except RuntimeError:
        log.exception("boom")
    text = buf.getvalue()
    first = text.splitlines()[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO tests\.text: "
                        r"token=\[REDACTED:credential\]", first), first
    assert TEXT_FORMAT == "%(asctime)s %(levelname)s %(name)s: %(message)s"
    assert "Traceback" in text and "[REDACTED:openai_key]" in text
    assert API_KEY not in text and "abcd1234efgh5678" not in text

    json_buf = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=json_buf)
    try:
        raise ValueError(f"bad {API_KEY}")
    except ValueError:
        log.error("failed %s", "again", exc_info=True)
    [entry] = json_lines(json_buf)
    assert entry["message"] == "failed again"
    assert entry["logger"] == "tests.text" and entry["level"] == "ERROR"
    assert "ValueError: bad [REDACTED:openai_key]" in entry["exception"]
    assert API_KEY not in json_buf.getvalue()
    assert {"trace_id", "workflow_id", "tenant"}.isdisjoint(entry)


async def test_stead_worker_logs_json_lines(settings: Settings) -> None:
    """``STEAD_LOG_FORMAT=json stead worker`` writes its start-up lines as JSON objects."""
    proc = await asyncio.create_subprocess_exec(
        str(STEAD), "worker", env=cli_env(settings, STEAD_LOG_FORMAT="json",
                                           STEAD_MEMORY_BACKEND="off"),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(60):
            while True:
                raw = await proc.stderr.readline()
                assert raw, f"worker exited: {seen}"
                seen.append(raw.decode())
                if "polling task queue" in seen[-1]:
                    break
    finally:
        proc.terminate()
        await proc.wait()
    entry = json.loads(seen[-1])
    assert entry["logger"] == "stead.worker" and entry["level"] == "INFO"
    assert entry["message"] == f"worker polling task queue {settings.temporal.task_queue!r}"


async def test_bad_log_format_is_a_settings_error(settings: Settings) -> None:
    """A format stead does not know stops the command with exit 2, naming the variable."""
    done = await stead("worker", env=cli_env(settings, STEAD_LOG_FORMAT="xml"))
    assert done.code == 2
    assert "STEAD_LOG_FORMAT" in done.err

"""Fuzzed run requests, from the Python client and as raw JSON through the ``temporal`` CLI.

Properties, for any payload:

- a payload ``RunRequest`` rejects fails the run at once, with pydantic's message naming every
  bad field, and leaves nothing in the ledger (the run never started); no payload at all
  (null) fails it as ``BadRunRequest``;
- an unknown agent fails the run naming the agents the worker serves, again without a ledger
  row;
- a valid request runs to a status of the closed set, with one finished ledger row, no
  half-claimed tool call and an intact audit chain — or waits for a human, which the stuck
  detector then lists as waiting (no run is left stuck);
- text the ``temporal`` CLI cannot parse as JSON starts nothing;
- the worker keeps serving: a good run completes after every batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _cli import run_cmd
from _fuzz import argv_text, bound, fuzz, json_text, json_values, near, run_property, text
from hypothesis import event, example, given
from hypothesis import strategies as st
from pydantic import ValidationError
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from stead.agents import reference_catalog
from stead.contracts.models import RunRequest, RunResult
from stead.observability.stuck import find_stuck
from stead.settings import Settings
from stead.stack.embedded import find_binary
from stead.storage.ledger import Ledger
from stead.worker import WorkerHost

STATUSES = {"completed", "failed", "denied", "refused", "escalated"}
SERVED = "unknown agent {agent!r}; this worker serves: ops, refund"
SETTLE_SECONDS = 45

GOOD = {"agent": "ops", "input": "is auth-service healthy?"}

run_fields: dict[str, st.SearchStrategy[Any]] = {
    "agent": st.sampled_from(["ops", "refund", "", "  ", "billing", "OPS"]) | text | json_values,
    "input": st.sampled_from(["is auth-service healthy?", "why is checkout-api failing?",
                              "refund order 1001", "restart search-worker", ""])
    | text | json_values,
    "tenant": st.sampled_from(["default", "acme", ""]) | text | json_values,
    "user": st.none() | text | json_values,
    "metadata": st.dictionaries(st.sampled_from(["role", "approval_timeout_seconds"]) | text,
                                st.sampled_from(["viewer", "0.5", "-1", "nan", "1e999"])
                                | text | json_values, max_size=3) | json_values,
    "max_steps": st.integers(min_value=-3, max_value=300) | json_values,
}


run_payloads: st.SearchStrategy[Any] = near(GOOD, run_fields) | json_values
"""RunRequest-shaped objects with bad, missing and extra fields, and any other JSON value."""


@pytest.fixture
async def reference_worker(settings: Settings, tmp_path: Path) -> AsyncIterator[Client]:
    """A worker serving both reference agents on this test's task queue."""
    async with WorkerHost(settings, reference_catalog(tmp_path)) as host:
        assert host.client is not None
        yield host.client


def expected_problem(payload_json: str) -> ValidationError | None:
    """What ``RunRequest`` says about this JSON (the worker decodes the same text)."""
    try:
        RunRequest.model_validate_json(payload_json)
    except ValidationError as e:
        return e
    return None


async def settle(client: Client, settings: Settings,
                 handle: WorkflowHandle[Any, RunResult]) -> RunResult | ApplicationError:
    """The run's result or failure cause. While it runs the stuck detector watches it: a run
    waiting for a human is a legitimate end (it is terminated, and ``_Waiting`` raised); a
    run the detector calls stuck, or one still going after SETTLE_SECONDS, fails the test."""
    result = asyncio.ensure_future(handle.result())
    deadline = time.monotonic() + SETTLE_SECONDS
    try:
        while time.monotonic() < deadline:
            done, _ = await asyncio.wait({result}, timeout=0.5)
            if done:
                break
            report = await find_stuck(client, older_than=timedelta(seconds=15),
                                      task_queue=settings.temporal.task_queue,
                                      query=f"WorkflowId = '{handle.id}'")
            for health in report.runs:
                if health.verdict == "waiting":
                    raise _Waiting
                assert health.reason != "workflow_task_failing", health
                assert health.verdict != "stuck", health
        else:
            raise AssertionError(f"{handle.id} did not end within {SETTLE_SECONDS}s")
        try:
            return result.result()
        except WorkflowFailureError as e:
            assert isinstance(e.cause, ApplicationError), e
            return e.cause
    finally:
        if not result.done():  # waiting, stuck or too slow: end it, the example is over
            result.cancel()
            with contextlib.suppress(RPCError):
                await handle.terminate("fuzz example over")


class _Waiting(Exception):
    """The run waits for an approval: a legitimate end for a fuzz example."""


async def judge(client: Client, settings: Settings, ledger: Ledger, payload_json: str,
                handle: WorkflowHandle[Any, RunResult]) -> str:
    """Every property of one started run."""
    problem = expected_problem(payload_json)
    try:
        outcome = await settle(client, settings, handle)
    except _Waiting:
        assert problem is None
        return "waiting for a human"
    trail = await ledger.trail(handle.id)
    if json.loads(payload_json) is None:
        assert isinstance(outcome, ApplicationError), outcome
        assert outcome.type == "BadRunRequest", outcome
        assert trail.runs == [] and trail.decisions == [], trail
        return "no request (null)"
    if problem is not None:
        assert isinstance(outcome, ApplicationError), outcome
        assert re.match(r"\d+ validation errors? for (nullable\[)?RunRequest", outcome.message), \
            outcome
        for e in problem.errors():
            # pydantic quotes a key that holds a dot: metadata.`a.b`
            field = ".".join(f"`{p}`" if "." in str(p) else str(p) for p in e["loc"])
            assert field in outcome.message, (field, outcome.message)
        assert trail.runs == [] and trail.decisions == [], trail
        return "rejected by RunRequest"
    request = RunRequest.model_validate_json(payload_json)
    if isinstance(outcome, ApplicationError):
        assert request.agent not in ("ops", "refund"), outcome
        assert outcome.type == "UnknownAgent"
        assert outcome.message == SERVED.format(agent=request.agent)
        assert trail.runs == [] and trail.decisions == [], trail
        return "unknown agent"
    assert outcome.status in STATUSES
    [row] = trail.runs
    assert (row.status, row.steps) == (outcome.status, outcome.steps)
    assert row.finished_at is not None
    assert [c for c in trail.tool_calls if c.status in ("running", "open")] == []
    assert await ledger.verify_chain(handle.id) == []
    return f"ran: {outcome.status}"


async def good_run_completes(client: Client, settings: Settings) -> None:
    """The worker survived: an ordinary request still completes."""
    handle = await client.start_workflow("AgentWorkflow", RunRequest(**GOOD),
                                         id=f"fuzz-good-{uuid.uuid4().hex[:8]}",
                                         task_queue=settings.temporal.task_queue,
                                         result_type=RunResult)
    result = await asyncio.wait_for(handle.result(), 60)
    assert result.status == "completed", result


async def test_fuzzed_run_requests_from_the_python_client(
        reference_worker: Client, settings: Settings, ledger: Ledger) -> None:
    client = reference_worker
    loop = asyncio.get_running_loop()

    async def check(payload: Any) -> str:
        handle: WorkflowHandle[Any, RunResult] = await client.start_workflow(
            "AgentWorkflow", payload, id=f"fuzz-py-{uuid.uuid4().hex[:10]}",
            task_queue=settings.temporal.task_queue, result_type=RunResult)
        return await judge(client, settings, ledger, json.dumps(payload), handle)

    sync = bound(loop, check)

    @fuzz(30)
    @given(run_payloads)
    @example(GOOD)
    @example({"agent": "refund", "input": "please refund 20 EUR on order ORD-1001"})
    @example({"agent": "ops", "input": "restart search-worker"})  # waits for on-call
    @example({"agent": "billing", "input": "refund order 42"})
    @example(None)
    @example({"agent": "ops", "input": "is auth-service healthy?\x00", "user": "\x00\x7f"})
    @example({"agent": "ops", "input": "restart checkout-api", "metadata": {"role": "viewer"},
              "max_steps": 1})
    def prop(payload: Any) -> None:
        event(sync(payload))

    await run_property(prop)
    await good_run_completes(client, settings)


async def test_fuzzed_raw_json_through_the_temporal_cli(
        reference_worker: Client, settings: Settings, ledger: Ledger) -> None:
    """What an operator types after ``--input``: JSON of any shape, or not JSON at all."""
    client = reference_worker
    loop = asyncio.get_running_loop()
    assert settings.temporal.address is not None

    async def check(raw: str) -> str:
        wid = f"fuzz-cli-{uuid.uuid4().hex[:10]}"
        done = await run_cmd(
            str(find_binary("temporal")), "workflow", "start", "--type", "AgentWorkflow",
            "--task-queue", settings.temporal.task_queue,
            "--address", str(settings.temporal.address),
            "--namespace", settings.temporal.namespace, "--workflow-id", wid, "--input", raw,
            timeout=60)
        handle: WorkflowHandle[Any, RunResult] = client.get_workflow_handle(
            wid, result_type=RunResult)
        try:
            json.loads(raw)
        except ValueError:
            # Not JSON: the CLI refuses it and nothing starts, nothing is written.
            assert done.code != 0, done
            assert "input" in (done.err + done.out).lower(), done
            with pytest.raises(RPCError) as info:
                await handle.describe()
            assert info.value.status == RPCStatusCode.NOT_FOUND
            assert (await ledger.trail(wid)).runs == []
            return "not JSON: refused by the CLI"
        assert done.code == 0, done
        return await judge(client, settings, ledger, raw, handle)

    sync = bound(loop, check)
    raw_inputs = (run_payloads.map(json_text)
                  | argv_text.filter(lambda s: s.strip() != "")
                  | run_payloads.map(json_text).map(lambda s: s[: max(len(s) - 1, 1)]))

    @fuzz(15)
    @given(raw_inputs)
    def prop(raw: str) -> None:
        event(sync(raw))

    await run_property(prop)
    await good_run_completes(client, settings)


async def test_a_null_run_request_fails_the_run(
        reference_worker: Client, settings: Settings) -> None:
    """Found by the fuzzer: None from the Python client (a binary/null payload) skipped
    validation, and the run's workflow task failed forever."""
    client = reference_worker
    handle: WorkflowHandle[Any, RunResult] = await client.start_workflow(
        "AgentWorkflow", None, id=f"fuzz-null-{uuid.uuid4().hex[:8]}",
        task_queue=settings.temporal.task_queue, result_type=RunResult)
    outcome = await settle(client, settings, handle)
    assert isinstance(outcome, ApplicationError)
    assert (outcome.type, outcome.non_retryable) == ("BadRunRequest", True)
    assert outcome.message == ('a run needs a RunRequest, e.g. {"agent": "ops", "input": '
                               '"..."}; got none')


async def test_a_request_with_a_nul_character_ends(
        reference_worker: Client, settings: Settings, ledger: Ledger) -> None:
    """Found by the fuzzer: PostgreSQL cannot store NUL, so run.start (a local activity,
    retried for 10 minutes) used to fail on every attempt and the run hung."""
    client = reference_worker
    handle: WorkflowHandle[Any, RunResult] = await client.start_workflow(
        "AgentWorkflow", {"agent": "ops", "input": "is auth-service healthy?\x00"},
        id=f"fuzz-nul-{uuid.uuid4().hex[:8]}", task_queue=settings.temporal.task_queue,
        result_type=RunResult)
    outcome = await settle(client, settings, handle)
    assert isinstance(outcome, RunResult) and outcome.status == "completed", outcome
    [row] = (await ledger.trail(handle.id)).runs
    assert row.input == "is auth-service healthy?\ufffd"
    assert await ledger.verify_chain(handle.id) == []

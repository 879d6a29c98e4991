"""The bench agent as a plain ``@workflow.defn``: model activity, tool activity, repeat.

Same activity count and retry defaults as stead's AgentWorkflow, none of its extras (no
ledger, no run.start/run.finish local activities, no call gate, no search attributes, no
Web UI details). This is the baseline stead is measured against.
"""

from __future__ import annotations

import json
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from bench.plain_models import (
        TOOL_SCHEMAS,
        PlainLookup,
        PlainLookupResult,
        PlainMessage,
        PlainModelRequest,
        PlainRequest,
        PlainResult,
        PlainTurn,
    )

# stead's defaults: model calls (Settings.model_*) and tools (RetrySpec(), Timeouts()).
MODEL_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2,
                          maximum_interval=timedelta(seconds=30), maximum_attempts=5)
MODEL_TIMEOUT = timedelta(seconds=60)
TOOL_RETRY = RetryPolicy(initial_interval=timedelta(seconds=0.2), backoff_coefficient=2,
                         maximum_interval=timedelta(seconds=10), maximum_attempts=3)
TOOL_TIMEOUT = timedelta(seconds=30)


@workflow.defn(name="PlainAgentWorkflow")
class PlainAgentWorkflow:
    @workflow.run
    async def run(self, request: PlainRequest) -> PlainResult:
        messages = [PlainMessage(role="system", content="Look things up, then answer."),
                    PlainMessage(role="user", content=request.input)]
        turns = calls = 0
        while True:
            turn = await workflow.execute_activity(
                "plain.model", PlainModelRequest(messages=messages, tools=TOOL_SCHEMAS),
                result_type=PlainTurn, start_to_close_timeout=MODEL_TIMEOUT,
                schedule_to_close_timeout=MODEL_TIMEOUT * 5 + timedelta(seconds=120),
                retry_policy=MODEL_RETRY)
            turns += 1
            messages.append(PlainMessage(role="assistant", content=turn.content,
                                         tool_calls=turn.tool_calls))
            if not turn.tool_calls:
                return PlainResult(answer=turn.content or "", model_turns=turns,
                                   tool_calls=calls)
            for call in turn.tool_calls:
                out = await workflow.execute_activity(
                    f"plain.{call.name}", PlainLookup.model_validate_json(call.arguments),
                    result_type=PlainLookupResult, start_to_close_timeout=TOOL_TIMEOUT,
                    schedule_to_close_timeout=TOOL_TIMEOUT * 3 + timedelta(seconds=6),
                    retry_policy=TOOL_RETRY)
                calls += 1
                messages.append(PlainMessage(
                    role="tool", tool_call_id=call.id,
                    content=json.dumps({"ok": True, "result": out.model_dump()})))

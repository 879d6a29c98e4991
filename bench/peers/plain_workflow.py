"""The peers' workloads as a plain ``@workflow.defn``: model activity, tool activity, repeat,
and for the approval run a signal wait before the tool.

What ``bench/plain.py`` is for the 5-tool run, for any of :mod:`bench.peers.workload`'s
workloads: stead's retry and timeout defaults and payload types, none of stead's extras.
``local_tools`` runs the tool calls as local activities instead: the what-if of the issue's
"read tools as local activities" (a local activity runs inside the workflow task; its
result reaches history as a marker when that task completes, so no activity task, no
extra workflow task and three fewer events per call). ``local_model`` does the same for the
model calls; with both, and the client starting the run with eager start, a whole run is
one workflow task on the worker that started it: the engine's floor.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from bench.peers.models import PeerModelInput, PeerRequest, PeerToolInput, RunOutcome
    from bench.plain import MODEL_RETRY, MODEL_TIMEOUT, TOOL_RETRY, TOOL_TIMEOUT
    from stead.contracts.models import Message, ModelTurn

WORKFLOW = "PeerPlainWorkflow"
APPROVE = "approve"


@workflow.defn(name=WORKFLOW)
class PeerPlainWorkflow:
    def __init__(self) -> None:
        self.approved = False
        self.waiting = False

    @workflow.signal(name=APPROVE)
    def approve(self) -> None:
        self.approved = True

    @workflow.query(name="waiting")
    def is_waiting(self) -> bool:
        """True once the run waits for the approval signal (the HITL harness polls it)."""
        return self.waiting and not self.approved

    @workflow.run
    async def run(self, req: PeerRequest) -> RunOutcome:
        info = workflow.info()
        messages = req.messages
        tools: list[str] = []
        turns = 0
        while True:
            think = PeerModelInput(workload=req.workload, messages=messages)
            if req.local_model:
                turn = await workflow.execute_local_activity(
                    "peers.model", think, result_type=ModelTurn,
                    start_to_close_timeout=MODEL_TIMEOUT, retry_policy=MODEL_RETRY)
            else:
                turn = await workflow.execute_activity(
                    "peers.model", think, result_type=ModelTurn,
                    start_to_close_timeout=MODEL_TIMEOUT,
                    schedule_to_close_timeout=MODEL_TIMEOUT * 5 + timedelta(seconds=120),
                    retry_policy=MODEL_RETRY)
            turns += 1
            messages.append(Message(role="assistant", content=turn.content,
                                    tool_calls=turn.tool_calls))
            if not turn.tool_calls:
                return RunOutcome(answer=turn.content or "", tools_called=tools,
                                  model_calls=turns)
            for c in turn.tool_calls:
                if req.approval:
                    self.waiting = True
                    await workflow.wait_condition(lambda: self.approved)
                inp = PeerToolInput(workload=req.workload, call=c, run_id=info.workflow_id,
                                    step=len(messages))
                if req.local_tools:
                    msg = await workflow.execute_local_activity(
                        "peers.tool", inp, result_type=Message,
                        start_to_close_timeout=TOOL_TIMEOUT, retry_policy=TOOL_RETRY)
                else:
                    msg = await workflow.execute_activity(
                        "peers.tool", inp, result_type=Message,
                        start_to_close_timeout=TOOL_TIMEOUT,
                        schedule_to_close_timeout=TOOL_TIMEOUT * 3 + timedelta(seconds=6),
                        retry_policy=TOOL_RETRY)
                tools.append(c.name)
                messages.append(msg)

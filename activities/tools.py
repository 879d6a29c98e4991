"""Tool activities: one activity type per tool (``tool.<name>``), with idempotency.

Each attempt claims the call's idempotency key in the ledger before the side effect and
records the outcome after it:

- key already completed (a retry after the result was recorded, or a replay) -> return the
  recorded result, the tool does not run again;
- an earlier attempt started and never reported (its worker died) -> an idempotent tool runs
  again with the same key; a non-idempotent one is reconciled through its ``reconcile`` hook,
  or the call fails as ``ToolOutcomeUnknown`` so the workflow escalates instead of re-running;
- otherwise run the tool and record what happened, failed attempts included.

Least privilege: a tool runs only for an agent that declares it, and sees only the secrets it
declared (``ctx.secret``). Known secret values are scrubbed from results and error messages
before they go back to the workflow; the ledger redacts what it stores.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio import activity
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

from stead import errors
from stead.authoring.agent import AgentCatalog
from stead.authoring.tools import CallLost, DynamicTools, Tool, ToolContext
from stead.contracts.models import ToolAttemptReport, ToolInvocation, ToolOutcome
from stead.observability.telemetry import NO_METRICS, SteadMetrics
from stead.observability.tracing import NO_TRACING, SteadTracing
from stead.security.secrets import SecretError, Secrets
from stead.storage.blobs import BLOB_TOO_LARGE, BlobStore, BlobTooLarge, canonical_json, reference
from stead.storage.ledger import Ledger


class ToolActivities:
    """Builds the activity callables for every tool of a catalog."""

    def __init__(self, catalog: AgentCatalog, ledger: Ledger, *,
                 metrics: SteadMetrics = NO_METRICS, secrets: Secrets | None = None,
                 tracing: SteadTracing = NO_TRACING,
                 max_payload_bytes: int = 1_500_000,
                 dynamic: DynamicTools | None = None,
                 blobs: BlobStore | None = None, blob_threshold_bytes: int = 8192) -> None:
        """``secrets``: the worker's tool credentials (``Secrets.from_settings``); none if
        omitted, so a tool that needs one fails with ``MissingSecret``.
        ``max_payload_bytes``: a bigger result fails its call (``PayloadTooLarge``).
        ``dynamic``: tools found by name at call time (MCP), served by one dynamic activity.
        ``blobs``: where a result over ``blob_threshold_bytes`` goes; history then carries a
        reference (``stead.storage.blobs.reference``), the ledger the full result (it is the audit).
        ``max_payload_bytes`` still bounds the full result: the model reads all of it."""
        self._blobs = blobs
        self._blob_threshold = blob_threshold_bytes
        self._dynamic = dynamic
        self._max_payload = max_payload_bytes
        self._catalog = catalog
        self._ledger = ledger
        self._metrics = metrics
        self._tracing = tracing
        self._secrets = secrets if secrets is not None else Secrets()

    def activities(self) -> list[Callable[..., Any]]:
        acts = [self._activity_for(t) for t in self._catalog.tools()]
        if self._dynamic is not None:
            acts.append(self._dynamic_activity(self._dynamic))
        return acts

    def _dynamic_activity(self, dynamic: DynamicTools) -> Callable[..., Any]:
        """One activity for every ``tool.<name>`` type not registered above (only registered
        when the worker has dynamic tools, so other workers fail unknown types as before)."""
        async def run_dynamic_tool(args: Sequence[RawValue]) -> ToolOutcome:
            kind = activity.info().activity_type
            t = dynamic.resolve(kind)
            if t is None or len(args) != 1:
                raise ApplicationError(f"this worker has no tool for activity type {kind!r}",
                                       type="UnknownTool", non_retryable=True)
            inv = activity.payload_converter().from_payload(args[0].payload, ToolInvocation)
            return await self._measured(t, inv)

        return activity.defn(dynamic=True)(run_dynamic_tool)

    def _activity_for(self, t: Tool[Any, Any]) -> Callable[..., Any]:
        async def run_tool(inv: ToolInvocation) -> ToolOutcome:
            return await self._measured(t, inv)

        run_tool.__name__ = f"tool_{t.name}"
        run_tool.__qualname__ = run_tool.__name__
        return activity.defn(name=t.activity_name)(run_tool)

    async def _measured(self, t: Tool[Any, Any], inv: ToolInvocation) -> ToolOutcome:
        """:meth:`execute`, recording the attempt (duration, outcome, retry) as metrics and
        as an ``execute_tool`` span."""
        started = time.perf_counter()
        attempt = activity.info().attempt
        with self._tracing.execute_tool(t.name, call_id=inv.call_id, attempt=attempt,
                                        idempotency_key=inv.idempotency_key,
                                        arguments=inv.arguments, ref=inv.ref,
                                        requested_tool=inv.requested_tool) as span:
            try:
                out = await self.execute(t, inv)
            except BaseException as err:  # cancelled (timed out) attempts are failures too
                kind = err.type if isinstance(err, ApplicationError) and err.type else \
                    type(err).__name__
                self._metrics.tool_attempt(tool=t.name, outcome="error", attempt=attempt,
                                           seconds=time.perf_counter() - started,
                                           error_type=kind)
                raise
            outcome = "replayed" if out.replayed else "ok"
            span.finish(outcome, out.result)
        self._metrics.tool_attempt(tool=t.name, outcome=outcome, attempt=attempt,
                                   seconds=time.perf_counter() - started)
        return out

    async def execute(self, t: Tool[Any, Any], inv: ToolInvocation) -> ToolOutcome:
        info = activity.info()
        attempt = info.attempt
        ledger = self._ledger
        hb = activity.heartbeat
        started = time.perf_counter()

        def elapsed() -> float:
            return (time.perf_counter() - started) * 1000

        # The gate's decision is on record before anything can happen.
        await ledger.append_decisions(inv.decisions, on_wait=hb)
        self._tracing.decisions(inv.decisions)
        claim = await ledger.claim_tool(inv, tool=t.name, attempt=attempt, on_wait=hb)
        refusal = self._refusal(t, inv)
        if refusal is not None:
            await ledger.finish_tool(ToolAttemptReport(
                key=inv.idempotency_key, attempt=attempt, outcome="error",
                error_type="ToolNotAllowed", error=refusal, final=True,
                duration_ms=elapsed()), on_wait=hb)
            raise ApplicationError(refusal, {"attempt": attempt}, type="ToolNotAllowed",
                                   non_retryable=True)
        if claim.kind == "completed":
            await ledger.finish_tool(ToolAttemptReport(
                key=inv.idempotency_key, attempt=attempt, outcome="replayed",
                duration_ms=elapsed()), on_wait=hb)
            return ToolOutcome(tool=t.name, result=await self._by_reference(claim.result or {}),
                               attempt=attempt, replayed=True)
        if claim.kind == "failed":
            # A final failure is on record, but its worker died before Temporal heard of it:
            # answer with it again. Running the tool now would be the blind re-run that a
            # recorded ToolOutcomeUnknown exists to prevent.
            kind = claim.error_type or errors.TOOL_FAILED
            msg = claim.error or f"{t.name} failed on an earlier attempt"
            await ledger.finish_tool(ToolAttemptReport(
                key=inv.idempotency_key, attempt=attempt, outcome="error", error_type=kind,
                error=msg, final=True, duration_ms=elapsed()), on_wait=hb)
            raise ApplicationError(msg, {"attempt": attempt}, type=kind, non_retryable=True)

        ctx = ToolContext(idempotency_key=inv.idempotency_key, attempt=attempt,
                          workflow_id=inv.ref.workflow_id, run_id=inv.ref.run_id,
                          tenant=inv.ref.tenant, heartbeat=activity.heartbeat,
                          secrets=self._secrets.for_tool(t.name, t.secrets))
        try:
            args = t.input_model.model_validate(inv.arguments)
        except ValidationError as err:
            await ledger.finish_tool(ToolAttemptReport(
                key=inv.idempotency_key, attempt=attempt, outcome="error",
                error_type="InvalidArguments", error=str(err), final=True,
                duration_ms=elapsed()), on_wait=hb)
            raise ApplicationError(ledger.redactor.text(f"invalid arguments for {t.name!r}: "
                                                        f"{err}"),
                                   {"attempt": attempt}, type="InvalidArguments",
                                   non_retryable=True) from None

        if claim.kind == "unknown" and not t.idempotent:
            recorded = await self._reconcile(t, args, ctx, inv, attempt, elapsed)
            if recorded is not None:
                return recorded

        try:
            out = await t.fn(args, ctx)
            if not isinstance(out, BaseModel):
                out = t.output_model.model_validate(out)
            result: dict[str, Any] = ledger.redactor.scrub(out.model_dump(mode="json"))
        except Exception as err:
            if isinstance(err, CallLost) and not t.idempotent:
                # The request went out and its answer was lost: the same as a worker that
                # died mid-call, so reconcile or escalate (a reconciled "did not happen"
                # falls through to a retry).
                found = await self._reconcile(t, args, ctx, inv, attempt, elapsed)
                if found is not None:
                    return found
            if isinstance(err, SecretError):
                kind = err.error_type
            else:
                kind = err.type if isinstance(err, ApplicationError) and err.type else \
                    type(err).__name__
            non_retryable = (kind in t.retry.non_retryable or isinstance(err, SecretError)
                             or (isinstance(err, ApplicationError) and err.non_retryable))
            final = non_retryable or attempt >= t.retry.max_attempts
            await ledger.finish_tool(ToolAttemptReport(
                key=inv.idempotency_key, attempt=attempt, outcome="error", error_type=kind,
                error=str(err), final=final, duration_ms=elapsed()), on_wait=hb)
            message = f"{t.name}: {kind}: {err}"
            clean = ledger.redactor.text(message)
            failure = ApplicationError(clean, {"attempt": attempt}, type=kind,
                                       non_retryable=non_retryable)
            if clean != message:
                # The original exception would carry the secret into history as the cause.
                raise failure from None
            raise failure from err
        size = len(json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode())
        if size > self._max_payload:
            # Retrying cannot shrink it, and history would refuse it (attempt after attempt,
            # or, summed into the next model request, forever): fail the call now, on record.
            # Its side effect, if any, happened; the final failure keeps it from running again.
            msg = (f"{t.name} returned {size:,} bytes, over the {self._max_payload:,}-byte "
                   f"payload limit (STEAD_MAX_PAYLOAD_BYTES); results travel through workflow "
                   f"history: return a summary or a reference to the data instead")
            await ledger.finish_tool(ToolAttemptReport(
                key=inv.idempotency_key, attempt=attempt, outcome="error",
                error_type=errors.PAYLOAD_TOO_LARGE, error=msg, final=True,
                duration_ms=elapsed()), on_wait=hb)
            raise ApplicationError(msg, {"attempt": attempt}, type=errors.PAYLOAD_TOO_LARGE,
                                   non_retryable=True)
        await ledger.finish_tool(ToolAttemptReport(
            key=inv.idempotency_key, attempt=attempt, outcome="ok", result=result,
            duration_ms=elapsed()), on_wait=hb)
        return ToolOutcome(tool=t.name, result=await self._by_reference(result), attempt=attempt)

    async def _by_reference(self, result: dict[str, Any]) -> dict[str, Any]:
        """``result``, or a reference to it in ``stead_blobs`` when it is over the threshold.
        Stored after the ledger recorded the outcome: a failed store retries the activity,
        which replays the result from the ledger instead of running the tool again."""
        if self._blobs is None:
            return result
        body = canonical_json(result)
        if len(body) <= self._blob_threshold:
            return result
        try:
            digest = await self._blobs.put(body, on_wait=activity.heartbeat)
        except BlobTooLarge as err:
            raise ApplicationError(str(err), type=BLOB_TOO_LARGE, non_retryable=True) from None
        return reference(digest, body)

    def _refusal(self, t: Tool[Any, Any], inv: ToolInvocation) -> str | None:
        """Why this tool may not run for the invoking agent (None: it may). The workflow gates
        calls against the agent's plan already; this holds even for an invocation that did not
        come through that gate."""
        agent = inv.ref.agent
        if agent in self._catalog and t.name in self._catalog[agent].registry:
            return None
        if agent in self._catalog and self._dynamic is not None \
                and self._dynamic.allows(agent, t.name):
            return None
        return (f"tool {t.name!r} is not in the allowlist of agent {agent!r}; an agent runs "
                f"only the tools it declares")

    async def _reconcile(self, t: Tool[Any, Any], args: BaseModel, ctx: ToolContext,
                         inv: ToolInvocation, attempt: int,
                         elapsed: Callable[[], float]) -> ToolOutcome | None:
        """An earlier attempt of a non-idempotent tool vanished mid-call: find out, never guess."""
        if t.reconcile is None:
            msg = (f"{t.name}: an earlier attempt (key {inv.idempotency_key}) started and never "
                   f"reported, and the tool is not idempotent and has no reconcile hook; "
                   f"not re-running it — a human must check whether it took effect")
            await self._ledger.finish_tool(ToolAttemptReport(
                key=inv.idempotency_key, attempt=attempt, outcome="error",
                error_type=errors.TOOL_OUTCOME_UNKNOWN, error=msg, final=True,
                duration_ms=elapsed()), on_wait=activity.heartbeat)
            raise ApplicationError(msg, {"attempt": attempt}, type=errors.TOOL_OUTCOME_UNKNOWN,
                                   non_retryable=True)
        found = await t.reconcile(args, ctx)
        if found is None:
            return None  # it did not happen: safe to run now
        result = self._ledger.redactor.scrub(
            found.model_dump(mode="json") if isinstance(found, BaseModel) else dict(found))
        await self._ledger.finish_tool(ToolAttemptReport(
            key=inv.idempotency_key, attempt=attempt, outcome="reconciled", result=result,
            duration_ms=elapsed()), on_wait=activity.heartbeat)
        return ToolOutcome(tool=t.name, result=await self._by_reference(result), attempt=attempt,
                           replayed=True)

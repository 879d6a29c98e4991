"""The model activity: one model call (chat completions or the Responses API), logged in the
ledger with the model of the agent's chain that was called, its text published to the token
stream as it is written (``stead.streaming``; never into Temporal's history).

When the run's tenant has spending windows (``STEAD_TENANT_QUOTAS``: ``usd_per_day``,
``usd_per_month``), the call's estimate is reserved against them before the model is called
(committed first: the write-ahead rule), settled to what the call cost after it answered, and
released when the model server answered with an error; a call that would pass a window's cap
is refused, non-retryable (``TenantBudgetExceeded``). An attempt that died, was cancelled or
failed on stead's side in between (never settled nor released) is charged at its estimate
when the retry reserves, or once its reservation expires (``stead.storage.ledger._spend``).
A tenant without windows costs no extra round trip."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from stead import errors
from stead.authoring.agent import AgentCatalog
from stead.contracts.budget import Price
from stead.contracts.models import (
    Message,
    ModelCallRecord,
    ModelEndpoint,
    ModelRequest,
    ModelTurn,
    Usage,
)
from stead.contracts.quota import TenantQuota, WindowKind, quota_for
from stead.errors import SettingsError
from stead.evals.metrics import price_for
from stead.guardrails.budget import DEFAULT_MAX_OUTPUT_TOKENS, estimate, request_bytes, settle
from stead.integrations.llm import ModelCallError, ModelClient, StreamingModelClient
from stead.integrations.model_endpoints import ModelEndpoints
from stead.observability.telemetry import NO_METRICS, SteadMetrics
from stead.observability.tracing import NO_TRACING, SteadTracing
from stead.settings import ModelPrice, Settings
from stead.storage.blobs import BLOB_MISSING, BlobCorrupt, BlobError, BlobMissing, BlobStore
from stead.storage.ledger import Ledger, Reservation, SpendKey, StreamPiece
from stead.streaming import TurnPublisher

log = logging.getLogger("stead.streaming")

STREAM_RETENTION = timedelta(hours=24)
"""Token stream rows older than this are deleted (the final messages stay in the ledger)."""
PRUNE_EVERY_SECONDS = 600.0


class ModelActivities:
    """Calls the configured model (``model``) or, when none is, the agent's offline model."""

    def __init__(self, catalog: AgentCatalog, ledger: Ledger, *,
                 model: ModelClient | None = None,
                 named_models: Callable[[str], ModelClient | None] | None = None,
                 metrics: SteadMetrics = NO_METRICS,
                 tracing: SteadTracing = NO_TRACING,
                 max_payload_bytes: int = 1_500_000,
                 blobs: BlobStore | None = None,
                 endpoints: ModelEndpoints | None = None,
                 stream: bool = True,
                 quotas: Mapping[str, TenantQuota] | None = None,
                 reservation_ttl_seconds: float = 900.0,
                 prices: Mapping[str, ModelPrice] | None = None) -> None:
        """``max_payload_bytes``: a bigger answer fails the call (``PayloadTooLarge``).
        ``blobs``: expands tool results that travel by reference and ``ModelRequest.context``
        before the model is called, and stores the extended context after it answers.
        ``endpoints``: calls the model of an agent's chain that a request names (None: every
        request is answered as if it named none).
        ``stream``: ask models that can stream to do so; off, each answer is asked for whole
        and published as one piece when it arrives (for servers that cannot stream).
        ``quotas``: the tenants' spending windows (``settings.tenants.quotas``); a call is
        reserved against them for ``reservation_ttl_seconds``. ``prices``: what a model costs
        when the request carries no price (``STEAD_MODEL_PRICES``)."""
        self._quotas: Mapping[str, TenantQuota] = quotas or {}
        self._reservation_ttl = reservation_ttl_seconds
        self._prices: Mapping[str, ModelPrice] = prices or {}
        self._stream = stream
        self._next_prune = 0.0
        self._pruning: set[asyncio.Task[int]] = set()
        self._blobs = blobs
        self._endpoints = endpoints
        self._max_payload = max_payload_bytes
        self._catalog = catalog
        self._metrics = metrics
        self._tracing = tracing
        self._ledger = ledger
        self._model = model
        self._named_models = named_models
        self._cache: dict[str, ModelClient] = {}

    def client_for(self, agent: str, setting: str | None = None) -> ModelClient:
        """The model for a call: a routed setting if this worker can serve it, else the
        configured model, else the agent's offline model."""
        if setting and self._named_models is not None:
            if setting not in self._cache:
                named = self._named_models(setting)
                if named is not None:
                    self._cache[setting] = named
            if setting in self._cache:
                return self._cache[setting]
        if self._model is not None:
            return self._model
        return self._catalog[agent].offline_model

    def judge_for(self, agent: str) -> ModelClient:
        """The model that judges ``agent``'s finished runs (online evaluation): the first of
        its chain when it declares one, else what ``client_for`` gives."""
        if self._endpoints is not None:
            chain = self._endpoints.chain(agent)
            if chain:
                return self._endpoints.client(chain[0])
        return self.client_for(agent)

    def _client(self, req: ModelRequest) -> ModelClient:
        """The model of the request's chain; a worker built without chains (a model given to
        it serves every agent) answers with its own."""
        if req.endpoint is None or self._endpoints is None:
            return self.client_for(req.ref.agent, req.model)
        return self._endpoints.client(req.endpoint)

    @activity.defn(name="model.complete")
    async def complete(self, req: ModelRequest) -> ModelTurn:
        info = activity.info()
        try:
            client = self._client(req)
        except ModelCallError as err:
            label = f"openai:{req.endpoint.model}" if req.endpoint else "?"
            await self._record(req, info.attempt, label, time.perf_counter(), error=err)
            raise ApplicationError(str(err), type=err.kind, non_retryable=True) from None
        await self._ledger.append_decisions(req.decisions, on_wait=activity.heartbeat)
        self._tracing.decisions(req.decisions)
        messages = await self._transcript(req)
        spend = await self._reserve(req, client, _spend_attempt(info))
        publisher = TurnPublisher(self._ledger, req.ref, attempt=info.attempt,
                                  fallback=req.fallback)
        started = time.perf_counter()
        try:
            with self._tracing.chat(model=client.name, ref=req.ref, messages=messages,
                                    endpoint=req.endpoint.name if req.endpoint else None,
                                    fallback=req.fallback) as chat:
                if self._stream and isinstance(client, StreamingModelClient):
                    turn = await client.stream(messages, req.tools, publisher)
                else:  # published whole once recorded, below
                    turn = await client.complete(messages, req.tools)
                chat.response(turn)
        except ModelCallError as err:
            # A provider's message may quote a key; the cause would carry it into history.
            message = self._ledger.redactor.text(str(err))
            await self._failed(req, info.attempt, client.name, started, err, message, publisher)
            if spend is not None:
                await spend.release()
            raise ApplicationError(message, type=err.kind, non_retryable=not err.retryable,
                                   next_retry_delay=err.retry_after) from None
        except Exception as err:
            # Not the model's failure but ours (the ledger, the token stream, the blob store
            # broke mid-call): the provider may well have answered and billed. The reservation
            # stays live, so the retry charges this attempt at its estimate (or, with no
            # retry, its expiry does): a money cap errs on the side of counting.
            await self._failed(req, info.attempt, client.name, started, err,
                               self._ledger.redactor.text(f"{type(err).__name__}: {err}"),
                               publisher)
            raise
        except BaseException:
            # Cancelled (the run cancelled mid-stream, a worker's graceful shutdown): the next
            # attempt restarts the message. The provider has usually billed part of the call
            # and nobody will say what, so the reservation is left live, as a dead attempt's
            # is: it is charged at its estimate (migration 0013) when a retry reserves, or
            # once it expires. Releasing it would charge nothing.
            await publisher.cancel()
            raise
        if spend is not None:
            await spend.settle(turn.usage)  # billed, even if the answer is refused below
        size = len(turn.model_dump_json().encode())
        if size > self._max_payload:
            # Asking again would bill the same oversized answer again; history refuses it.
            too_big = ModelCallError(f"the model's answer is {size:,} bytes, over the "
                                     f"{self._max_payload:,}-byte payload limit "
                                     f"(STEAD_MAX_PAYLOAD_BYTES)",
                                     kind=errors.PAYLOAD_TOO_LARGE, retryable=False)
            await self._failed(req, info.attempt, client.name, started, too_big, str(too_big),
                               publisher)
            raise ApplicationError(str(too_big), type=too_big.kind, non_retryable=True)
        # Streamed: the rest is written while the ledger records the call. Whole: its rows
        # are stored with the record, in the same statement.
        whole = publisher.end(turn, model=client.name)
        await self._record(req, info.attempt, client.name, started, turn=turn, stream=whole)
        await publisher.drained()
        self._prune_now_and_then()
        # A credential the model repeats (from a leaked tool output, say) goes no further.
        scrubbed = self._ledger.redactor.scrub(turn.model_dump())
        turn = turn if scrubbed == turn.model_dump() else ModelTurn.model_validate(scrubbed)
        if req.context is not None and self._blobs is not None:
            # The conversation so far plus this call's messages and reply, as the workflow
            # will hold them (its next request repeats them: stored once, by content).
            said = list(req.messages[_leading_system(req.messages):])
            said.append(Message(role="assistant", content=turn.content,
                                tool_calls=turn.tool_calls, reasoning=turn.reasoning))
            ctx = await self._blobs.extend_manifest(req.context, said,
                                                    on_wait=activity.heartbeat)
            turn = turn.model_copy(update={"context": ctx})
        return turn

    async def _reserve(self, req: ModelRequest, client: ModelClient,
                       attempt: int) -> _Spend | None:
        """Reserve the call's estimate against its tenant's spending windows; None when the
        tenant has none or the call costs nothing (an unpriced or offline model). Over a cap:
        a non-retryable ``TenantBudgetExceeded`` naming the tenant, window, figures and reset."""
        if not self._quotas:
            return None
        quota = quota_for(self._quotas, req.ref.tenant)
        caps = quota.windows if quota is not None else {}
        if not caps:
            return None
        price = self._price(req, client)
        if req.estimate is not None:
            usd = req.estimate.usd
        else:
            limit = (req.endpoint.max_output_tokens if req.endpoint is not None else None)
            usd = estimate(request_bytes(req.messages, req.tools), price=price,
                           max_output_tokens=limit or DEFAULT_MAX_OUTPUT_TOKENS).usd
        if usd <= 0:
            return None
        key = SpendKey.of(req.ref, fallback=req.fallback)
        got = await self._ledger.reserve_spend(req.ref.tenant, key, usd=usd, caps=caps,
                                               ttl_seconds=self._reservation_ttl,
                                               attempt=attempt, on_wait=activity.heartbeat)
        if got.outcome == "refused":
            assert got.window is not None
            self._metrics.tenant_budget_refusal(tenant=req.ref.tenant, window=got.window)
            raise ApplicationError(_refusal(req.ref.tenant, got, usd),
                                   type=errors.TENANT_BUDGET_EXCEEDED, non_retryable=True)
        return _Spend(self._ledger, self._metrics, key, req.ref.tenant, attempt, price, usd)

    def _price(self, req: ModelRequest, client: ModelClient) -> Price | None:
        """What the called model costs: the run's pinned price, else the chain model's, else
        ``STEAD_MODEL_PRICES`` by the client's label; offline models cost nothing."""
        if req.price is not None:
            return req.price
        if req.endpoint is not None and req.endpoint.price is not None:
            return req.endpoint.price
        if client.name.startswith("scripted"):
            return None
        listed = price_for(client.name, self._prices)
        if listed is None:
            return None
        return Price(input_usd_per_mtok=listed.input, output_usd_per_mtok=listed.output)

    async def _failed(self, req: ModelRequest, attempt: int, model: str, started: float,
                      err: BaseException, message: str, publisher: TurnPublisher) -> None:
        """Record a failed attempt; tell the stream's readers (``message`` is redacted)."""
        publisher.fail(message)
        await self._record(req, attempt, model, started, error=err)
        await publisher.drained()

    def _prune_now_and_then(self) -> None:
        """Delete old token stream rows, at most every ``PRUNE_EVERY_SECONDS`` per worker."""
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY_SECONDS
        task = asyncio.get_running_loop().create_task(
            self._ledger.prune_stream(STREAM_RETENTION))
        self._pruning.add(task)
        task.add_done_callback(self._pruned)

    def _pruned(self, task: asyncio.Task[int]) -> None:
        self._pruning.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("token stream rows not pruned: %s", task.exception())

    async def _transcript(self, req: ModelRequest) -> list[Message]:
        """What the model reads: leading system messages, the earlier conversation
        (``req.context``), this run's other messages; tool results by reference in full."""
        if self._blobs is None:
            if req.context is not None:
                raise ApplicationError("this request continues a conversation "
                                       f"({req.context}) but the worker has no blob store",
                                       type=BLOB_MISSING, non_retryable=True)
            return req.messages
        k = _leading_system(req.messages)
        try:
            earlier = ([] if req.context is None else
                       await self._blobs.load_manifest(req.context, on_wait=activity.heartbeat))
            ordered = [*req.messages[:k], *earlier, *req.messages[k:]]
            return await self._blobs.expand_messages(ordered, on_wait=activity.heartbeat)
        except (BlobMissing, BlobCorrupt) as err:
            # Asking again finds the same: the context was stored elsewhere, lost or damaged.
            raise ApplicationError(str(err), type=type(err).__name__,
                                   non_retryable=True) from None
        except BlobError as err:
            raise ApplicationError(str(err), type=type(err).__name__) from None

    async def _record(self, req: ModelRequest, attempt: int, model: str, started: float, *,
                      turn: ModelTurn | None = None, error: BaseException | None = None,
                      stream: Sequence[StreamPiece] = ()) -> None:
        seconds = time.perf_counter() - started
        endpoint = req.endpoint.name if req.endpoint is not None else ""
        self._metrics.model_call(model=model, response_model=turn.model if turn else None,
                                 status="ok" if error is None else "error", seconds=seconds,
                                 input_tokens=turn.usage.input_tokens if turn else 0,
                                 output_tokens=turn.usage.output_tokens if turn else 0,
                                 endpoint=endpoint, fallback=req.fallback)
        await self._ledger.record_model_call(req.ref, ModelCallRecord(
            attempt=attempt, model=turn.model if turn and turn.model else model,
            status="ok" if error is None else "error",
            finish_reason=turn.finish_reason if turn else None,
            tool_calls=turn.tool_calls if turn else [],
            content=turn.content if turn else None,
            error=f"{type(error).__name__}: {error}" if error else None,
            usage=turn.usage if turn else Usage(),
            duration_ms=seconds * 1000, endpoint=endpoint, fallback=req.fallback,
            cost_usd=req.price.cost(turn.usage.input_tokens, turn.usage.output_tokens)
            if turn is not None and req.price is not None else None),
            stream=stream, on_wait=activity.heartbeat)


def check_reservation_ttl(settings: Settings, chains: Iterable[ModelEndpoint]) -> None:
    """A worker whose tenants have spending windows must hold each reservation longer than a
    model call may take: one that expires while its call still runs is taken for abandoned
    (its worker dead) and charged at its estimate until the call settles. ``SettingsError``
    names the fix."""
    if not any(q.windows for q in settings.tenants.quotas.values()):
        return
    ttl = settings.tenants.reservation_ttl_seconds
    longest, where = settings.models.timeout_seconds, "STEAD_MODEL_TIMEOUT_SECONDS"
    for ep in chains:
        if ep.timeout_seconds is not None and ep.timeout_seconds > longest:
            longest, where = ep.timeout_seconds, f"timeout_seconds of the model {ep.name!r}"
    if ttl <= longest:
        raise SettingsError(
            f"STEAD_QUOTA_RESERVATION_TTL_SECONDS={ttl:g} is not above the longest model call "
            f"({longest:g} s, {where}): a call still running when its reservation expires is "
            f"taken for abandoned and charged at its estimate; set it above {longest:g}")


class _Spend:
    """One call's live reservation: settled to the reported usage, or released (the call
    failed); a cancelled call leaves it live, to be charged at its estimate."""

    def __init__(self, ledger: Ledger, metrics: SteadMetrics, key: SpendKey, tenant: str,
                 attempt: int, price: Price | None, estimate_usd: float) -> None:
        self._ledger, self._metrics = ledger, metrics
        self._key, self._tenant, self._attempt, self._price = key, tenant, attempt, price
        self._estimate = estimate_usd

    async def settle(self, usage: Usage) -> None:
        """The call answered: what it reported using, at the call's price, is spent. A server
        that reported no usage at all is charged the estimate: it said nothing, and a window
        must not read cheaper than it was."""
        reported = usage.input_tokens or usage.output_tokens
        usd = settle(usage, self._price).usd if reported else self._estimate
        await self._ledger.settle_spend(self._key, usd=usd, attempt=self._attempt,
                                        on_wait=activity.heartbeat)
        self._metrics.tenant_spend(tenant=self._tenant, usd=usd)

    async def release(self, *, timeout: float | None = None) -> None:
        """The call failed: its estimate stops counting (the retry reserves again). Never
        raises, so the call's own error is what the workflow hears: a reservation that could
        not be released holds its money only until it expires."""
        try:
            await asyncio.wait_for(self._ledger.release_spend(
                self._key, attempt=self._attempt, on_wait=activity.heartbeat), timeout)
        except Exception as err:
            log.warning("reservation of %s not released (it holds until it expires): %s",
                        self._key, err)


def _spend_attempt(info: activity.Info) -> int:
    """What the call's reservation knows this attempt by. An activity's own attempt number,
    except for a local activity (``execution.local_model_calls``): its attempts restart at 1
    when the workflow task is retried on another worker after a crash, so a dead attempt that
    reserved would be taken for this one ("held", never charged) and a re-run after a
    settled attempt would have its settle dropped. There a nonce of this execution stands in
    (at or above 2**16, so never an attempt number; a clash of two is one in ~2**31)."""
    if not info.is_local:
        return info.attempt
    return _NONCE_FLOOR + secrets.randbelow(2**31 - 1 - _NONCE_FLOOR)


_NONCE_FLOOR = 2**16


def _refusal(tenant: str, got: Reservation, usd: float) -> str:
    window: WindowKind | None = got.window
    resets = got.resets_at.strftime("%Y-%m-%d %H:%M UTC") if got.resets_at else "?"
    return (f"tenant {tenant!r} is over its {window} spending window: "
            f"${got.spent_usd or 0:.4f} spent and ${got.reserved_usd or 0:.4f} reserved by "
            f"calls in flight of its ${got.cap_usd or 0:.4f} cap, and this model call is "
            f"estimated at ${usd:.4f}; the window resets at {resets} "
            f"(STEAD_TENANT_QUOTAS usd_per_{window})")



def _leading_system(messages: list[Message]) -> int:
    """How many messages at the start are system messages (instructions, recalled memory)."""
    k = 0
    while k < len(messages) and messages[k].role == "system":
        k += 1
    return k

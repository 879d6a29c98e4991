"""Memory activities: recall before the model thinks, remember after a run.

Embedding happens here (batched, retried by Temporal), never in workflows. Every recall and
write is logged in the ledger's ``stead_memory_ops``.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from stead.contracts.models import (
    MemoryOpRecord,
    RecalledItem,
    RecallRequest,
    RecallResult,
    WriteRequest,
)
from stead.integrations.llm import ModelCallError
from stead.observability.tracing import NO_TRACING, SteadTracing
from stead.storage.ledger import Ledger
from stead.storage.memory._types import (
    Embedder,
    MemoryError,
    MemoryItem,
    MemoryUnavailable,
    VectorStore,
)


class MemoryActivities:
    """Bound to one vector store, one embedder and the ledger."""

    def __init__(self, store: VectorStore, embedder: Embedder, ledger: Ledger, *,
                 backend: str, tracing: SteadTracing = NO_TRACING) -> None:
        self._tracing = tracing
        self._store = store
        self._embedder = embedder
        self._ledger = ledger
        self._backend = backend

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        with self._tracing.embeddings(embedder=self._embedder.name, inputs=len(texts)):
            try:
                return await self._embedder.embed(texts)
            except ModelCallError as err:
                raise ApplicationError(str(err), type=err.kind, non_retryable=not err.retryable,
                                       next_retry_delay=err.retry_after) from err

    @activity.defn(name="memory.recall")
    async def recall(self, req: RecallRequest) -> RecallResult:
        with self._tracing.memory("recall", ref=req.ref, backend=self._backend,
                                  embedder=self._embedder.name,
                                  namespaces=req.namespaces, texts=[req.query]) as span:
            result = await self._recall(req)
            span.items([i.id for i in result.items], [i.score for i in result.items])
        return result

    @activity.defn(name="memory.write")
    async def write(self, req: WriteRequest) -> list[str]:
        with self._tracing.memory("write", ref=req.ref, backend=self._backend,
                                  embedder=self._embedder.name,
                                  namespaces=sorted({n.namespace for n in req.notes}),
                                  texts=[n.text for n in req.notes]) as span:
            ids = await self._write(req)
            span.items(ids)
        return ids

    async def _recall(self, req: RecallRequest) -> RecallResult:
        started = time.perf_counter()
        [vector] = await self._embed([req.query])
        hits = []
        try:
            for ns in req.namespaces or [None]:  # type: ignore[list-item]
                hits += await self._store.query(req.ref.tenant, vector, top_k=req.top_k,
                                                namespace=ns, agent=req.ref.agent,
                                                now=datetime.now(UTC))
        except MemoryError as err:
            raise ApplicationError(str(err), type=type(err).__name__,
                                   non_retryable=not isinstance(err, MemoryUnavailable)) from err
        hits = sorted((h for h in hits if h.score >= req.min_score),
                      key=lambda h: -h.score)[: req.top_k]
        items = [RecalledItem(id=h.item.id, namespace=h.item.namespace, text=h.item.text,
                              score=round(h.score, 4), metadata=h.item.metadata) for h in hits]
        await self._ledger.record_memory_op(req.ref, MemoryOpRecord(
            op="recall", namespaces=req.namespaces, query=req.query,
            item_ids=[i.id for i in items], scores=[i.score for i in items],
            embedder=self._embedder.name, backend=self._backend,
            duration_ms=(time.perf_counter() - started) * 1000), on_wait=activity.heartbeat)
        return RecallResult(items=items, embedder=self._embedder.name, backend=self._backend)

    async def _write(self, req: WriteRequest) -> list[str]:
        started = time.perf_counter()
        now = datetime.now(UTC)
        # What is remembered is recalled into later prompts: no secrets, no configured PII.
        notes = [n.model_copy(update={"text": self._ledger.redactor.text(n.text)})
                 for n in req.notes]
        vectors = await self._embed([n.text for n in notes])
        items: list[tuple[MemoryItem, list[float]]] = []
        for n, vec in zip(notes, vectors, strict=True):
            # Keyed by run and content: a retried write upserts the same ids.
            digest = hashlib.sha256(n.text.encode()).hexdigest()[:16]
            item = MemoryItem(
                id=f"{req.ref.workflow_id}:{req.ref.step}:{digest}", tenant=req.ref.tenant,
                namespace=n.namespace, agent=req.ref.agent, subject=n.subject, text=n.text,
                metadata={**n.metadata, "workflow_id": req.ref.workflow_id,
                          "run_id": req.ref.run_id, "step": req.ref.step,
                          "written_at": now.isoformat()},
                created_at=now,
                expires_at=now + timedelta(seconds=n.ttl_seconds) if n.ttl_seconds else None,
                embedder=self._embedder.name)
            items.append((item, vec))
        try:
            await self._store.upsert(items)
        except MemoryError as err:
            raise ApplicationError(str(err), type=type(err).__name__,
                                   non_retryable=not isinstance(err, MemoryUnavailable)) from err
        ids = [i.id for i, _ in items]
        await self._ledger.record_memory_op(req.ref, MemoryOpRecord(
            op="write", namespaces=sorted({n.namespace for n in req.notes}), query=None,
            item_ids=ids, scores=[], embedder=self._embedder.name, backend=self._backend,
            duration_ms=(time.perf_counter() - started) * 1000), on_wait=activity.heartbeat)
        return ids

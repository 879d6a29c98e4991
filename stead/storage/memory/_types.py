"""Semantic memory types: what an agent should recall, kept apart from what it did (ledger).

    store = PgVectorStore(pool)             # or PineconeStore(...)
    await store.ensure(embedder.dimension)  # DimensionMismatch on a wrong embedder
    await store.upsert("acme", [(item, vector)], namespace="runbooks")
    hits = await store.query("acme", vector, top_k=5, filter={"kind": "runbook"})

Every item belongs to a tenant; no operation ever crosses tenants. Within a tenant, items
live in namespaces (e.g. ``runbooks``, ``facts``) that carry their own retention.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from stead.errors import SteadError

Scalar = str | int | float | bool
Filter = dict[str, Scalar | dict[str, Scalar | list[Scalar]]]
"""Pinecone-style metadata filter: ``{"kind": "runbook"}``, ``{"service": {"$in": [...]}}``,
operators ``$eq $ne $gt $gte $lt $lte $in $nin``; all keys must hold (AND)."""


class MemoryError(SteadError):
    """A memory operation failed (bad filter, unreachable store, ...)."""


class MemoryUnavailable(MemoryError):
    """The store could not be reached (network, restart, rate limit): worth retrying."""


class DimensionMismatch(MemoryError):
    """The embedder's dimension differs from the index's; re-embed or change the embedder."""


class MemoryItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=512)
    tenant: str = Field(min_length=1)
    namespace: str = Field("default", min_length=1, pattern=r"^[a-zA-Z0-9_.-]+$")
    agent: str | None = None
    """Only this agent recalls it (None: every agent of the tenant)."""
    subject: str | None = None
    """The person the item is about (a user id), for delete-a-subject."""
    text: str = Field(min_length=1)
    metadata: dict[str, Scalar] = Field(default_factory=dict)
    """Provenance and labels, e.g. run_id, step, kind, service."""
    created_at: datetime
    expires_at: datetime | None = None
    embedder: str = ""
    """Which embedder produced the stored vector (re-embedding finds stale items by it)."""


class Hit(BaseModel):
    item: MemoryItem
    score: float
    """Cosine similarity, 1 = same direction."""


@runtime_checkable
class Embedder(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


@runtime_checkable
class VectorStore(Protocol):
    async def ensure(self, dimension: int, *, embedder: str = "") -> None:
        """Check the index holds ``dimension``-wide vectors (of ``embedder``, named in
        errors); raise DimensionMismatch if it has another dimension."""
        ...

    async def upsert(self, items: list[tuple[MemoryItem, list[float]]]) -> None: ...

    async def query(self, tenant: str, vector: list[float], *, top_k: int = 5,
                    namespace: str | None = None, agent: str | None = None,
                    filter: Filter | None = None, now: datetime | None = None) -> list[Hit]:
        """Top-k by cosine similarity within one tenant. ``agent`` given: items of that agent
        plus items with no agent. ``namespace`` None: all of the tenant's namespaces.
        Expired items (expires_at <= now) never come back."""
        ...

    async def delete(self, tenant: str, *, ids: list[str] | None = None,
                     filter: Filter | None = None, namespace: str | None = None) -> int: ...

    async def delete_subject(self, tenant: str, subject: str) -> int: ...

    async def purge_expired(self, now: datetime) -> int: ...

    async def stats(self, tenant: str | None = None) -> dict[str, dict[str, int]]:
        """{tenant/namespace: {"items": n}}."""
        ...

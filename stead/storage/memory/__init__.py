"""Semantic memory: a vector store (pgvector by default, Pinecone when configured) and an
embedder, kept apart from the ledger's deterministic state.

    memory = await open_memory(settings, pool=ledger.pool)   # None when STEAD_MEMORY_BACKEND=off
    hits = await memory.search("acme", "payments-db is slow", top_k=3)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from stead.errors import SettingsError
from stead.storage.memory._types import (
    DimensionMismatch,
    Embedder,
    Filter,
    Hit,
    MemoryError,
    MemoryItem,
    MemoryUnavailable,
    VectorStore,
)

if TYPE_CHECKING:
    import asyncpg

    from stead.settings import Settings

log = logging.getLogger("stead.memory")


@dataclass
class Memory:
    """An opened store plus the embedder whose vectors it holds."""

    store: VectorStore
    embedder: Embedder
    backend: str
    """``pgvector`` or ``pinecone``."""

    async def search(self, tenant: str, text: str, *, top_k: int = 5,
                     namespace: str | None = None, agent: str | None = None,
                     filter: Filter | None = None) -> list[Hit]:
        [vector] = await self.embedder.embed([text])
        return await self.store.query(tenant, vector, top_k=top_k, namespace=namespace,
                                      agent=agent, filter=filter, now=datetime.now(UTC))

    async def reembed(self, *, tenant: str | None = None, batch: int = 256) -> int:
        """Re-embed items stored by another embedder (pgvector); returns how many."""
        from stead.storage.memory.pgvector import PgVectorStore

        store = self.store
        if not isinstance(store, PgVectorStore):
            raise MemoryError("re-embedding runs on the pgvector backend; for Pinecone, "
                              "create an index of the new dimension and upsert into it")
        if await store.column_dimension() != self.embedder.dimension:
            await store.reset_dimension(self.embedder.dimension)
        done = 0
        while items := await store.stale_items(self.embedder.name, tenant=tenant, limit=batch):
            vectors = await self.embedder.embed([i.text for i in items])
            await store.upsert([(i.model_copy(update={"embedder": self.embedder.name}), v)
                                for i, v in zip(items, vectors, strict=True)])
            done += len(items)
        return done

    async def close(self) -> None:
        close = getattr(self.store, "close", None)
        if close is not None:
            await close()


def choose_embedder(settings: Settings) -> Embedder:
    """OpenAI when configured, else the offline MiniLM extra, else (with a warning) hashing."""
    from stead.storage.memory.embedders import HashingEmbedder, embedder_from_settings

    try:
        return embedder_from_settings(settings.models, model=settings.memory.embedding_model,
                                      dimension=settings.memory.embedding_dimension)
    except ImportError as err:
        log.warning("%s — falling back to the hashing embedder (word overlap, not meaning)",
                    err)
        return HashingEmbedder(384)


async def open_memory(settings: Settings, *, pool: asyncpg.Pool | None = None,
                      embedder: Embedder | None = None) -> Memory | None:
    """Open the configured store and check the embedder's dimension against its index.

    Raises ``DimensionMismatch`` (naming both dimensions and the fix) when they differ.
    """
    mem = settings.memory
    backend = mem.backend
    if backend == "off":
        return None
    has_pinecone = mem.pinecone_api_key is not None and mem.pinecone_host is not None
    if backend == "pinecone" and not has_pinecone:
        raise SettingsError("STEAD_MEMORY_BACKEND=pinecone needs PINECONE_API_KEY and "
                            "STEAD_PINECONE_HOST (the index's data-plane host)")
    emb = embedder or choose_embedder(settings)
    store: VectorStore
    if backend == "pinecone" or (backend == "auto" and has_pinecone):
        from stead.storage.memory.pinecone import PineconeStore

        assert mem.pinecone_api_key is not None and mem.pinecone_host is not None
        store = PineconeStore.connect(api_key=mem.pinecone_api_key.get_secret_value(),
                                      host=mem.pinecone_host)
        name = "pinecone"
    else:
        from stead.storage.memory.pgvector import PgVectorStore

        if pool is not None:
            store = PgVectorStore(pool, ef_search=mem.ef_search)
        else:
            assert settings.ledger.database_url is not None
            store = await PgVectorStore.connect(settings.ledger.database_url,
                                                ef_search=mem.ef_search,
                                                min_size=0, max_size=4)
        name = "pgvector"
    memory = Memory(store=store, embedder=emb, backend=name)
    try:
        await store.ensure(emb.dimension)
    except BaseException:
        await memory.close()
        raise
    return memory


__all__ = [
    "DimensionMismatch",
    "Embedder",
    "Filter",
    "Hit",
    "Memory",
    "MemoryError",
    "MemoryItem",
    "MemoryUnavailable",
    "VectorStore",
    "choose_embedder",
    "open_memory",
]

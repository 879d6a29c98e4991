"""Semantic memory: a vector store (pgvector by default, Pinecone when configured) and an
embedder (``STEAD_EMBEDDER``), kept apart from the ledger's deterministic state.

    memory = await open_memory(settings, pool=ledger.pool)   # None when memory is off
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
    owns_embedder: bool = False
    """:meth:`close` closes the embedder too (``open_memory`` made it)."""

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
            await store.reset_dimension(self.embedder.dimension, embedder=self.embedder.name)
        done = 0
        while items := await store.stale_items(self.embedder.name, tenant=tenant, limit=batch):
            vectors = await self.embedder.embed([i.text for i in items])
            await store.upsert([(i.model_copy(update={"embedder": self.embedder.name}), v)
                                for i, v in zip(items, vectors, strict=True)])
            done += len(items)
        return done

    async def close(self) -> None:
        for part in (self.store, self.embedder if self.owns_embedder else None):
            close = getattr(part, "close", None)
            if close is not None:
                await close()


def choose_embedder(settings: Settings) -> Embedder | None:
    """The embedder ``STEAD_EMBEDDER`` chooses (None: ``none``), checked; ``SettingsError``
    naming the variable when the settings do not add up.

    ``local`` without the ``embeddings`` extra is an error; ``auto`` falls back to the hashing
    embedder with a warning, as it always did offline.
    """
    from stead.storage.memory.embedders import HashingEmbedder, embedder_config

    config = embedder_config(settings.memory, settings.models)
    try:
        return config.build()
    except ImportError as err:
        if not config.fallback:
            raise SettingsError(f"invalid setting: STEAD_EMBEDDER=local: {err}") from None
        log.warning("%s — falling back to the hashing embedder (word overlap, not meaning); "
                    "STEAD_EMBEDDER=local makes this an error", err)
        return HashingEmbedder(384)


def check_memory_settings(settings: Settings, *, embedder: bool = True) -> None:
    """Raise ``SettingsError`` naming the variable and the reason when the memory settings do
    not add up (backend, and with ``embedder`` the embedder's); no I/O. A worker calls it
    before anything starts. Nothing to check when ``STEAD_MEMORY_BACKEND=off``."""
    from stead.storage.memory.embedders import embedder_config
    from stead.storage.memory.pgvector import MAX_DIMENSION

    mem = settings.memory
    if mem.backend == "off":
        return
    if mem.backend == "pinecone" and not _has_pinecone(settings):
        raise SettingsError("invalid setting: STEAD_MEMORY_BACKEND=pinecone needs "
                            "PINECONE_API_KEY and STEAD_PINECONE_HOST (the index's data-plane "
                            "host)")
    if not embedder:
        return
    config = embedder_config(mem, settings.models)
    if _uses_pgvector(settings) and config.dimension is not None and \
            config.dimension > MAX_DIMENSION:
        raise SettingsError(
            f"invalid setting: STEAD_EMBEDDING_DIMENSION: {config.model} makes "
            f"{config.dimension}-dimensional vectors and pgvector's HNSW index takes at most "
            f"{MAX_DIMENSION}; set STEAD_EMBEDDING_DIMENSION={MAX_DIMENSION} "
            f"or fewer (text-embedding-3 models shorten their vectors), or keep memory in "
            f"Pinecone")


def _has_pinecone(settings: Settings) -> bool:
    return settings.memory.pinecone_api_key is not None and \
        settings.memory.pinecone_host is not None


def _uses_pgvector(settings: Settings) -> bool:
    backend = settings.memory.backend
    return backend == "pgvector" or (backend == "auto" and not _has_pinecone(settings))


async def open_memory(settings: Settings, *, pool: asyncpg.Pool | None = None,
                      embedder: Embedder | None = None) -> Memory | None:
    """Open the configured store and check the embedder's dimension against its index.

    None when memory is off (``STEAD_MEMORY_BACKEND=off`` or ``STEAD_EMBEDDER=none``).
    ``embedder`` None: the one settings choose (:func:`choose_embedder`), closed with the
    memory. On pgvector the first start gives an empty index the embedder's dimension, as the
    tables' owner (``settings.ledger.migration_database_url``; see
    :meth:`~stead.storage.memory.pgvector.PgVectorStore.ensure`). Raises ``SettingsError`` on
    memory settings that do not add up, and ``DimensionMismatch`` (naming both dimensions and
    the fix) when an index that holds items, or a Pinecone index, has another dimension.
    """
    from stead.storage.memory.pgvector import PgVectorStore
    from stead.storage.memory.pinecone import PineconeStore

    mem = settings.memory
    check_memory_settings(settings, embedder=embedder is None)
    if mem.off:
        return None
    emb = embedder or choose_embedder(settings)
    assert emb is not None  # memory is on, so settings chose an embedder
    store: PgVectorStore | PineconeStore
    if _uses_pgvector(settings):
        if pool is not None:
            store = PgVectorStore(pool, ef_search=mem.ef_search)
        else:
            assert settings.ledger.database_url is not None
            store = await PgVectorStore.connect(settings.ledger.database_url,
                                                ef_search=mem.ef_search,
                                                min_size=0, max_size=4)
    else:
        assert mem.pinecone_api_key is not None and mem.pinecone_host is not None
        store = PineconeStore.connect(api_key=mem.pinecone_api_key.get_secret_value(),
                                      host=mem.pinecone_host)
    memory = Memory(store=store, embedder=emb,
                    backend="pgvector" if isinstance(store, PgVectorStore) else "pinecone",
                    owns_embedder=embedder is None)
    try:
        if isinstance(store, PgVectorStore):
            await store.ensure(emb.dimension, embedder=emb.name,
                               owner_dsn=settings.ledger.migration_database_url)
        else:
            await store.ensure(emb.dimension, embedder=emb.name)
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
    "check_memory_settings",
    "choose_embedder",
    "open_memory",
]

"""The ops agent's knowledge base: runbooks shipped as Markdown, indexed into memory.

    await index_runbooks(store, embedder, tenant="default")   # idempotent: ids are stable
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from stead.storage.memory._types import Embedder, MemoryItem, VectorStore

RUNBOOK_DIR = Path(__file__).with_name("runbooks")
NAMESPACE = "runbooks"


@dataclass(frozen=True)
class Runbook:
    slug: str
    title: str
    service: str
    body: str

    @property
    def text(self) -> str:
        return f"{self.title} ({self.service}). {' '.join(self.body.split())}"


def load_runbooks(directory: Path = RUNBOOK_DIR) -> list[Runbook]:
    out: list[Runbook] = []
    for path in sorted(directory.glob("*.md")):
        raw = path.read_text()
        _, front, body = raw.split("---", 2)
        meta = dict(line.split(":", 1) for line in front.strip().splitlines())
        out.append(Runbook(slug=path.stem, title=meta["title"].strip(),
                           service=meta["service"].strip(), body=body.strip()))
    return out


async def index_runbooks(store: VectorStore, embedder: Embedder, *, tenant: str = "default",
                         directory: Path = RUNBOOK_DIR) -> int:
    """Upsert every runbook for ``tenant`` (stable ids, so re-indexing replaces)."""
    books = load_runbooks(directory)
    vectors = await embedder.embed([b.text for b in books])
    now = datetime.now(UTC)
    await store.upsert([
        (MemoryItem(id=f"runbook:{b.slug}", tenant=tenant, namespace=NAMESPACE, agent="ops",
                    text=b.text, metadata={"kind": "runbook", "title": b.title,
                                           "service": b.service},
                    created_at=now, embedder=embedder.name), v)
        for b, v in zip(books, vectors, strict=True)])
    return len(books)

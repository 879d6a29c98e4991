"""``stead memory``: the semantic memory store from the command line (``stead memory --help``).

    stead memory add "checkout-api pages at p95 > 800 ms" --namespace runbooks --meta kind=runbook
    stead memory search "slow checkout" --filter '{"kind": "runbook"}' --json
    stead memory delete --subject user-42           # everything about one user
    stead memory stats | reembed | retention | purge | index-runbooks

Exit codes: 0 success; 2 bad input, or memory is off (``STEAD_MEMORY_BACKEND=off``); 3 the
memory store is unreachable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import typer
from pydantic import ValidationError
from rich.table import Table

from stead.cli.common import (
    EXIT_BAD_INPUT,
    T,
    cli_settings,
    fail,
    fail_invalid,
    json_object_option,
    out,
    print_json,
    resolved,
    run_async,
)
from stead.errors import SettingsError, StackError
from stead.settings import Settings

memory_app = typer.Typer(help="Semantic memory: add, search, delete, stats, re-embed.",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``memory`` and its subcommands to the ``stead`` app."""
    app.add_typer(memory_app, name="memory")


def _parse_filter(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    return json_object_option("--filter", text, example="'{\"kind\": \"runbook\"}'")


def _parse_meta(pairs: list[str]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            fail(f"--meta takes key=value, got {p!r}", EXIT_BAD_INPUT)
        meta[key] = value
    return meta


async def _with_memory(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from stead.storage.memory import MemoryError as StoreError
    from stead.storage.memory import open_memory

    try:
        memory = await open_memory(settings)
    except (OSError, StoreError) as e:
        raise StackError(f"memory store unavailable: {e}") from None
    if memory is None:
        raise SettingsError("memory is off (STEAD_MEMORY_BACKEND=off or STEAD_EMBEDDER=none)")
    try:
        return await fn(memory)
    except StoreError as e:
        raise SettingsError(str(e)) from None
    finally:
        await memory.close()


@memory_app.command("add")
def memory_add(
    text: str = typer.Argument(..., help="What to remember"),
    tenant: str = typer.Option("default", help="Tenant the item belongs to"),
    namespace: str = typer.Option("notes", help="Namespace within the tenant"),
    agent: str | None = typer.Option(None, help="Only this agent recalls it"),
    subject: str | None = typer.Option(None, help="User id the item is about"),
    item_id: str | None = typer.Option(None, "--id", help="Item id (default: content hash)"),
    ttl: int | None = typer.Option(None, help="Seconds until it expires"),
    meta: list[str] = typer.Option([], help="key=value metadata (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Embed and store one item."""
    import hashlib
    from datetime import UTC, datetime
    from datetime import timedelta as td

    from stead.storage.memory import MemoryItem

    if not text.strip():
        fail("text is empty", EXIT_BAD_INPUT)
    now = datetime.now(UTC)
    try:
        item = MemoryItem(
            id=item_id or "note:" + hashlib.sha256(text.encode()).hexdigest()[:16],
            tenant=tenant, namespace=namespace, agent=agent, subject=subject, text=text,
            metadata=_parse_meta(meta), created_at=now,
            expires_at=now + td(seconds=ttl) if ttl else None)
    except ValidationError as e:
        fail_invalid("item", e)

    async def go(memory: Any) -> dict[str, Any]:
        [vector] = await memory.embedder.embed([item.text])
        await memory.store.upsert([(item.model_copy(update={"embedder": memory.embedder.name}),
                                    vector)])
        return {"id": item.id, "tenant": tenant, "namespace": namespace,
                "embedder": memory.embedder.name, "backend": memory.backend}

    done = run_async(_with_memory(resolved(cli_settings()), go))
    if as_json:
        print_json(done)
    else:
        out.print(f"stored [bold]{done['id']}[/] in {tenant}/{namespace} "
                  f"({done['backend']}, {done['embedder']})", highlight=False)


@memory_app.command("search")
def memory_search(
    query: str = typer.Argument(..., help="What to look for"),
    tenant: str = typer.Option("default", help="Tenant to search (never crosses tenants)"),
    namespace: str | None = typer.Option(None, help="Only this namespace"),
    agent: str | None = typer.Option(None, help="As this agent (its items and shared ones)"),
    top_k: int = typer.Option(5, min=1, max=100, help="How many results"),
    filter_: str | None = typer.Option(None, "--filter", help="Metadata filter as JSON"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Top-k items by meaning."""
    flt = _parse_filter(filter_)

    async def go(memory: Any) -> list[dict[str, Any]]:
        hits = await memory.search(tenant, query, top_k=top_k, namespace=namespace,
                                   agent=agent, filter=flt)
        return [{"score": round(h.score, 4), **h.item.model_dump(mode="json")} for h in hits]

    hits = run_async(_with_memory(resolved(cli_settings()), go))
    if as_json:
        print_json(hits)
        return
    table = Table("score", "id", "namespace", "text")
    for h in hits:
        table.add_row(f"{h['score']:.3f}", h["id"], h["namespace"], h["text"][:100])
    out.print(table)


@memory_app.command("delete")
def memory_delete(
    tenant: str = typer.Option("default", help="Tenant to delete from"),
    ids: list[str] = typer.Option([], "--id", help="Item id (repeatable)"),
    filter_: str | None = typer.Option(None, "--filter", help="Metadata filter as JSON"),
    subject: str | None = typer.Option(None, help="Erase everything about this user id"),
    namespace: str | None = typer.Option(None, help="Only this namespace"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Delete by id, by filter, or everything about a subject."""
    flt = _parse_filter(filter_)
    if sum(bool(x) for x in (ids, flt, subject)) != 1:
        fail("give exactly one of --id, --filter, --subject", EXIT_BAD_INPUT)

    async def go(memory: Any) -> int:
        if subject:
            return int(await memory.store.delete_subject(tenant, subject))
        return int(await memory.store.delete(tenant, ids=ids or None, filter=flt,
                                             namespace=namespace))

    n = run_async(_with_memory(resolved(cli_settings()), go))
    if as_json:
        print_json({"deleted": n})
    else:
        out.print(f"deleted {n} item(s) from tenant {tenant}")


@memory_app.command("stats")
def memory_stats(
    tenant: str | None = typer.Option(None, help="Only this tenant"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Items per tenant and namespace."""
    async def go(memory: Any) -> dict[str, Any]:
        return {"backend": memory.backend, "embedder": memory.embedder.name,
                "dimension": memory.embedder.dimension,
                "namespaces": await memory.store.stats(tenant)}

    data = run_async(_with_memory(resolved(cli_settings()), go))
    if as_json:
        print_json(data)
        return
    out.print(f"{data['backend']} — embedder {data['embedder']} ({data['dimension']} dims)")
    table = Table("tenant/namespace", "items")
    for key, st in sorted(data["namespaces"].items()):
        table.add_row(key, str(st.get("items", 0)))
    out.print(table)


@memory_app.command("reembed")
def memory_reembed(
    tenant: str | None = typer.Option(None, help="Only this tenant"),
) -> None:
    """Re-embed items stored by another embedder (after changing the embedder)."""
    from stead.storage.memory import DimensionMismatch, choose_embedder
    from stead.storage.memory.pgvector import PgVectorStore

    settings = resolved(cli_settings())

    async def go() -> tuple[int, str]:
        from stead.storage.memory import Memory

        embedder = None if settings.memory.off else choose_embedder(settings)
        if embedder is None:
            raise SettingsError("memory is off (STEAD_MEMORY_BACKEND=off or "
                                "STEAD_EMBEDDER=none): nothing to re-embed with")
        # A new dimension alters the column, which only the tables' owner may do.
        assert settings.ledger.migration_database_url is not None
        store = await PgVectorStore.connect(settings.ledger.migration_database_url, min_size=0,
                                            max_size=2)
        memory = Memory(store=store, embedder=embedder, backend="pgvector",
                        owns_embedder=True)
        try:
            try:
                await store.ensure(memory.embedder.dimension, embedder=memory.embedder.name)
            except DimensionMismatch:
                pass  # exactly what reembed fixes
            done = await memory.reembed(tenant=tenant)
            return done, f"{embedder.name}, {embedder.dimension} dimensions"
        finally:
            await memory.close()

    n, by = run_async(go())
    out.print(f"re-embedded {n} item(s) ({by})")


@memory_app.command("retention")
def memory_retention(
    tenant: str = typer.Option("default", help="Tenant"),
    namespace: str | None = typer.Option(None, help="Namespace to set (omit to list)"),
    ttl: int | None = typer.Option(None, min=1, help="Seconds items live (with --namespace)"),
    forever: bool = typer.Option(False, help="Remove the namespace's TTL"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Show or set per-namespace retention (TTL applied to items written from now on)."""
    if namespace is not None and (ttl is None) == (not forever):
        fail("with --namespace give exactly one of --ttl SECONDS or --forever", EXIT_BAD_INPUT)

    async def go(memory: Any) -> dict[str, int]:
        if namespace is not None:
            await memory.store.set_retention(tenant, namespace, None if forever else ttl)
        return dict(await memory.store.retention(tenant))

    data = run_async(_with_memory(resolved(cli_settings()), go))
    if as_json:
        print_json(data)
        return
    table = Table("namespace", "ttl (s)")
    for ns, seconds in sorted(data.items()):
        table.add_row(ns, str(seconds))
    out.print(table if data else f"no retention set for tenant {tenant} (items live forever)")


@memory_app.command("purge")
def memory_purge() -> None:
    """Delete expired items now (retention)."""
    from datetime import UTC, datetime

    async def go(memory: Any) -> int:
        return int(await memory.store.purge_expired(datetime.now(UTC)))

    n = run_async(_with_memory(resolved(cli_settings()), go))
    out.print(f"purged {n} expired item(s)")


@memory_app.command("index-runbooks")
def memory_index_runbooks(
    tenant: str = typer.Option("default", help="Tenant to index for"),
) -> None:
    """Index the ops agent's shipped runbooks (idempotent)."""
    from stead.agents.ops.runbooks import index_runbooks

    async def go(memory: Any) -> int:
        return await index_runbooks(memory.store, memory.embedder, tenant=tenant)

    n = run_async(_with_memory(resolved(cli_settings()), go))
    out.print(f"indexed {n} runbook(s) for tenant {tenant}")


"""``python -m bench.memory``: pgvector memory — HNSW recall@10 against exact search, latency
and queries/s at 1 and 4 concurrent clients, for each ``ef_search``.

    python -m bench.memory                       # 100 000 x 384, 200 queries, ef 40 and 100
    python -m bench.memory --n 20000 --queries 100 --ef-search 20,40,100 --json out.json

It starts its own embedded PostgreSQL (pgvector) in a temporary directory on a free port, or,
with ``DATABASE_URL`` set, creates a scratch database on that server and drops it afterwards.
Then: migrate, load N synthetic vectors (a Gaussian mixture: clustered like real embeddings,
unit length, fixed seed) into one tenant with COPY, build the migration's HNSW index
(m=16, ef_construction=64) and time it, compute each query's exact top 10 with an
index-free scan, and run the same queries through
:class:`~stead.storage.memory.pgvector.PgVectorStore` (the code agents use: tenant filter, ``SET
LOCAL hnsw.ef_search``, one transaction per query).

Queries are fresh samples of the same mixture, not stored vectors. numpy generates the data
when installed (faster); otherwise the standard library does, with the same distribution.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench.machine import load_average, machine_details
from stead.stack.embedded import EmbeddedPostgres, free_port
from stead.storage.ledger import migrate
from stead.storage.memory.pgvector import PgVectorStore

TENANT = "bench"
TOP_K = 10
TARGET_RECALL = 0.95
TARGET_P50_MS = 10.0


@dataclass(frozen=True)
class Config:
    n: int = 100_000
    dim: int = 384
    queries: int = 200
    ef_search: tuple[int, ...] = (40, 100)
    clusters: int = 100
    spread: float = 0.05
    """Per-coordinate standard deviation around a cluster centre (centres have unit length)."""
    seed: int = 42
    batch: int = 5_000


@dataclass
class EfResult:
    ef_search: int
    recall_at_10: float
    p50_ms: float
    p95_ms: float
    qps_1: float
    p50_ms_4: float
    p95_ms_4: float
    qps_4: float


@dataclass
class Result:
    config: dict[str, Any]
    generator: str
    load_seconds: float
    index_build_seconds: float
    index_mb: float
    table_mb: float
    exact_p50_ms: float
    plan: str
    per_ef: list[EfResult] = field(default_factory=list)
    chosen_ef_search: int | None = None


# ---------------------------------------------------------------------------- data


class _Mixture:
    """Unit vectors around ``clusters`` random unit centres; numpy if available."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        try:
            import numpy as np
        except ImportError:
            self.np: Any = None
            self.rng = random.Random(cfg.seed)
            self.centres = [_unit([self.rng.gauss(0, 1) for _ in range(cfg.dim)])
                            for _ in range(cfg.clusters)]
        else:
            self.np = np
            self.nrng = np.random.default_rng(cfg.seed)
            c = self.nrng.standard_normal((cfg.clusters, cfg.dim))
            self.ncentres = c / np.linalg.norm(c, axis=1, keepdims=True)

    @property
    def generator(self) -> str:
        return f"numpy {self.np.__version__}" if self.np is not None else "python random"

    def sample(self, count: int) -> Iterator[tuple[int, list[float]]]:
        """``count`` (cluster, unit vector) pairs."""
        cfg = self.cfg
        if self.np is not None:
            np = self.np
            for start in range(0, count, 10_000):
                m = min(10_000, count - start)
                labels = self.nrng.integers(0, cfg.clusters, m)
                x = self.ncentres[labels] + cfg.spread * self.nrng.standard_normal((m, cfg.dim))
                x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
                yield from zip(labels.tolist(), x.tolist(), strict=True)
            return
        for _ in range(count):
            label = self.rng.randrange(cfg.clusters)
            centre = self.centres[label]
            gauss = self.rng.gauss
            yield label, _unit([c + cfg.spread * gauss(0, 1) for c in centre])


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(math.fsum(x * x for x in v))
    return [x / norm for x in v]


def _vector_text(v: Sequence[float]) -> str:
    # float32 has ~7 significant digits; more would only slow COPY down.
    return "[" + ",".join([format(x, ".7g") for x in v]) + "]"


# ---------------------------------------------------------------------------- database


@contextlib.asynccontextmanager
async def _database(progress: Any) -> AsyncIterator[str]:
    """A migrated database of our own: embedded, or a scratch one on DATABASE_URL's server."""
    url = os.environ.get("DATABASE_URL")
    if url:
        name = f"stead_bench_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(url)
        await admin.execute(f'create database "{name}"')
        progress(f"scratch database {name} on DATABASE_URL's server")
        try:
            dsn = url.rsplit("/", 1)[0] + f"/{name}"
            await migrate(dsn)
            yield dsn
        finally:
            await admin.execute(f'drop database if exists "{name}" with (force)')
            await admin.close()
        return
    with tempfile.TemporaryDirectory(prefix="stead-bench-memory-") as tmp:
        pg = EmbeddedPostgres(Path(tmp), port=free_port())
        progress(f"starting embedded PostgreSQL in {tmp} on :{pg.port}")
        await pg.start()
        try:
            await migrate(pg.url)
            yield pg.url
        finally:
            await pg.stop()


async def _load(conn: asyncpg.Connection, cfg: Config, mix: _Mixture, progress: Any) -> float:
    began = time.perf_counter()
    created = "2030-01-01 00:00:00+00"
    buf = io.StringIO()
    rows = 0

    async def flush() -> None:
        nonlocal buf
        data = io.BytesIO(buf.getvalue().encode())
        await conn.copy_to_table(
            "stead_memory", source=data, format="text",
            columns=["tenant", "namespace", "id", "text", "metadata", "embedding", "embedder",
                     "created_at"])
        buf = io.StringIO()

    for i, (label, v) in enumerate(mix.sample(cfg.n)):
        buf.write(f"{TENANT}\tbench\tv{i:07d}\tsynthetic item {i}\t{{\"cluster\": {label}}}\t"
                  f"{_vector_text(v)}\tbench-mixture\t{created}\n")
        rows += 1
        if rows % cfg.batch == 0:
            await flush()
            if rows % (cfg.batch * 4) == 0:
                progress(f"loaded {rows}/{cfg.n}")
    await flush()
    return time.perf_counter() - began


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


async def _run_clients(store: PgVectorStore, queries: list[list[float]],
                       clients: int) -> tuple[list[list[str]], list[float], float]:
    """Each client runs its share of the queries back to back; (ids, latencies, wall s)."""
    ids: list[list[str]] = [[] for _ in queries]
    latencies: list[float] = [0.0] * len(queries)

    async def client(k: int) -> None:
        for i in range(k, len(queries), clients):
            t0 = time.perf_counter()
            hits = await store.query(TENANT, queries[i], top_k=TOP_K)
            latencies[i] = (time.perf_counter() - t0) * 1000
            ids[i] = [h.item.id for h in hits]

    began = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return ids, latencies, time.perf_counter() - began


async def run(cfg: Config, progress: Any = print) -> Result:
    mix = _Mixture(cfg)
    progress(f"data: {cfg.n} x {cfg.dim}, {cfg.clusters} clusters, spread {cfg.spread}, "
             f"seed {cfg.seed} ({mix.generator})")
    async with _database(progress) as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4)
        assert pool is not None
        try:
            store = PgVectorStore(pool)
            if cfg.dim != await store.column_dimension():
                await store.reset_dimension(cfg.dim)
            async with pool.acquire() as conn:
                # Bulk load first, index after: what a restore or a re-embed does.
                await conn.execute("drop index stead_memory_embedding")
                load_s = await _load(conn, cfg, mix, progress)
                progress(f"loaded {cfg.n} rows in {load_s:.1f}s; building the HNSW index")
                await conn.execute("set maintenance_work_mem = '512MB'")
                await conn.execute("set max_parallel_maintenance_workers = 1")
                t0 = time.perf_counter()
                await conn.execute(
                    "create index stead_memory_embedding on stead_memory using hnsw"
                    " (embedding vector_cosine_ops) with (m = 16, ef_construction = 64)")
                build_s = time.perf_counter() - t0
                await conn.execute("analyze stead_memory")
                index_mb = await conn.fetchval(
                    "select pg_relation_size('stead_memory_embedding')") / 2**20
                table_mb = await conn.fetchval(
                    "select pg_total_relation_size('stead_memory')") / 2**20
            progress(f"HNSW index built in {build_s:.1f}s ({index_mb:.0f} MB)")

            queries = [v for _, v in mix.sample(cfg.queries)]
            texts = [_vector_text(q) for q in queries]
            exact: list[list[str]] = []
            exact_ms: list[float] = []
            async with pool.acquire() as conn:
                plan = "\n".join(r[0] for r in await conn.fetch(
                    "explain select id from stead_memory where tenant = $1"
                    " order by embedding <=> $2::text::vector limit 10", TENANT, texts[0]))
                for text in texts:
                    async with conn.transaction():
                        await conn.execute("set local enable_indexscan = off")
                        t0 = time.perf_counter()
                        rows = await conn.fetch(
                            "select id from stead_memory where tenant = $1"
                            " order by embedding <=> $2::text::vector limit 10", TENANT, text)
                        exact_ms.append((time.perf_counter() - t0) * 1000)
                    exact.append([r["id"] for r in rows])
            progress(f"exact top-10 of {cfg.queries} queries: p50 "
                     f"{statistics.median(exact_ms):.1f} ms per query (no index)")
            result = Result(config=asdict(cfg), generator=mix.generator, load_seconds=load_s,
                            index_build_seconds=build_s, index_mb=index_mb, table_mb=table_mb,
                            exact_p50_ms=statistics.median(exact_ms),
                            plan=plan.splitlines()[1].strip() if "\n" in plan else plan)
            for ef in cfg.ef_search:
                store = PgVectorStore(pool, ef_search=ef)
                await _run_clients(store, queries, 1)  # warm the caches at this ef
                ids, lat1, wall1 = await _run_clients(store, queries, 1)
                _, lat4, wall4 = await _run_clients(store, queries, 4)
                recall = statistics.fmean(len(set(a) & set(e)) / TOP_K
                                          for a, e in zip(ids, exact, strict=True))
                r = EfResult(ef_search=ef, recall_at_10=recall, p50_ms=_pct(lat1, 50),
                             p95_ms=_pct(lat1, 95), qps_1=len(queries) / wall1,
                             p50_ms_4=_pct(lat4, 50), p95_ms_4=_pct(lat4, 95),
                             qps_4=len(queries) / wall4)
                result.per_ef.append(r)
                progress(f"ef_search={ef}: recall@10 {recall:.3f}, p50 {r.p50_ms:.2f} ms, "
                         f"{r.qps_1:.0f} q/s (1 client), {r.qps_4:.0f} q/s (4 clients)")
            ok = [r.ef_search for r in result.per_ef
                  if r.recall_at_10 >= TARGET_RECALL and r.p50_ms <= TARGET_P50_MS]
            result.chosen_ef_search = min(ok) if ok else None
            return result
        finally:
            await pool.close()


# ---------------------------------------------------------------------------- report


def print_report(result: Result, machine: dict[str, object], command: str) -> None:
    cfg = result.config
    print()
    print(f"pgvector memory benchmark — {cfg['n']} vectors x {cfg['dim']} dims, "
          f"{cfg['queries']} queries, top {TOP_K}")
    print(f"  command: {command}")
    print(f"  machine: {machine.get('cpu_model')}, {machine.get('nproc')} cores, "
          f"{machine.get('ram_gib')} GiB RAM, {machine.get('os')}")
    print(f"  data: Gaussian mixture, {cfg['clusters']} clusters, spread {cfg['spread']}, "
          f"seed {cfg['seed']} ({result.generator})")
    print(f"  load (COPY): {result.load_seconds:.1f} s; HNSW build (m=16, ef_construction=64): "
          f"{result.index_build_seconds:.1f} s; index {result.index_mb:.0f} MB, "
          f"table+indexes {result.table_mb:.0f} MB")
    print(f"  plan: {result.plan}")
    print(f"  exact search (no index): p50 {result.exact_p50_ms:.1f} ms per query")
    print()
    header = (f"  {'ef_search':>9}  {'recall@10':>9}  {'p50 ms':>7}  {'p95 ms':>7}  "
              f"{'q/s 1':>7}  {'p50 ms@4':>8}  {'p95 ms@4':>8}  {'q/s 4':>7}")
    print(header)
    print("  " + "-" * (len(header) - 2))
    for r in result.per_ef:
        print(f"  {r.ef_search:>9}  {r.recall_at_10:>9.3f}  {r.p50_ms:>7.2f}  {r.p95_ms:>7.2f}  "
              f"{r.qps_1:>7.0f}  {r.p50_ms_4:>8.2f}  {r.p95_ms_4:>8.2f}  {r.qps_4:>7.0f}")
    print()
    if result.chosen_ef_search is not None:
        print(f"  smallest ef_search meeting recall@10 >= {TARGET_RECALL} with p50 <= "
              f"{TARGET_P50_MS:g} ms: {result.chosen_ef_search}")
    else:
        print(f"  no ef_search tried meets recall@10 >= {TARGET_RECALL} with p50 <= "
              f"{TARGET_P50_MS:g} ms")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected integers like 40,100: {text!r}") from err
    if not values or any(not 1 <= v <= 1000 for v in values):
        raise argparse.ArgumentTypeError("ef_search values must be within 1..1000")
    return values


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=Config.n, help="vectors to load (100000)")
    ap.add_argument("--dim", type=int, default=Config.dim, help="dimension (384)")
    ap.add_argument("--queries", type=int, default=Config.queries, help="queries (200)")
    ap.add_argument("--ef-search", type=_ints, default=Config.ef_search,
                    help="comma-separated hnsw.ef_search values (40,100)")
    ap.add_argument("--clusters", type=int, default=Config.clusters)
    ap.add_argument("--spread", type=float, default=Config.spread)
    ap.add_argument("--seed", type=int, default=Config.seed)
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    cfg = Config(n=args.n, dim=args.dim, queries=args.queries, ef_search=args.ef_search,
                 clusters=args.clusters, spread=args.spread, seed=args.seed)
    command = "python -m bench.memory " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = machine_details()
    result = asyncio.run(run(cfg, progress=lambda m: print(f"[bench.memory] {m}", flush=True)))
    machine["load_average_at_end"] = load_average()
    print_report(result, machine, command.strip())
    payload = {"command": command.strip(), "machine": machine, **asdict(result)}
    print()
    print(json.dumps(payload, indent=2, default=str))
    if args.json is not None:
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"[bench.memory] wrote {args.json}")


if __name__ == "__main__":
    main()

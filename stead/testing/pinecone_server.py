"""A fake Pinecone index (data plane), so the real ``pinecone`` SDK path is tested end to end.

The server speaks the REST subset that the SDK's vector methods send to an index host, with
the SDK's own paths, headers (``Api-Key``, ``X-Pinecone-Api-Version``) and JSON shapes, keeps
vectors in memory, scores them with the configured metric, evaluates Pinecone's metadata
filter language, and can misbehave on request (429 with ``Retry-After``, 5xx, 4xx, slow
answers)::

    async with FakePineconeServer(dimension=384, api_key="test") as srv:
        index = AsyncIndex(host=srv.host, api_key="test")     # by host: no control plane
        srv.inject(PineconeFault("rate_limit", retry_after=0), endpoint="query")

Endpoints: ``POST /vectors/upsert``, ``POST /query``, ``POST /vectors/delete``,
``POST /describe_index_stats``, ``GET /vectors/fetch``, ``POST /vectors/fetch_by_metadata``
and ``GET /vectors/list``. Writes are visible at once (real Pinecone is eventually
consistent). Run it standalone to point any Pinecone client at it::

    python -m stead.testing.pinecone_server --port 8090 --dimension 384
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, Literal, assert_never

from aiohttp import web

from stead.testing._http import LocalHTTPServer

__all__ = [
    "FakePineconeServer",
    "FilterError",
    "PineconeEndpoint",
    "PineconeFault",
    "matches_filter",
]

PineconeEndpoint = Literal[
    "upsert", "query", "delete", "describe_index_stats", "fetch", "fetch_by_metadata", "list"]
"""Which request a fault is queued for."""

Metric = Literal["cosine", "dotproduct", "euclidean"]

FaultKind = Literal["rate_limit", "server_error", "client_error", "timeout"]

_STATUS: dict[FaultKind, int] = {"rate_limit": 429, "server_error": 500, "client_error": 400}
_GRPC_CODE = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND",
              429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
_MAX_METADATA_BYTES = 40_960
_MAX_UPSERT = 1_000
_MAX_TOP_K = 10_000


@dataclass(frozen=True)
class PineconeFault:
    """One misbehaviour, consumed by the next matching request instead of answering it.

        PineconeFault("rate_limit", retry_after=1)   # 429, Retry-After: 1
        PineconeFault("server_error", status=503)
        PineconeFault("timeout", delay=5)            # answers normally after 5 s
    """

    kind: FaultKind
    _: KW_ONLY
    status: int | None = None
    """HTTP status of ``rate_limit`` (429), ``server_error`` (5xx, default 500) and
    ``client_error`` (4xx except 429, default 400)."""
    retry_after: float | None = None
    """Seconds sent in ``Retry-After`` (``rate_limit`` and ``server_error``)."""
    message: str | None = None
    delay: float = 30.0
    """Seconds a ``timeout`` fault waits before answering."""

    def __post_init__(self) -> None:
        match self.kind:
            case "rate_limit":
                if self.status not in (None, 429):
                    raise ValueError("a rate_limit fault is always HTTP 429")
            case "server_error":
                if self.status is not None and not 500 <= self.status <= 599:
                    raise ValueError(f"server_error status must be 5xx, got {self.status}")
            case "client_error":
                if self.status is not None and (not 400 <= self.status <= 499
                                                or self.status == 429):
                    raise ValueError(f"client_error status must be 4xx but not 429, "
                                     f"got {self.status}")
            case "timeout":
                if self.delay <= 0:
                    raise ValueError("a timeout fault needs a positive delay")
            case _:
                assert_never(self.kind)
        if self.retry_after is not None and self.kind not in ("rate_limit", "server_error"):
            raise ValueError("retry_after only applies to rate_limit and server_error")

    @property
    def http_status(self) -> int:
        return self.status or _STATUS.get(self.kind, 200)


# ---------------------------------------------------------------------------- filters


class FilterError(ValueError):
    """A filter Pinecone would reject (HTTP 400)."""


_COMPARISONS = frozenset(("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"))


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _same(a: object, b: object) -> bool:
    """Type-exact equality: True is not 1, "5" is not 5, 5 is 5.0."""
    if isinstance(a, int | float) and isinstance(b, int | float) and _number(a) and _number(b):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


def _compare(op: str, arg: object, present: bool, value: object) -> bool:
    if op == "$exists":
        if not isinstance(arg, bool):
            raise FilterError("$exists takes true or false")
        return present is arg
    if op in ("$in", "$nin"):
        if not isinstance(arg, list) or not arg:
            raise FilterError(f"{op} takes a non-empty array")
        if any(not (isinstance(a, str) or _number(a)) for a in arg):
            raise FilterError(f"{op} takes strings and numbers")
    elif op in ("$gt", "$gte", "$lt", "$lte"):
        if not _number(arg):
            raise FilterError(f"{op} takes a number")
    elif not (isinstance(arg, str | bool) or _number(arg)):
        raise FilterError(f"{op} takes a string, number or boolean")
    # Closed world: a record without the field matches no comparison (not even $ne/$nin).
    if not present:
        return False
    values: list[object] = value if isinstance(value, list) else [value]
    options: list[object] = arg if isinstance(arg, list) else [arg]
    match op:
        case "$eq" | "$in":
            return any(_same(v, a) for v in values for a in options)
        case "$ne" | "$nin":
            return not any(_same(v, a) for v in values for a in options)
        case _:
            if not (isinstance(value, int | float) and isinstance(arg, int | float)
                    and _number(value)):
                return False
            x, y = float(value), float(arg)
            return {"$gt": x > y, "$gte": x >= y, "$lt": x < y, "$lte": x <= y}[op]


def matches_filter(flt: object, metadata: dict[str, Any]) -> bool:
    """Evaluate a Pinecone metadata filter; :class:`FilterError` if it is malformed."""
    if not isinstance(flt, dict):
        raise FilterError("a filter must be an object")
    for key, spec in flt.items():
        if key in ("$and", "$or"):
            if not isinstance(spec, list) or not spec:
                raise FilterError(f"{key} takes a non-empty array of filters")
            results = [matches_filter(sub, metadata) for sub in spec]
            if not (all(results) if key == "$and" else any(results)):
                return False
            continue
        if key.startswith("$"):
            raise FilterError(f"unsupported operator {key}")
        present = key in metadata
        value = metadata.get(key)
        if isinstance(spec, dict):
            if not spec:
                raise FilterError(f"empty operator object for {key}")
            for op, arg in spec.items():
                if op not in _COMPARISONS:
                    raise FilterError(f"unsupported operator {op}")
                if not _compare(op, arg, present, value):
                    return False
        elif not _compare("$eq", spec, present, value):
            return False
    return True


# ---------------------------------------------------------------------------- the server


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Record:
    values: list[float]
    metadata: dict[str, Any]


Handler = Callable[[web.Request], Awaitable[web.Response]]


class FakePineconeServer(LocalHTTPServer):
    """A Pinecone index host on 127.0.0.1 and a free port, with a queue of faults.

    ``api_key`` set: requests without that ``Api-Key`` header get a 401. Received requests are
    kept in :attr:`requests` as ``(endpoint, body or query params, headers)``.
    """

    def __init__(self, *, dimension: int = 384, metric: Metric = "cosine",
                 api_key: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 shutdown_timeout: float = 2.0, access_log: bool = False) -> None:
        if dimension < 1:
            raise ValueError("dimension must be at least 1")
        self.dimension = dimension
        self.metric: Metric = metric
        super().__init__(host=host, port=port, shutdown_timeout=shutdown_timeout,
                         access_log=access_log)
        self._api_key = api_key
        self._faults: collections.deque[tuple[PineconeEndpoint | None, PineconeFault]] = (
            collections.deque())
        self.namespaces: dict[str, dict[str, _Record]] = {}
        """Stored vectors: namespace ("" is the default) -> id -> record."""
        self.requests: list[tuple[PineconeEndpoint, dict[str, Any], dict[str, str]]] = []

    # -- lifecycle

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        routes: list[tuple[str, str, PineconeEndpoint, Callable[[dict[str, Any]], Any]]] = [
            ("POST", "/vectors/upsert", "upsert", self._upsert),
            ("POST", "/query", "query", self._query),
            ("POST", "/vectors/delete", "delete", self._delete),
            ("POST", "/describe_index_stats", "describe_index_stats", self._stats),
            ("GET", "/vectors/fetch", "fetch", self._fetch),
            ("POST", "/vectors/fetch_by_metadata", "fetch_by_metadata", self._fetch_by_metadata),
            ("GET", "/vectors/list", "list", self._list),
        ]
        for method, path, endpoint, op in routes:
            app.router.add_route(method, path, self._handler(endpoint, op))
        return app

    @property
    def host(self) -> str:
        """What to pass as the index ``host``, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self._host}:{self.port}"

    # -- faults

    def inject(self, *faults: PineconeFault, endpoint: PineconeEndpoint | None = None) -> None:
        """Queue faults for the next requests to ``endpoint`` (None: to any endpoint)."""
        self._faults.extend((endpoint, f) for f in faults)

    def pending_faults(self) -> int:
        return len(self._faults)

    def _next_fault(self, endpoint: PineconeEndpoint) -> PineconeFault | None:
        for i, (wanted, fault) in enumerate(self._faults):
            if wanted is None or wanted == endpoint:
                del self._faults[i]
                return fault
        return None

    # -- plumbing

    def _handler(self, endpoint: PineconeEndpoint,
                 op: Callable[[dict[str, Any]], Any]) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            headers = dict(request.headers)
            if self._api_key is not None and request.headers.get("Api-Key") != self._api_key:
                return _error(401, "Invalid API Key")
            if request.method == "GET":
                params: dict[str, Any] = {k: request.query.getall(k)
                                          for k in set(request.query.keys())}
            else:
                try:
                    body = json.loads(await request.read() or b"{}")
                except ValueError:
                    return _error(400, "could not parse the request body as JSON")
                if not isinstance(body, dict):
                    return _error(400, "the request body must be a JSON object")
                params = body
            self.requests.append((endpoint, params, headers))
            fault = self._next_fault(endpoint)
            if fault is not None:
                match fault.kind:
                    case "rate_limit" | "server_error" | "client_error":
                        extra = {} if fault.retry_after is None else {
                            "Retry-After": _format_number(fault.retry_after)}
                        return _error(fault.http_status,
                                      fault.message or f"fake {fault.kind}", extra)
                    case "timeout":
                        if await self._wait_or_closing(fault.delay):
                            return _error(503, "server shutting down")
                    case _:
                        assert_never(fault.kind)
            try:
                return web.json_response(op(params), headers=_ok_headers())
            except _ApiError as err:
                return _error(err.status, err.message)
            except FilterError as err:
                return _error(400, f"Invalid filter: {err}")

        return handle

    async def _wait_or_closing(self, delay: float) -> bool:
        try:
            await asyncio.wait_for(self._closing.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True

    def _check_values(self, values: object) -> list[float]:
        if not isinstance(values, list) or not all(_number(v) for v in values):
            raise _ApiError(400, "values must be an array of numbers")
        if len(values) != self.dimension:
            raise _ApiError(400, f"Vector dimension {len(values)} does not match the dimension "
                                 f"of the index {self.dimension}")
        floats = [float(v) for v in values]
        if not all(math.isfinite(v) for v in floats):
            raise _ApiError(400, "values must be finite")
        if self.metric == "cosine" and not any(floats):
            raise _ApiError(400, "Dense vectors must contain at least one non-zero value")
        return floats

    def _score(self, a: list[float], b: list[float]) -> float:
        dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
        match self.metric:
            case "dotproduct":
                return dot
            case "cosine":
                na = math.sqrt(math.fsum(x * x for x in a))
                nb = math.sqrt(math.fsum(y * y for y in b))
                return dot / (na * nb) if na and nb else 0.0
            case "euclidean":
                return math.fsum((x - y) ** 2 for x, y in zip(a, b, strict=True))
            case _:
                assert_never(self.metric)

    def _filtered(self, namespace: str, flt: object) -> list[tuple[str, _Record]]:
        records = self.namespaces.get(namespace, {})
        if flt is None:
            return list(records.items())
        if not isinstance(flt, dict) or not flt:
            raise FilterError("a filter must be a non-empty object")
        return [(vid, r) for vid, r in records.items() if matches_filter(flt, r.metadata)]

    # -- endpoints

    def _upsert(self, body: dict[str, Any]) -> dict[str, Any]:
        vectors = body.get("vectors")
        if not isinstance(vectors, list) or not vectors:
            raise _ApiError(400, "vectors must be a non-empty array")
        if len(vectors) > _MAX_UPSERT:
            raise _ApiError(400, f"at most {_MAX_UPSERT} vectors per upsert")
        staged: list[tuple[str, _Record]] = []
        for v in vectors:
            if not isinstance(v, dict) or not isinstance(v.get("id"), str) or not v["id"]:
                raise _ApiError(400, "each vector needs a non-empty string id")
            vid = v["id"]
            if len(vid) > 512 or not vid.isascii():
                raise _ApiError(400, f"vector id {vid[:40]!r}... must be ASCII, ≤ 512 chars")
            metadata = v.get("metadata") or {}
            _check_metadata(metadata)
            staged.append((vid, _Record(self._check_values(v.get("values")), dict(metadata))))
        ns = self.namespaces.setdefault(_namespace(body), {})
        ns.update(staged)
        return {"upsertedCount": len(staged)}

    def _query(self, body: dict[str, Any]) -> dict[str, Any]:
        top_k = body.get("topK")
        if not isinstance(top_k, int) or not 1 <= top_k <= _MAX_TOP_K:
            raise _ApiError(400, f"topK must be an integer within 1..{_MAX_TOP_K}")
        namespace = _namespace(body)
        if "vector" in body:
            query = self._check_values(body["vector"])
        elif isinstance(body.get("id"), str):
            record = self.namespaces.get(namespace, {}).get(body["id"])
            if record is None:
                return {"matches": [], "namespace": namespace, "usage": {"readUnits": 1}}
            query = record.values
        else:
            raise _ApiError(400, "a query needs a vector or an id")
        candidates = self._filtered(namespace, body.get("filter"))
        scored = [(self._score(query, r.values), vid, r) for vid, r in candidates]
        # Nearest first: highest similarity, or lowest distance for euclidean.
        scored.sort(key=lambda s: (s[0] if self.metric == "euclidean" else -s[0], s[1]))
        matches = []
        for score, vid, r in scored[:top_k]:
            match: dict[str, Any] = {"id": vid, "score": score,
                                     "values": r.values if body.get("includeValues") else []}
            if body.get("includeMetadata") and r.metadata:
                match["metadata"] = r.metadata
            matches.append(match)
        return {"results": [], "matches": matches, "namespace": namespace,
                "usage": {"readUnits": max(1, len(candidates) // 1000)}}

    def _delete(self, body: dict[str, Any]) -> dict[str, Any]:
        namespace = _namespace(body)
        selectors = [k for k in ("ids", "deleteAll", "filter") if body.get(k)]
        if len(selectors) != 1:
            raise _ApiError(400, "pass exactly one of ids, deleteAll or filter")
        records = self.namespaces.get(namespace, {})
        if body.get("deleteAll"):
            records.clear()
        elif "ids" in selectors:
            ids = body["ids"]
            if not isinstance(ids, list) or len(ids) > 1000:
                raise _ApiError(400, "ids must be an array of at most 1000 ids")
            for vid in ids:
                records.pop(vid, None)
        else:
            for vid, _ in self._filtered(namespace, body["filter"]):
                del records[vid]
        return {}

    def _stats(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("filter"):
            raise _ApiError(400, "describe_index_stats does not support filters on serverless "
                                 "indexes")
        namespaces = {ns or "__default__": {"vectorCount": len(records)}
                      for ns, records in self.namespaces.items() if records}
        return {"namespaces": namespaces, "dimension": self.dimension, "indexFullness": 0.0,
                "totalVectorCount": sum(n["vectorCount"] for n in namespaces.values()),
                "metric": self.metric, "vectorType": "dense"}

    def _fetch(self, params: dict[str, Any]) -> dict[str, Any]:
        ids: list[str] = params.get("ids", [])
        if not ids:
            raise _ApiError(400, "ids is required")
        namespace = (params.get("namespace") or [""])[0]
        records = self.namespaces.get(_default(namespace), {})
        vectors = {vid: _render(vid, records[vid]) for vid in ids if vid in records}
        return {"vectors": vectors, "namespace": namespace, "usage": {"readUnits": 1}}

    def _fetch_by_metadata(self, body: dict[str, Any]) -> dict[str, Any]:
        if not body.get("filter"):
            raise _ApiError(400, "filter is required")
        namespace = _namespace(body)
        found = sorted(self._filtered(namespace, body["filter"]), key=lambda x: x[0])
        limit = int(body.get("limit") or 100)
        start = _offset(body.get("paginationToken"))
        page = found[start:start + limit]
        out: dict[str, Any] = {"vectors": {vid: _render(vid, r) for vid, r in page},
                               "namespace": namespace, "usage": {"readUnits": 1}}
        if start + limit < len(found):
            out["pagination"] = {"next": _token(start + limit)}
        return out

    def _list(self, params: dict[str, Any]) -> dict[str, Any]:
        namespace = _default((params.get("namespace") or [""])[0])
        prefix = (params.get("prefix") or [""])[0]
        limit = int((params.get("limit") or ["100"])[0])
        if not 1 <= limit <= 100:
            raise _ApiError(400, "limit must be within 1..100")
        ids = sorted(vid for vid in self.namespaces.get(namespace, {}) if vid.startswith(prefix))
        start = _offset((params.get("paginationToken") or [None])[0])
        out: dict[str, Any] = {"vectors": [{"id": vid} for vid in ids[start:start + limit]],
                               "namespace": namespace, "usage": {"readUnits": 1}}
        if start + limit < len(ids):
            out["pagination"] = {"next": _token(start + limit)}
        return out


def _default(namespace: str) -> str:
    return "" if namespace == "__default__" else namespace


def _namespace(body: dict[str, Any]) -> str:
    ns = body.get("namespace") or ""
    if not isinstance(ns, str):
        raise _ApiError(400, "namespace must be a string")
    return _default(ns)


def _check_metadata(metadata: object) -> None:
    if not isinstance(metadata, dict):
        raise _ApiError(400, "metadata must be an object")
    for key, value in metadata.items():
        ok = isinstance(value, str | bool) or _number(value) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value))
        if not ok:
            raise _ApiError(400, f"Metadata value for {key!r} must be a string, number, boolean "
                                 f"or list of strings, got {json.dumps(value)}")
    if len(json.dumps(metadata).encode()) > _MAX_METADATA_BYTES:
        raise _ApiError(400, f"Metadata size exceeds the limit of {_MAX_METADATA_BYTES} bytes")


def _render(vid: str, r: _Record) -> dict[str, Any]:
    return {"id": vid, "values": r.values, "metadata": r.metadata}


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _offset(token: object) -> int:
    if not token:
        return 0
    try:
        return int(json.loads(base64.urlsafe_b64decode(str(token)))["offset"])
    except (ValueError, KeyError, TypeError) as err:
        raise _ApiError(400, "invalid pagination token") from err


def _ok_headers() -> dict[str, str]:
    return {"x-pinecone-request-id": uuid.uuid4().hex}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"code": _GRPC_CODE.get(status, "UNKNOWN"), "message": message},
            "status": status}
    return web.json_response(body, status=status, headers={**_ok_headers(), **(headers or {})})


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# ---------------------------------------------------------------------------- standalone


async def _serve(*, host: str, port: int, api_key: str | None, dimension: int,
                 metric: Metric) -> None:
    async with FakePineconeServer(host=host, port=port, api_key=api_key, dimension=dimension,
                                  metric=metric, access_log=True) as srv:
        print(f"fake Pinecone index at {srv.host} (dimension {dimension}, {metric}); "
              f"Ctrl-C to stop", flush=True)
        print(f"  export STEAD_PINECONE_HOST={srv.host} PINECONE_API_KEY={api_key or 'test'}",
              flush=True)
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve an empty index until interrupted."""
    import logging

    parser = argparse.ArgumentParser(prog="python -m stead.testing.pinecone_server",
                                     description="Fake Pinecone index (data plane).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    parser.add_argument("--api-key", default=None, help="require this Api-Key (else any)")
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--metric", choices=["cosine", "dotproduct", "euclidean"],
                        default="cosine")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        asyncio.run(_serve(host=args.host, port=args.port, api_key=args.api_key,
                           dimension=args.dimension, metric=args.metric))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

"""OpenAPI tools: operations of an HTTP service become stead tools, under the same guarantees.

    orders = openapi_tools("orders.yaml", operations=["listOrders", "createOrder"],
                           base_url="https://orders.internal",
                           auth=OpenAPIAuth(bearer_secret="orders_token"))
    shop = Agent(name="shop", instructions="...", tools=[*native_tools, *orders], ...)

Each chosen operation (by ``operationId``) of an OpenAPI 3.0 or 3.1 document (a path to JSON or
YAML, or the parsed dict) becomes an ordinary :class:`~stead.authoring.tools.Tool`, made once at
worker start. So everything a native tool gets applies unchanged: the workflow's gate (schema check,
risk, approval policy), the ledger claim of the idempotency key before the call, Temporal
retries per the tool's :class:`~stead.contracts.models.RetrySpec`, reconciliation after a lost
worker, the agent's allowlist, secret scrubbing and the audit trail.

What the model sees and sends:

- **Arguments**: one JSON object. Path, query and header parameters are top-level properties
  under their own names; the JSON request body is the property ``body``. ``$ref``s are kept as
  references into ``$defs`` (so recursive schemas work); OpenAPI 3.0 schemas are converted to
  JSON Schema 2020-12 (``nullable``, boolean ``exclusiveMinimum``...), the dialect the gate
  checks with. Headers stead owns (``Authorization``, ``Accept``, ``Content-Type`` and
  ``Idempotency-Key``) are never arguments.
- **Result**: ``{"status": <HTTP status>, "body": <the JSON body>}``; the output schema comes
  from the operation's 2xx responses, and a body that does not match it fails the call.

How a call behaves:

- Side effect by method unless overridden: GET/HEAD/OPTIONS ``read`` (idempotent, risk low),
  PUT/DELETE ``write`` (idempotent, risk low), POST/PATCH ``irreversible`` (not idempotent,
  risk medium). An operation that declares an ``Idempotency-Key`` header parameter says the
  service deduplicates by that key, so it counts as idempotent whatever its method: after a
  lost worker it is re-sent with the same key instead of escalated.
- Every request carries the call's idempotency key as ``Idempotency-Key`` (stable across
  retries and worker crashes), and the credential from the worker's secrets
  (:class:`OpenAPIAuth`: a bearer token or an API-key header, read with ``ctx.secret``).
- One attempt may take ``0.9 x timeouts.start_to_close`` (the rest is left for recording it).

Failures, as ``ApplicationError`` types (the model gets the message: status and a body excerpt):

====================  =========  ==========================================================
``HttpClientError``   final      4xx (except 408 and 429): the request is wrong; tell the model
``RateLimited``       retried    429; ``Retry-After`` is waited out (heartbeating) first
``HttpServerError``   retried    5xx and 408 (``Retry-After`` honoured too)
``HttpUnreachable``   retried    connection refused / connect timeout: nothing was sent
``HttpTimeout``       retried    an idempotent call's response was lost (timeout, reset)
``ToolOutcomeUnknown`` final     a non-idempotent call's response was lost: the run escalates
``UnexpectedResponse`` final     not JSON where JSON was declared, 1xx/3xx, or a body that does
                                 not match the document's schema
====================  =========  ==========================================================

Add a type to the tool's ``retry.non_retryable`` (an override) to stop retrying it, e.g.
``HttpServerError`` for a service whose 5xx may come after the effect.

From settings, ``STEAD_OPENAPI_SOURCES`` (JSON, see :class:`OpenAPISource`)::

    {"orders": {"document": "orders.yaml", "base_url": "https://orders.internal",
                "operations": ["listOrders", "createOrder"], "agents": ["shop"],
                "auth": {"bearer_secret": "orders_token"},
                "overrides": {"createOrder": {"risk": "critical"}}}}

and a worker adds those tools to the named agents with
``catalog = with_openapi_sources(catalog, settings.integrations)`` before building its
``WorkerHost``.

Errors::

    SteadError
    ├── SpecError
    │   └── OpenAPIError   a document or an operation cannot become a tool (names it)
    └── SettingsError      STEAD_OPENAPI_SOURCES is invalid (names the variable and source)
    ApplicationError
    └── OpenAPICallError   a call failed (raised inside the tool activity; types above)
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import email.utils
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, NoReturn, cast
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, JsonValue, RootModel, model_validator
from temporalio.exceptions import ApplicationError

from stead import errors
from stead.authoring.agent import AgentCatalog
from stead.authoring.tools import Tool, ToolContext
from stead.contracts.models import RetrySpec, RiskTier, SideEffect, Timeouts
from stead.errors import SettingsError, SpecError
from stead.guardrails.calls import schema_problems
from stead.integrations.openapi_spec import OpenAPIAuth, OpenAPISource, ToolOverride

if TYPE_CHECKING:
    import httpx

    from stead.settings import IntegrationSettings

__all__ = [
    "HTTP_CLIENT_ERROR",
    "HTTP_SERVER_ERROR",
    "HTTP_TIMEOUT",
    "HTTP_UNREACHABLE",
    "RATE_LIMITED",
    "UNEXPECTED_RESPONSE",
    "OpenAPIArguments",
    "OpenAPIAuth",
    "OpenAPICallError",
    "OpenAPIError",
    "OpenAPIResult",
    "OpenAPISource",
    "ToolOverride",
    "load_document",
    "openapi_tools",
    "with_openapi_sources",
]

HTTP_CLIENT_ERROR: Final = "HttpClientError"
RATE_LIMITED: Final = "RateLimited"
HTTP_SERVER_ERROR: Final = "HttpServerError"
HTTP_UNREACHABLE: Final = "HttpUnreachable"
HTTP_TIMEOUT: Final = "HttpTimeout"
UNEXPECTED_RESPONSE: Final = "UnexpectedResponse"

BODY_ARGUMENT: Final = "body"
"""The argument that holds the JSON request body."""
EXCERPT_CHARS: Final = 500
"""How much of an error response body the model gets."""
ATTEMPT_SHARE: Final = 0.9
"""Share of ``timeouts.start_to_close`` one HTTP exchange may use."""

_METHODS: Final = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_BY_METHOD: Final[dict[str, tuple[SideEffect, bool, RiskTier]]] = {
    "get": ("read", True, "low"), "head": ("read", True, "low"),
    "options": ("read", True, "low"), "trace": ("read", True, "low"),
    "put": ("write", True, "low"), "delete": ("write", True, "low"),
    "post": ("irreversible", False, "medium"), "patch": ("irreversible", False, "medium"),
}
"""Side effect, idempotency and risk tier by method. The tier stays modest because the side
effect already weighs in the risk score (an irreversible call whose arguments echo tool output
asks a human under the default thresholds); raise it per tool with an override or a policy."""
# OpenAPI says these header parameters are ignored: the client owns them.
_OWNED_HEADERS: Final = frozenset({"accept", "content-type", "authorization"})
_IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
_JSON_MEDIA: Final = re.compile(r"^application/(?:[\w.+-]+\+)?json$")
_TOOL_NAME_BAD: Final = re.compile(r"[^a-zA-Z0-9_-]")


class OpenAPIError(SpecError):
    """An OpenAPI document or operation cannot become a tool; the message names which."""


class OpenAPICallError(ApplicationError):
    """A failed call (``type`` is one of the constants above). Its text is the message alone:
    the tool activity prefixes the tool name and type itself."""

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------------------- models


class OpenAPIArguments(RootModel[dict[str, JsonValue]]):
    """Arguments of an OpenAPI tool: a JSON object checked against the schema built from the
    operation (each tool has its own subclass carrying that schema)."""

    input_schema: ClassVar[dict[str, Any]] = {"type": "object"}

    @model_validator(mode="before")
    @classmethod
    def _matches_schema(cls, data: object) -> object:
        if not isinstance(data, dict):
            raise ValueError(f"arguments must be a JSON object, got {type(data).__name__}")
        problems = schema_problems(cls.input_schema, data)
        if problems:
            raise ValueError("; ".join(problems))
        return data

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The operation's schema (not pydantic's generic one): what the model is shown."""
        return copy.deepcopy(cls.input_schema)


class OpenAPIResult(BaseModel):
    """What an OpenAPI tool returns: the HTTP status and the response body."""

    model_config = ConfigDict(extra="forbid")

    status: int
    body: JsonValue = None
    """The JSON body (text for declared text responses; None when empty)."""

    output_schema: ClassVar[dict[str, Any] | None] = None

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """With the body described by the operation's 2xx responses."""
        if cls.output_schema is None:
            return super().model_json_schema(*args, **kwargs)
        return copy.deepcopy(cls.output_schema)


# ---------------------------------------------------------------------------- documents


def load_document(document: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Read and sanity-check an OpenAPI 3.0/3.1 document (a path to JSON or YAML, or a dict).
    Raises :class:`OpenAPIError` saying what is wrong and where."""
    if isinstance(document, Mapping):
        where = "the OpenAPI document"
        raw: object = _jsonable(dict(document))
    else:
        path = Path(document)
        where = f"OpenAPI document {str(path)!r}"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise OpenAPIError(f"cannot read {where}: {err.strerror or err}") from None
        except UnicodeDecodeError as err:
            raise OpenAPIError(f"cannot read {where}: not UTF-8 text ({err.reason})") from None
        raw = _parse(text, where, json_only=path.suffix.lower() == ".json")
    if not isinstance(raw, dict):
        raise OpenAPIError(f"{where} must be a JSON/YAML object, got {type(raw).__name__}")
    version = raw.get("openapi")
    if not isinstance(version, str):
        hint = " (Swagger 2.0: convert it to OpenAPI 3 first)" if "swagger" in raw else ""
        raise OpenAPIError(f"{where} has no 'openapi' version field{hint}")
    if not re.match(r"^3\.[01]\.\d+", version):
        raise OpenAPIError(f"{where} is OpenAPI {version}; stead reads 3.0.x and 3.1.x")
    if not isinstance(raw.get("paths"), dict):
        raise OpenAPIError(f"{where} has no 'paths' object")
    return raw


def _parse(text: str, where: str, *, json_only: bool) -> object:
    if json_only:
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise OpenAPIError(f"{where} is not valid JSON: {err.msg} at line {err.lineno}, "
                               f"column {err.colno}") from None
    import yaml

    try:
        # YAML 1.1 turns unquoted dates into date objects and 200: into an int key; JSON has
        # neither, so normalise to what the JSON form of the document would hold.
        return _jsonable(yaml.safe_load(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise OpenAPIError(f"{where} is not valid YAML{at}: {problem}") from None


def _jsonable(v: object) -> object:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dt.date | dt.datetime):
        return v.isoformat()
    return v


def _pointer(ref: str) -> list[str]:
    return [unquote(p).replace("~1", "/").replace("~0", "~") for p in ref[2:].split("/")]


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


class _Schemas:
    """Converts the schemas one tool needs into JSON Schema 2020-12, collecting every
    ``$ref`` target into ``$defs`` (references stay references, so recursion is fine)."""

    _MAPS: ClassVar[tuple[str, ...]] = ("properties", "patternProperties", "dependentSchemas",
                                        "$defs", "definitions")
    _ONE: ClassVar[tuple[str, ...]] = ("additionalProperties", "items", "not", "if", "then",
                                       "else", "contains", "propertyNames",
                                       "unevaluatedProperties", "unevaluatedItems",
                                       "additionalItems")
    _LISTS: ClassVar[tuple[str, ...]] = ("allOf", "anyOf", "oneOf", "prefixItems")
    # OpenAPI-only annotations the JSON Schema validator does not know or need.
    _DROP: ClassVar[frozenset[str]] = frozenset({"discriminator", "xml", "externalDocs",
                                                 "example"})

    def __init__(self, doc: dict[str, Any], where: str) -> None:
        self.doc = doc
        self.where = where
        self.v30 = str(doc["openapi"]).startswith("3.0")
        self.defs: dict[str, Any] = {}
        self._todo: list[tuple[str, str]] = []

    def fail(self, msg: str) -> NoReturn:
        raise OpenAPIError(f"{self.where}: {msg}")

    def lookup(self, ref: object) -> Any:
        """The object a local ``$ref`` points at."""
        if not isinstance(ref, str) or not ref.startswith("#/"):
            self.fail(f"$ref {ref!r} points outside the document; only local references "
                      f"('#/...') are supported (bundle the document first)")
        node: Any = self.doc
        for part in _pointer(ref):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                self.fail(f"$ref {ref!r} points at nothing in the document")
        return node

    def resolve(self, obj: object, what: str) -> dict[str, Any]:
        """A parameter, request body or response object, following ``$ref`` chains."""
        seen: set[str] = set()
        while isinstance(obj, dict) and "$ref" in obj:
            ref = obj["$ref"]
            if ref in seen:
                self.fail(f"{what}: $ref {ref!r} refers to itself")
            seen.add(str(ref))
            obj = self.lookup(ref)
        if not isinstance(obj, dict):
            self.fail(f"{what} must be an object, got {type(obj).__name__}")
        return obj

    def schema(self, node: object) -> Any:
        if isinstance(node, bool):
            return node
        if not isinstance(node, dict):
            self.fail(f"a schema must be an object, got {type(node).__name__}")
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in self._DROP or key.startswith("x-"):
                continue
            if key == "$ref":
                out[key] = self._ref(value)
            elif key in self._MAPS and isinstance(value, dict):
                out[key] = {name: self.schema(s) for name, s in value.items()}
            elif key in self._ONE:
                out[key] = self.schema(value)
            elif key in self._LISTS and isinstance(value, list):
                out[key] = [self.schema(s) for s in value]
            elif key in ("$dynamicRef", "$recursiveRef"):
                self.fail(f"{key} is not supported")
            else:
                out[key] = copy.deepcopy(value)
        return self._from_30(out) if self.v30 else out

    def _ref(self, ref: object) -> str:
        self.lookup(ref)  # fails now, naming the reference, if it points at nothing
        parts = _pointer(str(ref))
        key = parts[2] if len(parts) == 3 and parts[:2] == ["components", "schemas"] \
            else "/".join(parts)
        if key not in self.defs:
            self.defs[key] = None  # claimed now, converted by finish(): recursion stops here
            self._todo.append((key, str(ref)))
        return "#/$defs/" + _escape(key)

    def finish(self, schema: dict[str, Any]) -> dict[str, Any]:
        """``schema`` with the ``$defs`` it (transitively) refers to."""
        while self._todo:
            key, ref = self._todo.pop()
            self.defs[key] = self.schema(self.lookup(ref))
        if self.defs:
            schema = {**schema, "$defs": {**schema.get("$defs", {}), **self.defs}}
        return schema

    @staticmethod
    def _from_30(s: dict[str, Any]) -> dict[str, Any]:
        """OpenAPI 3.0's schema dialect into JSON Schema 2020-12."""
        for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            flag = s.get(bound)
            if isinstance(flag, bool):
                del s[bound]
                if flag and plain in s:
                    s[bound] = s.pop(plain)
        if s.pop("nullable", False) is True:
            t = s.get("type")
            if isinstance(t, str):
                s["type"] = [t, "null"]
                if isinstance(s.get("enum"), list) and None not in s["enum"]:
                    s["enum"] = [*s["enum"], None]
            else:
                s = {"anyOf": [s, {"type": "null"}]}
        return s


# ---------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class _Param:
    name: str
    location: Literal["path", "query", "header"]
    array: bool
    explode: bool
    separator: str


@dataclass(frozen=True)
class _Response:
    kind: Literal["json", "text", "empty", "other"]
    schema: dict[str, Any] | None
    """The body's schema with the output's ``$defs``, for checking a response."""


@dataclass(frozen=True)
class _Found:
    operation_id: str
    method: str
    path: str
    op: dict[str, Any]
    path_item: dict[str, Any]


def _operations(doc: dict[str, Any]) -> dict[str, _Found]:
    found: dict[str, _Found] = {}
    for path, item in doc["paths"].items():
        if not isinstance(item, dict):
            continue
        for method in _METHODS:
            op = item.get(method)
            if isinstance(op, dict) and isinstance(op.get("operationId"), str):
                oid = op["operationId"]
                if oid in found:
                    prev = found[oid]
                    raise OpenAPIError(f"operationId {oid!r} is used twice ("
                                       f"{prev.method.upper()} {prev.path} and "
                                       f"{method.upper()} {path})")
                found[oid] = _Found(oid, method, path, op, item)
    return found


def _kinds(schema: Any, schemas: _Schemas, depth: int = 0) -> set[str]:
    """JSON types a (parameter) schema allows, looking through $ref and anyOf/oneOf."""
    if not isinstance(schema, dict) or depth > 8:
        return set()
    if "$ref" in schema:
        return _kinds(schemas.lookup(schema["$ref"]), schemas, depth + 1)
    t = schema.get("type")
    kinds = {t} if isinstance(t, str) else set(t) if isinstance(t, list) else set()
    for key in ("anyOf", "oneOf", "allOf"):
        for s in schema.get(key, []) if isinstance(schema.get(key), list) else []:
            kinds |= _kinds(s, schemas, depth + 1)
    return kinds


def _parameters(f: _Found, schemas: _Schemas) -> tuple[list[_Param], dict[str, Any],
                                                        list[str], bool]:
    """The operation's parameters: how to send them, their argument schemas, the required
    ones, and whether it declares an ``Idempotency-Key`` header."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for raw in [*f.path_item.get("parameters", []), *f.op.get("parameters", [])]:
        p = schemas.resolve(raw, "a parameter")
        name, loc = p.get("name"), p.get("in")
        if not isinstance(name, str) or not isinstance(loc, str):
            schemas.fail("a parameter needs 'name' and 'in'")
        merged[(name, loc)] = p  # operation-level wins over path-level
    params: list[_Param] = []
    props: dict[str, Any] = {}
    required: list[str] = []
    honours_key = False
    for (name, loc), p in merged.items():
        label = f"{loc} parameter {name!r}"
        if loc == "header" and name.lower() == _IDEMPOTENCY_HEADER.lower():
            honours_key = True
            continue
        if loc == "header" and name.lower() in _OWNED_HEADERS:
            continue
        if loc == "cookie":
            schemas.fail(f"{label}: cookie parameters are not supported")
        if loc not in ("path", "query", "header"):
            schemas.fail(f"{label}: unknown location {loc!r}")
        if "schema" not in p:
            schemas.fail(f"{label}: only parameters with a 'schema' are supported "
                         f"('content' parameters are not)")
        if name in props or name == BODY_ARGUMENT:
            schemas.fail(f"{label}: its name clashes with another argument "
                         f"({'the request body' if name == BODY_ARGUMENT else 'a parameter'}); "
                         f"stead passes every parameter under its own name")
        kinds = _kinds(p["schema"], schemas)
        if "object" in kinds:
            schemas.fail(f"{label}: object-valued parameters are not supported")
        style = p.get("style", "form" if loc == "query" else "simple")
        separator = {"form": ",", "simple": ",", "spaceDelimited": " ",
                     "pipeDelimited": "|"}.get(str(style))
        if separator is None:
            schemas.fail(f"{label}: style {style!r} is not supported")
        explode = bool(p.get("explode", style == "form"))
        schema = schemas.schema(p["schema"])
        if isinstance(p.get("description"), str) and isinstance(schema, dict):
            schema = {**schema, "description": p["description"]}
        props[name] = schema
        if p.get("required") or loc == "path":
            required.append(name)
        params.append(_Param(name, cast(Literal["path", "query", "header"], loc),
                             array="array" in kinds, explode=explode, separator=separator))
    for placeholder in re.findall(r"\{([^}]+)\}", f.path):
        if not any(p.name == placeholder and p.location == "path" for p in params):
            schemas.fail(f"path {f.path!r} has {{{placeholder}}} but no path parameter of "
                         f"that name")
    return params, props, required, honours_key


def _json_media(content: dict[str, Any]) -> str | None:
    for media in content:
        if _JSON_MEDIA.match(media.split(";")[0].strip().lower()):
            return media
    return None


def _request_body(f: _Found, schemas: _Schemas) -> tuple[str | None, Any, bool]:
    """(media type, argument schema, required) of the JSON request body, if any."""
    if "requestBody" not in f.op:
        return None, None, False
    rb = schemas.resolve(f.op["requestBody"], "the request body")
    content = rb.get("content")
    if not isinstance(content, dict) or not content:
        schemas.fail("the request body declares no content")
    media = _json_media(content)
    if media is None:
        schemas.fail(f"the request body is {', '.join(sorted(content))}; only JSON request "
                     f"bodies are supported")
    media_obj = content[media] if isinstance(content[media], dict) else {}
    schema = schemas.schema(media_obj.get("schema", {}))
    if isinstance(rb.get("description"), str) and isinstance(schema, dict) \
            and "description" not in schema:
        schema = {**schema, "description": rb["description"]}
    return media.split(";")[0].strip(), schema, bool(rb.get("required", False))


def _responses(f: _Found, schemas: _Schemas) -> tuple[dict[str, _Response], dict[str, Any]]:
    """Per status code (``200``, ``2XX``, ``default``): what to expect; and the tool's output
    schema (status and the 2xx bodies)."""
    raw = f.op.get("responses") or {}
    if not isinstance(raw, dict):
        schemas.fail("'responses' must be an object")
    bodies: dict[str, Any] = {}
    kinds: dict[str, Literal["json", "text", "empty", "other"]] = {}
    for code, resp in raw.items():
        r = schemas.resolve(resp, f"response {code}")
        raw_content = r.get("content")
        content: dict[str, Any] = raw_content if isinstance(raw_content, dict) else {}
        media = _json_media(content) if content else None
        if media is not None:
            kinds[code] = "json"
            m = content[media] if isinstance(content[media], dict) else {}
            bodies[code] = schemas.schema(m.get("schema", {}))
        elif not content:
            kinds[code] = "empty"
        elif any(str(k).startswith("text/") for k in content):
            kinds[code] = "text"
            bodies[code] = {"type": "string"}
        else:
            kinds[code] = "other"
    ok = [c for c in bodies if c.startswith("2") or c == "default"]
    variants = [bodies[c] for c in ok if c.startswith("2")] or [bodies[c] for c in ok]
    if any(kinds.get(c) == "empty" for c in raw if str(c).startswith("2")):
        variants.append({"type": "null"})
    unique = [v for i, v in enumerate(variants) if v not in variants[:i]]
    body_schema: Any = unique[0] if len(unique) == 1 else {"anyOf": unique} if unique else {}
    output = schemas.finish({
        "type": "object",
        "properties": {"status": {"type": "integer", "description": "HTTP status code"},
                       "body": body_schema},
        "required": ["status", "body"],
    })
    defs = output.get("$defs")
    specs: dict[str, _Response] = {}
    for code, kind in kinds.items():
        body = bodies.get(code) if kind == "json" else None
        checked = ({**body, "$defs": defs} if isinstance(body, dict) and defs else body)
        specs[code] = _Response(kind, checked if isinstance(checked, dict) else None)
    return specs, output


def _base_url(doc: dict[str, Any], f: _Found, base_url: str | None, where: str) -> str:
    if base_url is None:
        servers = f.op.get("servers") or f.path_item.get("servers") or doc.get("servers") or []
        first = servers[0] if isinstance(servers, list) and servers else None
        url = first.get("url") if isinstance(first, dict) else None
        if not isinstance(url, str):
            raise OpenAPIError(f"{where}: the document names no server URL; pass base_url")
        for var, spec in (first.get("variables") or {}).items():  # type: ignore[union-attr]
            default = spec.get("default") if isinstance(spec, dict) else None
            url = url.replace("{" + var + "}", str(default))
        base_url = url
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise OpenAPIError(f"{where}: base URL {base_url!r} is not an absolute http(s) URL"
                           + (" (the document's server URL is relative: pass base_url)"
                              if base_url.startswith("/") else ""))
    return base_url.rstrip("/")


def _tool_name(operation_id: str) -> str:
    name = _TOOL_NAME_BAD.sub("_", operation_id)
    if not name[:1].isalpha():
        name = "op_" + name
    return name[:64]


def _description(f: _Found) -> str:
    summary = str(f.op.get("summary") or "").strip()
    detail = str(f.op.get("description") or "").strip()
    text = "\n\n".join(dict.fromkeys(p for p in (summary, detail) if p))
    return (text or f"{f.method.upper()} {f.path}")[:1024]


def openapi_tools(document: str | Path | Mapping[str, Any], *, operations: Sequence[str],
                  base_url: str | None = None, auth: OpenAPIAuth | None = None,
                  overrides: Mapping[str, ToolOverride] | None = None,
                  transport: httpx.AsyncBaseTransport | None = None,
                  ) -> list[Tool[Any, Any]]:
    """The chosen operations of ``document`` as tools, in the order given.

    ``base_url`` defaults to the document's server URL; ``auth`` names the worker secret that
    authenticates every call; ``overrides`` changes a tool's declaration by operationId.
    ``transport`` is httpx's seam for tests (e.g. ``httpx.MockTransport``). Raises
    :class:`OpenAPIError` naming the document and operation at fault."""
    doc = load_document(document)
    where = "the OpenAPI document" if isinstance(document, Mapping) else \
        f"OpenAPI document {str(document)!r}"
    if isinstance(operations, str) or not operations:
        raise OpenAPIError(f"{where}: choose the operations to expose (a list of operationIds)")
    available = _operations(doc)
    wanted = list(dict.fromkeys(operations))
    unknown = [o for o in wanted if o not in available]
    if unknown:
        known = ", ".join(sorted(available)[:30]) or "(none: no operation has an operationId)"
        raise OpenAPIError(f"{where}: unknown operationId(s) {', '.join(map(repr, unknown))}; "
                           f"the document has: {known}")
    extra = sorted(set(overrides or {}) - set(wanted))
    if extra:
        raise OpenAPIError(f"{where}: overrides for {', '.join(map(repr, extra))}, which "
                           f"is not among the chosen operations")
    return [_tool(doc, available[o], where=f"{where}, operation {o!r}", base_url=base_url,
                  auth=auth, override=(overrides or {}).get(o) or ToolOverride(),
                  transport=transport) for o in wanted]


def _tool(doc: dict[str, Any], f: _Found, *, where: str, base_url: str | None,
          auth: OpenAPIAuth | None, override: ToolOverride,
          transport: httpx.AsyncBaseTransport | None) -> Tool[Any, Any]:
    inputs = _Schemas(doc, where)
    params, props, required, honours_key = _parameters(f, inputs)
    media, body_schema, body_required = _request_body(f, inputs)
    if media is not None:
        props[BODY_ARGUMENT] = body_schema
        if body_required:
            required.append(BODY_ARGUMENT)
    input_schema = inputs.finish({"type": "object", "properties": props,
                                  **({"required": required} if required else {}),
                                  "additionalProperties": False})
    specs, output_schema = _responses(f, _Schemas(doc, where))
    side_effect, idempotent, risk = _BY_METHOD[f.method]
    if honours_key:
        idempotent = True  # the service deduplicates by the key we always send
    name = override.name or _tool_name(f.operation_id)
    timeouts = override.timeouts or Timeouts()
    retry = override.retry or RetrySpec()
    arguments = cast(type[OpenAPIArguments], type(
        f"{name}_arguments", (OpenAPIArguments,),
        {"input_schema": input_schema, "__module__": __name__}))
    result = cast(type[OpenAPIResult], type(
        f"{name}_result", (OpenAPIResult,),
        {"output_schema": output_schema, "__module__": __name__}))
    call = _Call(
        label=f"{f.operation_id} ({f.method.upper()} {f.path})",
        method=f.method.upper(), path=f.path,
        base_url=_base_url(doc, f, base_url, where), params=tuple(params), body_media=media,
        responses=specs, result=result, auth=auth,
        idempotent=override.idempotent if override.idempotent is not None else idempotent,
        timeouts=timeouts, max_attempts=retry.max_attempts, transport=transport)
    return Tool(
        name=name, description=override.description or _description(f), fn=call,
        input_model=arguments, output_model=result,
        side_effect=override.side_effect or side_effect, risk=override.risk or risk,
        idempotent=call.idempotent, retry=retry, timeouts=timeouts,
        secrets=(auth.secret,) if auth is not None else ())


# ---------------------------------------------------------------------------- calls


_QueryValue = str | int | float | bool | None


def _text(v: JsonValue) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):  # excluded at build time; a oneOf could still let one through
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)


def _excerpt(resp: httpx.Response) -> str:
    text = " ".join(resp.text.split())
    if not text:
        return "(empty body)"
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


@contextlib.asynccontextmanager
async def _heartbeating(ctx: ToolContext, timeout: float | None) -> AsyncIterator[None]:
    """Heartbeat while a request is in flight, for tools that declare a heartbeat timeout."""
    if timeout is None:
        yield
        return

    async def beat() -> None:
        while True:
            ctx.heartbeat()
            await asyncio.sleep(timeout / 3)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass(frozen=True, kw_only=True)
class _Call:
    """The function of one OpenAPI tool: build the request, send it, judge the response."""

    label: str
    method: str
    path: str
    base_url: str
    params: tuple[_Param, ...]
    body_media: str | None
    responses: dict[str, _Response]
    result: type[OpenAPIResult]
    auth: OpenAPIAuth | None
    idempotent: bool
    timeouts: Timeouts
    max_attempts: int
    transport: httpx.AsyncBaseTransport | None

    async def __call__(self, args: OpenAPIArguments, ctx: ToolContext) -> OpenAPIResult:
        import httpx

        budget = self.timeouts.start_to_close * ATTEMPT_SHARE
        loop = asyncio.get_running_loop()
        started = loop.time()
        url, query, headers, content = self._request(args.root, ctx)
        request = f"{self.method} {urlsplit(url).path}"
        client = httpx.AsyncClient(timeout=httpx.Timeout(budget, connect=min(budget, 10.0)),
                                   transport=self.transport, follow_redirects=False)
        try:
            async with _heartbeating(ctx, self.timeouts.heartbeat):
                try:
                    async with asyncio.timeout(budget):
                        resp = await client.request(self.method, url, params=query,
                                                    headers=headers, content=content)
                except (httpx.UnsupportedProtocol, httpx.InvalidURL,
                        httpx.LocalProtocolError) as err:
                    raise OpenAPICallError(f"cannot send {request}: {err}",
                                           type=UNEXPECTED_RESPONSE, non_retryable=True) from err
                except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:
                    raise OpenAPICallError(
                        f"cannot reach {self.base_url} for {request}: "
                        f"{str(err) or type(err).__name__} (nothing was sent)",
                        type=HTTP_UNREACHABLE) from err
                except (httpx.TransportError, TimeoutError) as err:
                    self._lost(request, err, budget)
                return await self._outcome(resp, request, ctx,
                                           budget - (loop.time() - started))
        finally:
            if self.transport is None:  # a caller's transport is the caller's to close
                await client.aclose()

    def _request(self, values: dict[str, JsonValue], ctx: ToolContext
                 ) -> tuple[str, list[tuple[str, _QueryValue]], dict[str, str], bytes | None]:
        path = self.path
        query: list[tuple[str, _QueryValue]] = []
        headers: dict[str, str] = {}
        for p in self.params:
            v = values.get(p.name)
            if v is None:
                continue
            items = [_text(x) for x in v] if isinstance(v, list) else [_text(v)]
            if p.location == "query" and p.explode:
                query.extend((p.name, x) for x in items)
            elif p.location == "query":
                query.append((p.name, p.separator.join(items)))
            elif p.location == "path":
                path = path.replace("{" + p.name + "}", quote(",".join(items), safe=""))
            else:
                headers[p.name] = ",".join(items)
        # What stead owns goes last, so no argument can replace it.
        headers["Accept"] = "application/json"
        headers[_IDEMPOTENCY_HEADER] = ctx.idempotency_key
        if self.auth is not None:
            headers.update(self.auth.headers(ctx.secret(self.auth.secret)))
        content = None
        if self.body_media is not None and BODY_ARGUMENT in values:
            headers["Content-Type"] = self.body_media
            content = json.dumps(values[BODY_ARGUMENT], separators=(",", ":")).encode()
        return self.base_url + path, query, headers, content

    def _lost(self, request: str, err: BaseException, budget: float) -> NoReturn:
        """The request went out and no answer came back: it may or may not have acted."""
        what = "no response within " + f"{budget:g}s" if isinstance(err, TimeoutError) else \
            f"the connection failed mid-request ({type(err).__name__}: {err})"
        if self.idempotent:
            raise OpenAPICallError(f"{request}: {what}; retrying with the same "
                                   f"Idempotency-Key", type=HTTP_TIMEOUT) from err
        raise OpenAPICallError(
            f"{request}: {what}; the operation is not idempotent and its service does not "
            f"declare an Idempotency-Key, so it is not re-sent — a human must check whether "
            f"it took effect", type=errors.TOOL_OUTCOME_UNKNOWN, non_retryable=True) from err

    async def _outcome(self, resp: httpx.Response, request: str, ctx: ToolContext,
                       remaining: float) -> OpenAPIResult:
        status = resp.status_code
        said = f"HTTP {status} {resp.reason_phrase}".rstrip() + f" from {request}"
        if 200 <= status < 300:
            return self._success(resp, status, said)
        body = f"{said}; response body: {_excerpt(resp)}"
        if status in (408, 429) or status >= 500:
            kind = RATE_LIMITED if status == 429 else HTTP_SERVER_ERROR
            wait = _retry_after(resp.headers.get("retry-after"))
            if wait is not None and wait > 0 and ctx.attempt < self.max_attempts:
                if wait > remaining:
                    raise OpenAPICallError(
                        f"{body}; the service asks to wait {wait:g}s, more than this attempt "
                        f"has left (timeouts.start_to_close={self.timeouts.start_to_close:g}s)",
                        type=kind, non_retryable=True)
                await ctx.wait(wait)  # heartbeating; the retry comes after it
            raise OpenAPICallError(body, type=kind)
        if 400 <= status < 500:
            raise OpenAPICallError(body, type=HTTP_CLIENT_ERROR, non_retryable=True)
        raise OpenAPICallError(f"{body}; an informational or redirect status is not an answer",
                               type=UNEXPECTED_RESPONSE, non_retryable=True)

    def _spec(self, status: int) -> _Response | None:
        code = str(status)
        return self.responses.get(code) or self.responses.get(f"{code[0]}XX") or \
            self.responses.get("default")

    def _success(self, resp: httpx.Response, status: int, said: str) -> OpenAPIResult:
        spec = self._spec(status)
        media = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        body: JsonValue
        if not resp.content:
            body = None
        elif _JSON_MEDIA.match(media) or (not media and (spec is None or spec.kind == "json")):
            try:
                body = cast(JsonValue, json.loads(resp.content))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise OpenAPICallError(
                    f"{said}: the body is not valid JSON ({err}): {_excerpt(resp)}",
                    type=UNEXPECTED_RESPONSE, non_retryable=True) from None
        elif media.startswith("text/") and spec is not None and spec.kind == "text":
            body = resp.text
        else:
            raise OpenAPICallError(
                f"{said}: expected a JSON body, got {media or 'no content type'}: "
                f"{_excerpt(resp)}", type=UNEXPECTED_RESPONSE, non_retryable=True)
        if spec is not None and spec.schema is not None and body is not None:
            from stead.guardrails.calls import schema_problems

            problems = schema_problems(spec.schema, body)
            if problems:
                raise OpenAPICallError(
                    f"{said}: the body does not match the document's schema for this status: "
                    + "; ".join(problems), type=UNEXPECTED_RESPONSE, non_retryable=True)
        return self.result(status=status, body=body)


# ---------------------------------------------------------------------------- settings


def with_openapi_sources(catalog: AgentCatalog, integrations: IntegrationSettings,
                         ) -> AgentCatalog:
    """``catalog`` with the tools of ``STEAD_OPENAPI_SOURCES`` added to the agents each source
    names. Raises ``SettingsError`` naming the variable and the source at fault."""
    sources = integrations.openapi_sources
    if not sources:
        return catalog
    extra: dict[str, list[Tool[Any, Any]]] = {}
    for source_name, src in sources.items():
        where = f"invalid setting: STEAD_OPENAPI_SOURCES[{source_name!r}]"
        missing = [a for a in src.agents if a not in catalog]
        if missing:
            raise SettingsError(f"{where}: agents {', '.join(map(repr, missing))} are not "
                                f"served by this worker (it serves "
                                f"{', '.join(catalog.names()) or 'none'})")
        try:
            tools = openapi_tools(src.document, operations=src.operations,
                                  base_url=src.base_url, auth=src.auth,
                                  overrides=src.overrides)
        except OpenAPIError as err:
            raise SettingsError(f"{where}: {err}") from None
        for agent in src.agents:
            extra.setdefault(agent, []).extend(tools)
    try:
        return AgentCatalog([replace(a, tools=[*a.tools, *extra.get(a.name, [])])
                             for a in catalog.agents()])
    except SpecError as err:
        raise SettingsError(f"invalid setting: STEAD_OPENAPI_SOURCES: the tools it adds do not "
                            f"fit the catalog ({err}); rename them with overrides") from None

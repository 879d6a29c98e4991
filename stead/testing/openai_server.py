"""A fake OpenAI-compatible HTTP server, so the real ``openai`` SDK path is tested end to end.

Mocking the SDK would test our mock; this server sits behind the same seam production uses
(``base_url``), speaks the real wire format, and can misbehave on request the way real providers
do — rate limits, 5xx, slow answers, truncated bodies, broken tool calls::

    async with FakeOpenAIServer.from_model(ScriptedModel([ModelTurn(content="hi")])) as srv:
        srv.inject(Fault("rate_limit", retry_after=2))
        model = OpenAIModel(model="gpt-4o-mini", api_key="test", base_url=srv.base_url)

Endpoints: ``POST /v1/chat/completions`` (whole answers, or server-sent chunks with
``"stream": true``, usage last with ``stream_options.include_usage``), ``POST /v1/responses``
(OpenAI's Responses API, whole or as ``response.*`` events with ``"stream": true``; see
``stead.testing._openai_responses``) and ``POST
/v1/embeddings`` (deterministic vectors, ``float`` or ``base64`` encoded). Both chat APIs are
answered by the same responder, and both refuse what OpenAI refuses of the models named
``reasoning_models`` (``temperature``, ``max_tokens``) and of the others (a reasoning effort),
and tools sent ``strict`` whose schema strict mode would not take. A streamed answer (either
API) comes in word-sized pieces, ``chunk_delay`` seconds apart. Run it standalone to point any
OpenAI client at it::

    python -m stead.testing.openai_server --port 8089
    export OPENAI_BASE_URL=http://127.0.0.1:8089/v1 OPENAI_API_KEY=test  # read by stead.settings
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import json
import math
import re
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Literal, NotRequired, TypedDict, assert_never

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stead.contracts.models import JsonObject, Message, ModelTurn, ToolCall, ToolSchema, Usage
from stead.integrations.llm import ModelClient
from stead.testing import _openai_responses as responses_wire
from stead.testing._http import LocalHTTPServer

__all__ = [
    "ChatRequest",
    "FakeOpenAIServer",
    "Fault",
    "FaultKind",
    "Responder",
    "echo_responder",
    "fake_embedding",
    "model_responder",
]

# ---------------------------------------------------------------------------- faults

FaultKind = Literal[
    "rate_limit",
    "server_error",
    "client_error",
    "timeout",
    "malformed_json",
    "bad_tool_arguments",
    "unknown_tool",
    "broken_stream",
]
"""What a :class:`Fault` makes the server do instead of answering normally."""

Endpoint = Literal["chat", "responses", "embeddings"]

_DEFAULT_STATUS: dict[FaultKind, int] = {
    "rate_limit": 429,
    "server_error": 500,
    "client_error": 400,
}
_CHAT_ONLY_FAULTS: frozenset[FaultKind] = frozenset({"bad_tool_arguments", "unknown_tool",
                                                    "broken_stream"})


@dataclass(frozen=True)
class Fault:
    """One misbehaviour, consumed by the next request in place of the responder.

    Only the fields of ``kind`` matter; the others are ignored (and checked to be unset where
    setting them would be a mistake)::

        Fault("rate_limit", retry_after=2)       # 429, Retry-After: 2
        Fault("server_error", status=503)
        Fault("timeout", delay=5)                # answers normally, but only after 5 s
        Fault("bad_tool_arguments", arguments='{"service": ')
        Fault("broken_stream", chunks=3)         # 3 chunks of the answer, then the line drops
    """

    kind: FaultKind
    _: KW_ONLY
    status: int | None = None
    """HTTP status of ``rate_limit`` (429), ``server_error`` (500..599, default 500) and
    ``client_error`` (400..499 except 429, default 400)."""
    retry_after: float | None = None
    """Seconds sent in the ``Retry-After`` header (``rate_limit`` and ``server_error``)."""
    retry_after_ms: float | None = None
    """Milliseconds sent in the ``retry-after-ms`` header, which OpenAI also sends and the SDK
    prefers over ``Retry-After``."""
    message: str | None = None
    """Error message in the OpenAI error body; a realistic default per kind otherwise."""
    code: str | None = None
    """Error ``code`` in the OpenAI error body, e.g. ``context_length_exceeded``."""
    delay: float = 30.0
    """Seconds a ``timeout`` fault waits before answering; pick more than the client timeout."""
    body: str | None = None
    """Raw body of a ``malformed_json`` fault; a truncated chat completion by default."""
    content_type: str = "application/json"
    """Content type of a ``malformed_json`` body, e.g. ``text/html`` for a proxy's error page."""
    tool_name: str = "no_such_tool"
    """Tool an ``unknown_tool`` fault calls; suffixed if the request happens to offer it."""
    arguments: str = '{"service": "api"'
    """Argument text of a ``bad_tool_arguments`` fault; truncated JSON by default."""
    chunks: int = 2
    """Chunks of the answer (events, on the Responses API) a ``broken_stream`` fault sends
    before it drops the connection (a request that does not stream gets half of its body)."""

    def __post_init__(self) -> None:
        status = self.status
        match self.kind:
            case "rate_limit":
                if status not in (None, 429):
                    raise ValueError("a rate_limit fault is always HTTP 429")
            case "server_error":
                if status is not None and not 500 <= status <= 599:
                    raise ValueError(f"server_error status must be 5xx, got {status}")
            case "client_error":
                if status is not None and (not 400 <= status <= 499 or status == 429):
                    raise ValueError(f"client_error status must be 4xx but not 429, got {status}")
            case "timeout":
                if self.delay <= 0:
                    raise ValueError("a timeout fault needs a positive delay")
            case "malformed_json" | "bad_tool_arguments" | "unknown_tool" | "broken_stream":
                if status is not None:
                    raise ValueError(f"a {self.kind} fault answers HTTP 200; status makes no sense")
                if self.chunks < 0:
                    raise ValueError("a broken_stream fault sends zero or more chunks")
            case _:
                assert_never(self.kind)
        has_retry_headers = self.retry_after is not None or self.retry_after_ms is not None
        if has_retry_headers and self.kind not in ("rate_limit", "server_error"):
            raise ValueError("retry_after/retry_after_ms only apply to rate_limit and server_error")

    @property
    def http_status(self) -> int:
        """Status code this fault answers with."""
        return self.status or _DEFAULT_STATUS.get(self.kind, 200)


# ---------------------------------------------------------------------------- request side


class _Wire(BaseModel):
    # Real requests carry many fields we do not model (temperature, user, ...): ignore them.
    model_config = ConfigDict(extra="ignore")


class _WireFunctionCall(_Wire):
    name: str
    arguments: str = ""


class _WireToolCall(_Wire):
    id: str
    type: Literal["function"] = "function"
    function: _WireFunctionCall


class _WireContentPart(_Wire):
    type: str
    text: str | None = None


class _WireMessage(_Wire):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_WireContentPart] | None = None
    tool_calls: list[_WireToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class _WireFunctionDef(_Wire):
    name: str = Field(min_length=1)
    description: str = ""
    parameters: JsonObject = Field(default_factory=dict)


class _WireTool(_Wire):
    type: Literal["function"]
    function: _WireFunctionDef


class _WireStreamOptions(_Wire):
    include_usage: bool | None = None


class _WireChatRequest(_Wire):
    model: str = Field(min_length=1)
    messages: list[_WireMessage] = Field(min_length=1)
    tools: list[_WireTool] | None = None
    stream: bool | None = None
    stream_options: _WireStreamOptions | None = None


EmbeddingInput = str | list[str] | list[int] | list[list[int]]
"""What ``input`` of an embeddings request may be: texts, or token ids."""


class _WireEmbeddingRequest(_Wire):
    model: str = Field(min_length=1)
    input: EmbeddingInput
    dimensions: int | None = Field(default=None, ge=1, le=8192)
    encoding_format: Literal["float", "base64"] = "float"


@dataclass(frozen=True)
class ChatRequest:
    """A chat completion request, already converted to stead's own models."""

    model: str
    """The model the client asked for; echoed back in the response like OpenAI does."""
    messages: list[Message]
    tools: list[ToolSchema]
    body: JsonObject
    """The JSON body as received, for asserting on fields stead does not model."""
    api: Literal["chat", "responses"] = "chat"
    """Which endpoint it came to: chat completions, or the Responses API (whose input items
    are already turned into ``messages``)."""
    stream: bool = False
    """The client asked for server-sent chunks (``"stream": true``)."""
    include_usage: bool = False
    """... with the usage in a last chunk (``stream_options.include_usage``)."""


def _message_text(content: str | list[_WireContentPart] | None) -> str | None:
    if content is None or isinstance(content, str):
        return content
    # Content-part arrays (the SDK's richer form): only text parts mean anything to a fake.
    return "".join(p.text or "" for p in content if p.type == "text")


def _to_chat_request(body: JsonObject) -> ChatRequest:
    wire = _WireChatRequest.model_validate(body)
    messages = [
        Message(
            # "developer" is the newer spelling of "system"; stead only knows the latter.
            role="system" if m.role == "developer" else m.role,
            content=_message_text(m.content),
            tool_calls=[
                ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
                for c in m.tool_calls or []
            ],
            tool_call_id=m.tool_call_id,
            name=m.name,
        )
        for m in wire.messages
    ]
    tools = [
        ToolSchema(
            name=t.function.name,
            description=t.function.description,
            parameters=t.function.parameters,
        )
        for t in wire.tools or []
    ]
    options = wire.stream_options or _WireStreamOptions()
    return ChatRequest(model=wire.model, messages=messages, tools=tools, body=body,
                       stream=bool(wire.stream), include_usage=bool(options.include_usage))


Responder = Callable[[ChatRequest], ModelTurn | Awaitable[ModelTurn]]
"""Decides the assistant's answer to a request (content and/or tool calls, finish reason, usage).

The turn's ``model`` field is ignored: like OpenAI, the server reports the requested model."""


def model_responder(model: ModelClient) -> Responder:
    """Answer with a stead :class:`~stead.integrations.llm.ModelClient` (``ScriptedModel``,
    ``FunctionModel``).

    The same scripted agents that run offline can then be driven through the real SDK.
    """

    async def respond(request: ChatRequest) -> ModelTurn:
        return await model.complete(request.messages, request.tools)

    return respond


def echo_responder(request: ChatRequest) -> ModelTurn:
    """Default responder: repeats the last user message, so a manual curl shows it works."""
    said = next((m.content for m in reversed(request.messages) if m.role == "user"), None)
    answer = f"echo: {said or ''}"
    prompt = sum(_estimate_tokens(m.content or "") for m in request.messages)
    return ModelTurn(
        content=answer, usage=Usage(input_tokens=prompt, output_tokens=_estimate_tokens(answer))
    )


# ---------------------------------------------------------------------------- response side
# TypedDicts of the JSON we send: the shapes of OpenAI's API reference, typed for mypy.


class _FunctionJSON(TypedDict):
    name: str
    arguments: str


class _ToolCallJSON(TypedDict):
    id: str
    type: Literal["function"]
    function: _FunctionJSON


class _AssistantMessageJSON(TypedDict):
    role: Literal["assistant"]
    content: str | None
    refusal: None
    annotations: list[JsonObject]
    tool_calls: NotRequired[list[_ToolCallJSON]]


class _ChoiceJSON(TypedDict):
    index: int
    message: _AssistantMessageJSON
    logprobs: None
    finish_reason: str


class _UsageJSON(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionJSON(TypedDict):
    """Body of a successful ``POST /v1/chat/completions``."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[_ChoiceJSON]
    usage: _UsageJSON
    system_fingerprint: str


class _DeltaFunctionJSON(TypedDict, total=False):
    name: str
    arguments: str


class _DeltaToolCallJSON(TypedDict):
    index: int
    id: NotRequired[str]
    type: NotRequired[Literal["function"]]
    function: _DeltaFunctionJSON


class _DeltaJSON(TypedDict, total=False):
    role: Literal["assistant"]
    content: str
    tool_calls: list[_DeltaToolCallJSON]


class _ChunkChoiceJSON(TypedDict):
    index: int
    delta: _DeltaJSON
    logprobs: None
    finish_reason: str | None


class ChatCompletionChunkJSON(TypedDict):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[_ChunkChoiceJSON]
    usage: NotRequired[_UsageJSON | None]


class _ErrorDetailJSON(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorJSON(TypedDict):
    """Body of every error response: OpenAI's ``{"error": {...}}`` envelope."""

    error: _ErrorDetailJSON


class _EmbeddingJSON(TypedDict):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class _EmbeddingUsageJSON(TypedDict):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsJSON(TypedDict):
    """Body of a successful ``POST /v1/embeddings``."""

    object: Literal["list"]
    data: list[_EmbeddingJSON]
    model: str
    usage: _EmbeddingUsageJSON


def _render_completion(turn: ModelTurn, *, model: str) -> ChatCompletionJSON:
    message: _AssistantMessageJSON = {
        "role": "assistant",
        "content": turn.content,
        "refusal": None,
        "annotations": [],
    }
    finish_reason = turn.finish_reason
    if turn.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in turn.tool_calls
        ]
        # ModelTurn defaults to "stop"; OpenAI says "tool_calls" whenever it calls tools.
        if finish_reason == "stop":
            finish_reason = "tool_calls"
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": {
            "prompt_tokens": turn.usage.input_tokens,
            "completion_tokens": turn.usage.output_tokens,
            "total_tokens": turn.usage.input_tokens + turn.usage.output_tokens,
        },
        "system_fingerprint": "fp_stead_fake",
    }


_PIECE = re.compile(r"\s*\S{1,8}|\s+")
"""Word-sized pieces of streamed text, as a tokenizer cuts them: leading space, a few letters."""


def _render_chunks(turn: ModelTurn, *, model: str, usage: bool) -> list[ChatCompletionChunkJSON]:
    """The chunks of a streamed answer: the role, the text piece by piece, each tool call (id
    and name first, then its arguments in pieces), the finish reason, then usage if asked."""
    done = _render_completion(turn, model=model)

    def chunk(delta: _DeltaJSON, finish: str | None = None) -> ChatCompletionChunkJSON:
        c: ChatCompletionChunkJSON = {
            "id": done["id"], "object": "chat.completion.chunk", "created": done["created"],
            "model": model, "system_fingerprint": done["system_fingerprint"],
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}]}
        if usage:
            c["usage"] = None
        return c

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": p}) for p in _PIECE.findall(turn.content or "")]
    for i, c in enumerate(turn.tool_calls):
        out.append(chunk({"tool_calls": [{"index": i, "id": c.id, "type": "function",
                                          "function": {"name": c.name, "arguments": ""}}]}))
        out += [chunk({"tool_calls": [{"index": i,
                                       "function": {"arguments": c.arguments[k:k + 16]}}]})
                for k in range(0, len(c.arguments), 16)]
    out.append(chunk({}, done["choices"][0]["finish_reason"]))
    if usage:
        last = chunk({})
        last["choices"] = []
        last["usage"] = done["usage"]
        out.append(last)
    return out


def _error_body(
    message: str, *, type_: str, code: str | None = None, param: str | None = None
) -> ErrorJSON:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _json_response(
    payload: ChatCompletionJSON | EmbeddingsJSON | ErrorJSON | responses_wire.ResponseJSON,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    all_headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
    all_headers.update(headers or {})
    return web.json_response(payload, status=status, headers=all_headers)


def _fault_error_response(fault: Fault) -> web.Response:
    status = fault.http_status
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        headers["retry-after"] = _format_number(fault.retry_after)
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = _format_number(fault.retry_after_ms)
    match fault.kind:
        case "rate_limit":
            body = _error_body(
                fault.message or "Rate limit reached for requests (fake server).",
                type_="requests",
                code=fault.code or "rate_limit_exceeded",
            )
        case "server_error":
            body = _error_body(
                fault.message
                or "The server had an error while processing your request. Sorry about that!",
                type_="server_error",
                code=fault.code,
            )
        case "client_error":
            default_code = {401: "invalid_api_key", 404: "model_not_found"}.get(status)
            body = _error_body(
                fault.message or f"Request rejected by fake server ({status}).",
                type_="invalid_request_error",
                code=fault.code or default_code,
            )
        case "timeout" | "malformed_json" | "bad_tool_arguments" | "unknown_tool" \
                | "broken_stream":
            raise AssertionError(f"{fault.kind} is not an HTTP error fault")
        case _:
            assert_never(fault.kind)
    return _json_response(body, status=status, headers=headers)


def _format_number(value: float) -> str:
    # Retry-After is an integer in the HTTP spec; keep integers integral so strict parsers agree.
    return str(int(value)) if float(value).is_integer() else str(value)


def _estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def fake_embedding(text: str, dimensions: int) -> list[float]:
    """The vector the server returns for ``text``: deterministic, unit length, float32-exact.

    Same text, same vector, across processes (no ``hash()`` randomisation), so tests can compute
    the expected answer. Values are rounded to float32 so ``float`` and ``base64`` encodings of
    one vector compare equal.
    """
    if dimensions < 1:
        raise ValueError("dimensions must be at least 1")
    raw: list[float] = []
    block = 0
    while len(raw) < dimensions:
        digest = hashlib.blake2b(f"{block}\x00{text}".encode(), digest_size=64).digest()
        raw.extend(u / 0xFFFFFFFF * 2.0 - 1.0 for (u,) in struct.iter_unpack("<I", digest))
        block += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in raw))
    return list(struct.unpack(f"<{dimensions}f", packed))


# ---------------------------------------------------------------------------- the server


class FakeOpenAIServer(LocalHTTPServer):
    """OpenAI-compatible server on 127.0.0.1 and a free port, with a queue of faults.

    Each chat request first consumes the next queued :class:`Fault`, if any; otherwise the
    responder answers. Received bodies are kept in :attr:`requests` for assertions.
    """

    def __init__(
        self,
        responder: Responder = echo_responder,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        embedding_dimensions: int = 16,
        shutdown_timeout: float = 2.0,
        access_log: bool = False,
        reasoning_models: Collection[str] = (),
        chunk_delay: float = 0.0,
    ) -> None:
        """``port=0`` picks a free port. With ``api_key`` set, other bearer tokens get a 401
        like OpenAI's ``invalid_api_key``; without it any key is accepted.
        ``reasoning_models``: model names the server treats as OpenAI treats its reasoning
        models (refusing ``temperature``; answering with a reasoning item in the Responses
        API); every other model refuses a reasoning effort. ``chunk_delay``: seconds between
        two chunks of a streamed chat answer."""
        super().__init__(host=host, port=port, shutdown_timeout=shutdown_timeout,
                         access_log=access_log)
        if chunk_delay < 0:
            raise ValueError("chunk_delay must not be negative")
        self._chunk_delay = chunk_delay
        self._responder = responder
        self._api_key = api_key
        self._embedding_dimensions = embedding_dimensions
        self._faults: dict[Endpoint, collections.deque[Fault]] = {
            "chat": collections.deque(),
            "responses": collections.deque(),
            "embeddings": collections.deque(),
        }
        self._reasoning_models = frozenset(reasoning_models)
        self._issued_reasoning: dict[str, str] = {}
        """Reasoning item id -> the encrypted content sent with it (checked when it comes back)."""
        self.requests: list[JsonObject] = []
        """JSON bodies of the chat completion requests, in arrival order (faulted ones too)."""
        self.response_requests: list[JsonObject] = []
        """JSON bodies of the Responses API requests, in arrival order (faulted ones too)."""
        self.embedding_requests: list[JsonObject] = []
        """JSON bodies of the embedding requests, in arrival order."""

    @classmethod
    def from_model(
        cls,
        model: ModelClient,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        embedding_dimensions: int = 16,
        shutdown_timeout: float = 2.0,
        access_log: bool = False,
        reasoning_models: Collection[str] = (),
        chunk_delay: float = 0.0,
    ) -> FakeOpenAIServer:
        """A server whose answers come from a stead model client (see :func:`model_responder`)."""
        return cls(
            model_responder(model),
            host=host,
            port=port,
            api_key=api_key,
            embedding_dimensions=embedding_dimensions,
            shutdown_timeout=shutdown_timeout,
            access_log=access_log,
            reasoning_models=reasoning_models,
            chunk_delay=chunk_delay,
        )

    # -- lifecycle

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/embeddings", self._embeddings)
        return app

    @property
    def base_url(self) -> str:
        """What to pass as ``base_url`` (or ``OPENAI_BASE_URL``), e.g.
        ``http://127.0.0.1:PORT/v1``."""
        return f"http://{self._host}:{self.port}/v1"

    # -- faults

    def inject(self, *faults: Fault, endpoint: Endpoint = "chat") -> None:
        """Queue faults; each later request to ``endpoint`` consumes one, in order."""
        for fault in faults:
            if endpoint == "embeddings" and fault.kind in _CHAT_ONLY_FAULTS:
                raise ValueError(f"{fault.kind} faults only make sense for chat completions "
                                 f"and the Responses API")
        self._faults[endpoint].extend(faults)

    def pending_faults(self, endpoint: Endpoint = "chat") -> int:
        """Faults queued for ``endpoint`` and not consumed yet."""
        return len(self._faults[endpoint])

    def _next_fault(self, endpoint: Endpoint) -> Fault | None:
        queue = self._faults[endpoint]
        return queue.popleft() if queue else None

    # -- handlers

    async def _read_body(self, request: web.Request) -> JsonObject | web.Response:
        """The request's JSON object, or the error response OpenAI would send instead."""
        if self._api_key is not None:
            if request.headers.get("Authorization") != f"Bearer {self._api_key}":
                return _json_response(
                    _error_body(
                        "Incorrect API key provided.",
                        type_="invalid_request_error",
                        code="invalid_api_key",
                    ),
                    status=401,
                )
        try:
            body: object = json.loads(await request.read())
        except ValueError:
            return _json_response(
                _error_body(
                    "We could not parse the JSON body of your request.",
                    type_="invalid_request_error",
                ),
                status=400,
            )
        if not isinstance(body, dict):
            return _json_response(
                _error_body(
                    "The request body must be a JSON object.", type_="invalid_request_error"
                ),
                status=400,
            )
        return body

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        self.requests.append(body)
        try:
            chat = _to_chat_request(body)
        except ValidationError as err:
            return _invalid_request(err)
        refused = self._refusal(chat)
        if refused is not None:
            return refused
        fault = self._next_fault("chat")
        if fault is None:
            return await self._answer(request, chat)
        sent = await self._transport_fault(fault)
        if sent is not None:
            return sent
        match fault.kind:
            case "rate_limit" | "server_error" | "client_error" | "timeout":
                return await self._answer(request, chat)  # a timeout's wait is over
            case "malformed_json":
                text = fault.body
                if chat.stream:
                    return await self._stream_raw(request, [text or '{"id": "chatcmpl-x", "cho'])
                if text is None:
                    full = json.dumps(
                        _render_completion(ModelTurn(content="cut off"), model=chat.model)
                    )
                    text = full[: len(full) // 2]
                return web.Response(text=text, content_type=fault.content_type)
            case "bad_tool_arguments":
                name = chat.tools[0].name if chat.tools else "some_tool"
                bad = ToolCall(
                    id=f"call_{uuid.uuid4().hex[:12]}", name=name, arguments=fault.arguments
                )
                return await self._reply(request, chat, ModelTurn(tool_calls=[bad]))
            case "unknown_tool":
                offered = {t.name for t in chat.tools}
                name = fault.tool_name
                while name in offered:
                    name += "_unknown"
                call = ToolCall(id=f"call_{uuid.uuid4().hex[:12]}", name=name, arguments="{}")
                return await self._reply(request, chat, ModelTurn(tool_calls=[call]))
            case "broken_stream":
                return await self._answer(request, chat, broken_after=fault.chunks)
            case _:
                assert_never(fault.kind)

    async def _answer(self, request: web.Request, chat: ChatRequest, *,
                      broken_after: int | None = None) -> web.StreamResponse:
        out = self._responder(chat)
        turn = await out if isinstance(out, Awaitable) else out
        return await self._reply(request, chat, turn, broken_after=broken_after)

    async def _reply(self, request: web.Request, chat: ChatRequest, turn: ModelTurn, *,
                     broken_after: int | None = None) -> web.StreamResponse:
        """``turn`` as the request asked for it: one JSON body, or chunks if it streams;
        ``broken_after``: drop the connection after that many chunks (or half the body)."""
        if not chat.stream:
            if broken_after is None:
                return _json_response(_render_completion(turn, model=chat.model))
            text = json.dumps(_render_completion(turn, model=chat.model))
            return await self._stream_raw(request, [text[: len(text) // 2]], sse=False,
                                          broken=True)
        chunks = [json.dumps(c) for c in _render_chunks(turn, model=chat.model,
                                                        usage=chat.include_usage)]
        if broken_after is not None:
            return await self._stream_raw(request, chunks[:broken_after], broken=True)
        return await self._stream_raw(request, [*chunks, "[DONE]"])

    async def _stream_raw(self, request: web.Request, parts: list[str], *, sse: bool = True,
                          broken: bool = False, names: list[str] | None = None
                          ) -> web.StreamResponse:
        """Send ``parts`` as server-sent events (or raw), ``chunk_delay`` apart; ``broken``:
        then drop the connection instead of ending the response; ``names``: each event's
        ``event:`` line (the Responses API names its events)."""
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream" if sse else "application/json",
            "x-request-id": f"req_{uuid.uuid4().hex}"})
        await resp.prepare(request)
        for i, part in enumerate(parts):
            if i and self._chunk_delay and await self._wait_or_closing(self._chunk_delay):
                broken = True
                break
            named = f"event: {names[i]}\n" if names is not None else ""
            await resp.write((f"{named}data: {part}\n\n" if sse else part).encode())
        if broken:
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write_eof()
        return resp

    def _refusal(self, chat: ChatRequest) -> web.Response | None:
        """The 400 OpenAI answers to parameters this model refuses, if any."""
        bad = responses_wire.refusal(chat.api, chat.body,
                                     reasoning=chat.model in self._reasoning_models)
        return None if bad is None else _bad_request(bad)

    # -- the Responses API

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        self.response_requests.append(body)
        try:
            model, messages, tools = responses_wire.parse_request(
                body, issued=self._issued_reasoning)
        except ValidationError as err:
            return _invalid_request(err)
        except responses_wire.BadRequest as err:
            return _bad_request(err)
        chat = ChatRequest(model=model, messages=messages, tools=tools, body=body,
                           api="responses")
        refused = self._refusal(chat)
        if refused is not None:
            return refused
        stream = bool(body.get("stream"))
        fault = self._next_fault("responses")
        if fault is None:
            return await self._answer_responses(request, chat)
        sent = await self._transport_fault(fault)
        if sent is not None:
            return sent
        match fault.kind:
            case "rate_limit" | "server_error" | "client_error" | "timeout":
                return await self._answer_responses(request, chat)  # a timeout's wait is over
            case "malformed_json":
                text = fault.body
                if stream:
                    return await self._stream_raw(
                        request, [text or '{"type": "response.created", "respo'],
                        names=["response.created"])
                if text is None:
                    full = json.dumps(self._render_response(ModelTurn(content="cut off"), chat))
                    text = full[: len(full) // 2]
                return web.Response(text=text, content_type=fault.content_type)
            case "bad_tool_arguments" | "unknown_tool":
                return await self._answer_responses(request, chat,
                                                    turn=_faulty_turn(fault, chat))
            case "broken_stream":
                return await self._answer_responses(request, chat, broken_after=fault.chunks)
            case _:
                assert_never(fault.kind)

    async def _answer_responses(self, request: web.Request, chat: ChatRequest, *,
                                turn: ModelTurn | None = None,
                                broken_after: int | None = None) -> web.StreamResponse:
        """The responder's answer (or ``turn``) as one body, or as events if the request
        streams; ``broken_after``: drop the connection after that many events (or half the
        body)."""
        if turn is None:
            out = self._responder(chat)
            turn = await out if isinstance(out, Awaitable) else out
        resp = self._render_response(turn, chat)
        if not chat.body.get("stream"):
            if broken_after is None:
                return _json_response(resp)
            full = json.dumps(resp)
            return await self._stream_raw(request, [full[: len(full) // 2]], sse=False,
                                          broken=True)
        events = responses_wire.render_events(resp, pieces=_PIECE.findall)
        if broken_after is not None:
            events = events[:broken_after]
        return await self._stream_raw(request, [json.dumps(e) for _, e in events],
                                      names=[n for n, _ in events],
                                      broken=broken_after is not None)

    def _render_response(self, turn: ModelTurn, chat: ChatRequest
                         ) -> responses_wire.ResponseJSON:
        reasoning: JsonObject | None = None
        thought = 0
        if chat.model in self._reasoning_models:
            said = next((m.content for m in reversed(chat.messages) if m.role == "user"), "")
            include = chat.body.get("include") or []
            reasoning, sealed = responses_wire.reasoning_item(
                said or "", encrypted="reasoning.encrypted_content" in include)
            self._issued_reasoning[str(reasoning["id"])] = sealed
            thought = 8
        return responses_wire.render_response(turn, body=chat.body, model=chat.model,
                                              reasoning=reasoning, reasoning_tokens=thought)

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        self.embedding_requests.append(body)
        try:
            wire = _WireEmbeddingRequest.model_validate(body)
        except ValidationError as err:
            return _invalid_request(err)
        fault = self._next_fault("embeddings")
        if fault is not None:
            sent = await self._transport_fault(fault)
            if sent is not None:
                return sent
            match fault.kind:
                case "rate_limit" | "server_error" | "client_error" | "timeout":
                    pass  # a timeout's wait is over: answer
                case "malformed_json":
                    return web.Response(
                        text=fault.body or '{"object": "list", "data": [{"obj',
                        content_type=fault.content_type,
                    )
                case "bad_tool_arguments" | "unknown_tool" | "broken_stream":
                    raise AssertionError("inject() refuses chat-only faults for embeddings")
                case _:
                    assert_never(fault.kind)
        return _json_response(self._render_embeddings(wire))

    def _render_embeddings(self, wire: _WireEmbeddingRequest) -> EmbeddingsJSON:
        texts, tokens = _embedding_inputs(wire.input)
        dimensions = wire.dimensions or self._embedding_dimensions
        data: list[_EmbeddingJSON] = []
        for index, text in enumerate(texts):
            vector = fake_embedding(text, dimensions)
            encoded: list[float] | str = vector
            if wire.encoding_format == "base64":
                encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        return {
            "object": "list",
            "data": data,
            "model": wire.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def _transport_fault(self, fault: Fault) -> web.Response | None:
        """What every endpoint answers for a fault of the transport: the error status of
        ``rate_limit``, ``server_error`` and ``client_error``; for ``timeout``, a 503 when
        the server starts closing during its wait. None: answer as the fault's kind says (after
        a timeout's wait, as usual)."""
        match fault.kind:
            case "rate_limit" | "server_error" | "client_error":
                return _fault_error_response(fault)
            case "timeout":
                if await self._wait_or_closing(fault.delay):
                    return _json_response(
                        _error_body("Server shutting down.", type_="server_error"), status=503
                    )
        return None

    async def _wait_or_closing(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True if the server started closing meanwhile."""
        try:
            await asyncio.wait_for(self._closing.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True


def _bad_request(err: responses_wire.BadRequest) -> web.Response:
    return _json_response(
        _error_body(str(err), type_="invalid_request_error", code=err.code, param=err.param),
        status=400,
    )


def _faulty_turn(fault: Fault, chat: ChatRequest) -> ModelTurn:
    """The turn of a ``bad_tool_arguments`` or ``unknown_tool`` fault."""
    if fault.kind == "bad_tool_arguments":
        name = chat.tools[0].name if chat.tools else "some_tool"
        return ModelTurn(tool_calls=[ToolCall(id=f"call_{uuid.uuid4().hex[:12]}", name=name,
                                              arguments=fault.arguments)])
    offered = {t.name for t in chat.tools}
    name = fault.tool_name
    while name in offered:
        name += "_unknown"
    return ModelTurn(tool_calls=[ToolCall(id=f"call_{uuid.uuid4().hex[:12]}", name=name,
                                          arguments="{}")])


def _invalid_request(err: ValidationError) -> web.Response:
    first = err.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    return _json_response(
        _error_body(f"Invalid request: {first['msg']}", type_="invalid_request_error", param=param),
        status=400,
    )


def _embedding_inputs(value: EmbeddingInput) -> tuple[list[str], int]:
    """Inputs as texts to hash, plus the prompt token count OpenAI would report."""
    if isinstance(value, str):
        return [value], _estimate_tokens(value)
    texts: list[str] = []
    tokens = 0
    for item in value:
        if isinstance(item, int):
            # A flat token array is one input, not one input per token.
            ints = [i for i in value if isinstance(i, int)]
            return [_token_text(ints)], len(ints)
        if isinstance(item, str):
            texts.append(item)
            tokens += _estimate_tokens(item)
        else:
            texts.append(_token_text(item))
            tokens += len(item)
    return texts, tokens


def _token_text(token_ids: Sequence[int]) -> str:
    return "tokens:" + ",".join(map(str, token_ids))


# ---------------------------------------------------------------------------- standalone


async def _serve(*, host: str, port: int, api_key: str | None, embedding_dimensions: int) -> None:
    async with FakeOpenAIServer(
        host=host,
        port=port,
        api_key=api_key,
        embedding_dimensions=embedding_dimensions,
        access_log=True,
    ) as srv:
        # flush: a parent process reads the URL from a pipe, where print would buffer it.
        print(f"fake OpenAI server at {srv.base_url} (echo responder); Ctrl-C to stop", flush=True)
        print(
            f"  export OPENAI_BASE_URL={srv.base_url} OPENAI_API_KEY={api_key or 'test'}",
            flush=True,
        )
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the echo responder until interrupted."""
    import logging

    parser = argparse.ArgumentParser(
        prog="python -m stead.testing.openai_server",
        description="Fake OpenAI-compatible server (echo responder).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    parser.add_argument("--api-key", default=None, help="require this bearer token (else any)")
    parser.add_argument("--embedding-dimensions", type=int, default=16)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        asyncio.run(
            _serve(
                host=args.host,
                port=args.port,
                api_key=args.api_key,
                embedding_dimensions=args.embedding_dimensions,
            )
        )
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

"""Model clients: one interface, three implementations.

- :class:`OpenAIModel` — OpenAI chat completions (or any OpenAI-compatible server) via the
  ``openai`` SDK. Retries are Temporal's: the SDK's own retries are off, and errors are mapped
  to retryable / non-retryable ``ApplicationError`` with the server's Retry-After honoured.
  Its sibling for OpenAI's Responses API is ``stead.integrations.openai_responses``.
- :class:`ScriptedModel` — a fixed list of turns, picked by how many assistant turns the
  transcript already has, so retries and replays see the same answer. For tests and evals.
- :class:`FunctionModel` — a Python function of the transcript. The reference agents' offline
  planners are FunctionModels.

Streaming: a client that can also answer piece by piece has ``stream(messages, tools, sink)``
(:class:`StreamingModelClient`), which returns the same turn and writes it to a
:class:`TurnSink` while the provider produces it. The model activity calls it when streaming
is on; a client without it (the scripted and function models, wrappers) answers with
``complete``, and the activity publishes the whole answer as one message, so readers of the
token stream see every model call the same way.

    model = ScriptedModel([ModelTurn(tool_calls=[call("service_status", service="api")]),
                           ModelTurn(content="api is healthy")])
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from stead.contracts.models import Message, ModelEndpoint, ModelTurn, ToolCall, ToolSchema, Usage
from stead.integrations.openai_params import chat_parameters

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion


@runtime_checkable
class ModelClient(Protocol):
    """Anything that turns a transcript plus tool schemas into the next turn."""

    @property
    def name(self) -> str:
        """Label recorded with every model call, e.g. ``openai:gpt-4o-mini``."""
        ...

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        ...


class TurnSink(Protocol):
    """Where a model call writes its answer while it is produced (the model activity's
    publisher). Its methods never block: a slow reader must not slow the call."""

    def begin(self, model: str) -> None:
        """A message starts. Called again within one call when the call starts over (a broken
        stream asked again, the next model of a chain): what came before is dropped."""

    def text(self, delta: str) -> None:
        """More of the message's text, in order."""

    def tool_call(self, name: str) -> None:
        """The message calls ``name`` (said once per call, as soon as the name is known)."""


@runtime_checkable
class StreamingModelClient(ModelClient, Protocol):
    """A model client that can stream its answer."""

    async def stream(self, messages: Sequence[Message], tools: Sequence[ToolSchema],
                     sink: TurnSink) -> ModelTurn:
        """What ``complete`` returns, written to ``sink`` as it is produced."""
        ...


def call(tool_name: str, /, *, call_id: str | None = None, **arguments: Any) -> ToolCall:
    """Build a tool call (test and planner helper); ``arguments`` become the JSON text."""
    return ToolCall(id=call_id or f"call_{uuid.uuid4().hex[:12]}", name=tool_name,
                    arguments=json.dumps(arguments))


def raw_call(tool_name: str, arguments_json: str, *, call_id: str | None = None) -> ToolCall:
    """A tool call with arbitrary (possibly malformed) argument text, for tests."""
    return ToolCall(id=call_id or f"call_{uuid.uuid4().hex[:12]}", name=tool_name,
                    arguments=arguments_json)


def assistant_turns(messages: Sequence[Message]) -> int:
    return sum(1 for m in messages if m.role == "assistant")


@dataclass
class ToolHistory:
    """What a transcript says the tools did: for planners written as FunctionModels."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    """tool name -> its last successful result."""
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    """tool name -> its last error payload (``type``, ``message``, ...)."""
    calls: list[ToolCall] = field(default_factory=list)
    """Every call the model proposed, in order."""

    @property
    def called(self) -> set[str]:
        return {c.name for c in self.calls}


def tool_history(messages: Sequence[Message]) -> ToolHistory:
    """Pair each proposed call with the tool message that answered it."""
    done = ToolHistory()
    by_id: dict[str, ToolCall] = {}
    for m in messages:
        if m.role == "assistant":
            for c in m.tool_calls:
                by_id[c.id] = c
                done.calls.append(c)
        elif m.role == "tool" and m.tool_call_id in by_id:
            name = by_id[m.tool_call_id].name
            try:
                payload = json.loads(m.content or "{}")
            except json.JSONDecodeError:
                payload = {"error": {"message": m.content}}
            if not isinstance(payload, dict):
                payload = {"error": {"message": str(payload)}}
            if payload.get("ok"):
                done.results[name] = payload.get("result") or {}
                done.errors.pop(name, None)
            else:
                err = payload.get("error")
                done.errors[name] = err if isinstance(err, dict) else {"message": str(err)}
    return done


class ScriptedModel:
    """Replies with ``turns[k]`` where k is the number of assistant turns so far."""

    def __init__(self, turns: Sequence[ModelTurn], *, name: str = "scripted") -> None:
        if not turns:
            raise ValueError("ScriptedModel needs at least one turn")
        self._turns = list(turns)
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        k = assistant_turns(messages)
        turn = self._turns[min(k, len(self._turns) - 1)]
        return turn.model_copy(update={"model": turn.model or self._name})


PlanFn = Callable[[Sequence[Message], Sequence[ToolSchema]], ModelTurn | Awaitable[ModelTurn]]


class FunctionModel:
    """A model whose next turn is computed by a Python function of the transcript."""

    def __init__(self, fn: PlanFn, *, name: str) -> None:
        self._fn = fn
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        out = self._fn(messages, tools)
        turn = await out if isinstance(out, Awaitable) else out
        usage = turn.usage
        if usage.input_tokens == 0 and usage.output_tokens == 0:
            # Rough token estimate (4 chars/token) so metrics have something honest to count.
            text_in = sum(len(m.content or "") for m in messages)
            text_out = len(turn.content or "") + sum(len(c.arguments) for c in turn.tool_calls)
            usage = Usage(input_tokens=text_in // 4, output_tokens=text_out // 4)
        return turn.model_copy(update={"model": turn.model or self._name, "usage": usage})


class ModelCallError(Exception):
    """A model call failed; ``retryable`` and ``retry_after`` tell Temporal what to do."""

    def __init__(self, message: str, *, kind: str, retryable: bool,
                 retry_after: timedelta | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after


class OpenAIModel:
    """OpenAI chat completions with tools, via the official SDK. ``endpoint``: the settings
    to send (temperature, output limit, reasoning effort, ...; see
    ``stead.integrations.openai_params``)."""

    def __init__(self, *, model: str, api_key: str, base_url: str | None = None,
                 timeout: float = 60.0, endpoint: ModelEndpoint | None = None) -> None:
        import openai

        self._model = model
        self._endpoint = endpoint
        # max_retries=0: Temporal owns retries, so they show in history and obey the policy.
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url,
                                          timeout=timeout, max_retries=0)

    @property
    def name(self) -> str:
        return f"openai:{self._model}"

    async def close(self) -> None:
        await self._client.close()

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        kwargs = self._chat_request(messages, tools)
        try:
            resp = await self._client.chat.completions.create(**kwargs)
        except Exception as err:
            raise openai_call_error(err, what="model") from err
        try:
            return _to_turn(resp, fallback_model=self._model)
        except (AttributeError, TypeError, IndexError, ValueError) as err:
            # The SDK builds responses without validating them (and returns the raw text of a
            # non-JSON body), so a body of the wrong shape only shows up here.
            raise ModelCallError(f"malformed model response: {err}", kind="ModelResponseInvalid",
                                 retryable=True) from err

    async def stream(self, messages: Sequence[Message], tools: Sequence[ToolSchema],
                     sink: TurnSink) -> ModelTurn:
        """``complete`` with ``stream=True``: text and tool-call names reach ``sink`` as the
        server sends them (:func:`stead.integrations.llm_stream.stream_chat`)."""
        from stead.integrations.llm_stream import stream_chat

        sink.begin(self.name)
        return await stream_chat(self._client, self._chat_request(messages, tools), sink,
                                 fallback_model=self._model)

    def _chat_request(self, messages: Sequence[Message],
                      tools: Sequence[ToolSchema]) -> dict[str, Any]:
        """The keyword arguments of one ``chat.completions.create`` call."""
        kwargs: dict[str, Any] = {
            "model": self._model,
            "messages": [_to_openai(m) for m in messages],
        }
        if tools:
            kwargs["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description,
                                                  "parameters": t.parameters}}
                for t in tools
            ]
        if self._endpoint is not None:
            kwargs.update(chat_parameters(self._endpoint, tools))
        return kwargs


def _to_turn(resp: ChatCompletion, *, fallback_model: str) -> ModelTurn:
    if not resp.choices:
        raise ValueError("model response has no choices")
    choice = resp.choices[0]
    msg = choice.message
    calls: list[ToolCall] = []
    for tc in msg.tool_calls or []:
        fn = getattr(tc, "function", None)  # custom (non-function) tool calls are not ours
        if fn is not None:
            calls.append(ToolCall(id=tc.id, name=fn.name, arguments=fn.arguments or ""))
    usage = Usage()
    if resp.usage is not None:
        usage = Usage(input_tokens=resp.usage.prompt_tokens or 0,
                      output_tokens=resp.usage.completion_tokens or 0)
    return ModelTurn(content=msg.content, tool_calls=calls, model=resp.model or fallback_model,
                     finish_reason=choice.finish_reason or "stop", usage=usage)


def openai_call_error(err: Exception, *, what: str) -> Exception:
    """Map an ``openai`` SDK error to a ``ModelCallError`` saying whether Temporal should
    retry (and when); other exceptions come back unchanged. ``what`` names the call."""
    import openai

    if isinstance(err, openai.RateLimitError):
        return ModelCallError(f"{what} rate limited: {err}", kind="RateLimited", retryable=True,
                              retry_after=_retry_after(err.response))
    if isinstance(err, openai.APITimeoutError):
        return ModelCallError(f"{what} call timed out: {err}", kind="ModelTimeout",
                              retryable=True)
    if isinstance(err, openai.APIConnectionError):
        return ModelCallError(f"cannot reach {what} server: {err}", kind="ModelUnavailable",
                              retryable=True)
    if isinstance(err, openai.InternalServerError):
        return ModelCallError(f"{what} server error {err.status_code}: {err}",
                              kind="ModelServerError", retryable=True,
                              retry_after=_retry_after(err.response))
    if isinstance(err, openai.APIStatusError):
        if err.status_code in (408, 409):
            # Request timeout / conflict: transient (the SDK's own policy retries them too).
            return ModelCallError(f"{what} server busy ({err.status_code}): {err}",
                                  kind="ModelServerError", retryable=True,
                                  retry_after=_retry_after(err.response))
        # 400/401/403/404/422: retrying the same request cannot succeed.
        return ModelCallError(f"{what} request rejected ({err.status_code}): {err}",
                              kind="ModelRequestRejected", retryable=False)
    if isinstance(err, openai.APIResponseValidationError | json.JSONDecodeError | ValueError):
        return ModelCallError(f"malformed {what} response: {err}", kind="ModelResponseInvalid",
                              retryable=True)
    return err


def _retry_after(response: Any) -> timedelta | None:
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for key, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(key)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if 0 <= seconds <= 600:
            return timedelta(seconds=seconds)
    return None


def wire_arguments(text: str) -> str:
    """A tool call's arguments as the transcript sends them back to the model server: the
    model's own text when it is a JSON object, else that text inside one
    (``{"unparsed_arguments": ...}``). Strict servers (llama.cpp's among them) refuse a whole
    request whose earlier call has arguments they cannot parse, so a model that once wrote
    broken JSON could never be asked again; the tool's answer already told it what was wrong.
    """
    try:
        if isinstance(json.loads(text), dict):
            return text
    except json.JSONDecodeError:
        pass
    return json.dumps({"unparsed_arguments": text})


def _to_openai(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": wire_arguments(c.arguments)}}
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out

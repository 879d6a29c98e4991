"""OpenAI's Responses API as a stead model client, beside chat completions (``OpenAIModel``).

    model = OpenAIResponsesModel(model="gpt-5-mini", api_key=key,
                                 endpoint=ModelEndpoint(model="gpt-5-mini", api="responses"))
    turn = await model.complete(messages, tools)

The transcript goes both ways between stead's chat-shaped messages and the API's items:

- system, user and assistant text: ``{"role": ..., "content": text}``;
- an assistant's reasoning: ``{"type": "reasoning", "id", "summary", "encrypted_content"}``;
- an assistant's tool calls: ``{"type": "function_call", "call_id", "name", "arguments"}``;
- a tool message: ``{"type": "function_call_output", "call_id", "output"}``;

and a response's output items (``message``, ``function_call``, ``reasoning``) become one
``ModelTurn``. Calls are stateless (``store: false``, never ``previous_response_id``): the
run's history holds the whole transcript, so a retry, a fallback model or a replay needs
nothing the provider kept. Errors map exactly as for chat completions (``openai_call_error``).

``stream`` asks for the same response as server-sent events: text deltas and function-call
names go to a ``TurnSink`` as they arrive, and the turn is built from the response that the
``response.completed`` (or ``response.incomplete``) event carries, by the same
``response_turn``, so a streamed turn equals the one ``complete`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stead.contracts.models import (
    Message,
    ModelEndpoint,
    ModelTurn,
    ReasoningItem,
    ToolCall,
    ToolSchema,
    Usage,
)
from stead.integrations.llm import ModelCallError, TurnSink, openai_call_error, wire_arguments
from stead.integrations.openai_params import responses_parameters

if TYPE_CHECKING:
    from openai.types.responses import Response


class OpenAIResponsesModel:
    """OpenAI's Responses API with function tools, via the official SDK."""

    def __init__(self, *, model: str, api_key: str, base_url: str | None = None,
                 timeout: float = 60.0, endpoint: ModelEndpoint | None = None) -> None:
        """``endpoint``: the settings to send; None sends the model's defaults."""
        import openai

        self._model = model
        self._endpoint = endpoint or ModelEndpoint(model=model, api="responses")
        # max_retries=0: Temporal owns retries, so they show in history and obey the policy.
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url,
                                          timeout=timeout, max_retries=0)

    @property
    def name(self) -> str:
        return f"openai:{self._model}"

    async def close(self) -> None:
        await self._client.close()

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        try:
            resp = await self._client.responses.create(**self._request(messages, tools))
        except Exception as err:
            raise openai_call_error(err, what="model") from err
        return _checked_turn(resp, fallback_model=self._model)

    async def stream(self, messages: Sequence[Message], tools: Sequence[ToolSchema],
                     sink: TurnSink) -> ModelTurn:
        """``complete`` with ``stream=True``: text and function-call names reach ``sink`` as
        the server sends them; the turn is the final response's, mapped as ``complete`` maps
        it. A stream that breaks off, reports a failure or an error, or ends without a final
        response is a retryable ``ModelCallError``."""
        from stead.integrations.llm_stream import stream_error

        sink.begin(self.name)
        try:
            stream = await self._client.responses.create(**self._request(messages, tools),
                                                         stream=True)
        except Exception as err:
            raise openai_call_error(err, what="model") from err
        final: Response | None = None
        events = 0
        try:
            async with stream:
                async for event in stream:
                    events += 1
                    final = _take_event(event, sink) or final
        except ModelCallError:
            raise
        except Exception as err:
            raise stream_error(err, chunks=events) from err
        if final is None:
            raise ModelCallError(f"the model stream ended without a final response "
                                 f"({events} events)", kind="ModelStreamBroken", retryable=True)
        return _checked_turn(final, fallback_model=self._model)

    def _request(self, messages: Sequence[Message],
                 tools: Sequence[ToolSchema]) -> dict[str, Any]:
        """The keyword arguments of one ``responses.create`` call."""
        return {"model": self._model, "input": to_input_items(messages),
                **responses_parameters(self._endpoint, tools)}


def _take_event(event: Any, sink: TurnSink) -> Response | None:
    """One event of a streamed response: text and call names to ``sink``; the final response
    when the event carries it. Events stead does not act on (reasoning summaries, argument
    deltas, built-in tools) pass."""
    match event.type:
        case "response.output_text.delta" | "response.refusal.delta":
            if event.delta:
                sink.text(event.delta)
        case "response.output_item.added":
            if event.item.type == "function_call" and event.item.name:
                sink.tool_call(event.item.name)
        case "response.completed" | "response.incomplete":
            final: Response = event.response
            return final
        case "response.failed":
            # response_turn says why, with the response's error code and message.
            response_turn(event.response, fallback_model="")
            raise ModelCallError("model server error: the response failed",
                                 kind="ModelServerError", retryable=True)
        case "error":
            raise ModelCallError(f"the model server ended the stream with an error: "
                                 f"{event.code or 'error'}: {event.message}",
                                 kind="ModelServerError", retryable=True)
    return None


def _checked_turn(resp: Response, *, fallback_model: str) -> ModelTurn:
    try:
        return response_turn(resp, fallback_model=fallback_model)
    except ModelCallError:
        raise
    except (AttributeError, TypeError, IndexError, KeyError, ValueError) as err:
        # The SDK builds responses without validating them: a body of the wrong shape
        # only shows up here.
        raise ModelCallError(f"malformed model response: {err}", kind="ModelResponseInvalid",
                             retryable=True) from err


def to_input_items(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """stead's transcript as Responses input items (see the module docstring)."""
    items: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            items.append({"type": "function_call_output", "call_id": m.tool_call_id or "",
                          "output": m.content or ""})
            continue
        if m.role != "assistant":
            items.append({"role": m.role, "content": m.content or ""})
            continue
        # As the API returned them: reasoning first, then the text, then the calls.
        items.extend({"type": "reasoning", "id": r.id,
                      "summary": [{"type": "summary_text", "text": t} for t in r.summary],
                      **({"encrypted_content": r.encrypted_content}
                         if r.encrypted_content is not None else {})}
                     for r in m.reasoning)
        if m.content:
            items.append({"role": "assistant", "content": m.content})
        items.extend({"type": "function_call", "call_id": c.id, "name": c.name,
                      "arguments": wire_arguments(c.arguments)} for c in m.tool_calls)
    return items


def response_turn(resp: Response, *, fallback_model: str) -> ModelTurn:
    """One response's output items as a turn: its text, function calls and reasoning."""
    if resp.status == "failed":
        err = resp.error
        raise ModelCallError(f"model server error: the response failed"
                             f"{f' ({err.code}: {err.message})' if err is not None else ''}",
                             kind="ModelServerError", retryable=True)
    texts: list[str] = []
    calls: list[ToolCall] = []
    reasoning: list[ReasoningItem] = []
    for item in resp.output:
        match item.type:
            case "message":
                for part in item.content:
                    if part.type == "output_text":
                        texts.append(part.text)
                    elif part.type == "refusal":
                        texts.append(part.refusal)
            case "function_call":
                calls.append(ToolCall(id=item.call_id, name=item.name,
                                      arguments=item.arguments or ""))
            case "reasoning":
                reasoning.append(ReasoningItem(id=item.id,
                                               summary=[s.text for s in item.summary],
                                               encrypted_content=item.encrypted_content))
            case _:
                pass  # built-in tools' items (web search, ...) are not stead's to act on
    usage = Usage()
    if resp.usage is not None:
        details = resp.usage.output_tokens_details
        usage = Usage(input_tokens=resp.usage.input_tokens or 0,
                      output_tokens=resp.usage.output_tokens or 0,
                      reasoning_tokens=(details.reasoning_tokens or 0) if details else 0)
    finish = "tool_calls" if calls else "stop"
    if resp.status == "incomplete":
        why = resp.incomplete_details.reason if resp.incomplete_details else None
        finish = "length" if why == "max_output_tokens" else (why or "incomplete")
    return ModelTurn(content="".join(texts) if texts else None, tool_calls=calls,
                     model=resp.model or fallback_model, finish_reason=finish, usage=usage,
                     reasoning=reasoning)

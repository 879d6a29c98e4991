"""Streamed chat completions: the chunks of ``stream=True`` assembled into one ``ModelTurn``,
with text and tool-call names passed on to a ``TurnSink`` as they arrive.

    turn = await stream_chat(openai_client, request, sink, fallback_model="gpt-4o-mini")

The request asks for ``stream_options={"include_usage": True}`` so the last chunk carries the
token counts the ledger and metrics record. Tool calls arrive as deltas keyed by ``index``: the
first delta of a call has its id and name, the following ones more of its argument text. A
stream that breaks off or sends something unreadable is a retryable :class:`ModelCallError`
(Temporal asks again; the next attempt's ``begin`` tells readers the message restarts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stead.contracts.models import ModelTurn, ToolCall, Usage
from stead.integrations.llm import ModelCallError, TurnSink, openai_call_error

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from openai.types.chat import ChatCompletionChunk


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class ChatAssembly:
    """The turn so far, from the chunks seen so far (only choice 0 counts, as in
    ``complete``)."""

    fallback_model: str
    model: str = ""
    text: list[str] = field(default_factory=list)
    calls: dict[int, _PartialCall] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    chunks: int = 0

    def add(self, chunk: ChatCompletionChunk, sink: TurnSink) -> None:
        """Take one chunk; pass its text and any newly named tool call to ``sink``."""
        self.chunks += 1
        self.model = self.model or (chunk.model or "")
        if chunk.usage is not None:
            self.usage = Usage(input_tokens=chunk.usage.prompt_tokens or 0,
                               output_tokens=chunk.usage.completion_tokens or 0)
        for choice in chunk.choices or []:
            if choice.index != 0:
                continue
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
            delta = choice.delta
            if delta is None:
                continue
            if delta.content:
                self.text.append(delta.content)
                sink.text(delta.content)
            for tc in delta.tool_calls or []:
                part = self.calls.setdefault(tc.index, _PartialCall())
                if tc.id and not part.id:
                    part.id = tc.id
                fn = tc.function
                if fn is None:
                    continue
                if fn.name and not part.name:
                    # Some servers repeat the name in every delta: the first one counts.
                    part.name = fn.name
                    sink.tool_call(fn.name)
                if fn.arguments:
                    part.arguments.append(fn.arguments)

    def turn(self) -> ModelTurn:
        """The assembled turn; ``ValueError`` when the stream held no answer at all."""
        if self.finish_reason is None and not self.text and not self.calls:
            raise ValueError(f"the stream ended without an answer ({self.chunks} chunks)")
        calls = []
        for index in sorted(self.calls):
            part = self.calls[index]
            if not part.name:
                raise ValueError(f"tool call {index} of the stream has no name")
            calls.append(ToolCall(id=part.id or f"call_{index}", name=part.name,
                                  arguments="".join(part.arguments)))
        return ModelTurn(content="".join(self.text) if self.text else None, tool_calls=calls,
                         model=self.model or self.fallback_model,
                         finish_reason=self.finish_reason or "stop", usage=self.usage)


async def stream_chat(client: AsyncOpenAI, request: dict[str, Any], sink: TurnSink, *,
                      fallback_model: str) -> ModelTurn:
    """One streamed ``chat.completions.create(**request)``, assembled; errors as
    ``ModelCallError`` like ``OpenAIModel.complete``."""
    try:
        stream = await client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True})
    except Exception as err:
        raise openai_call_error(err, what="model") from err
    assembly = ChatAssembly(fallback_model=fallback_model)
    try:
        async with stream:
            async for chunk in stream:
                assembly.add(chunk, sink)
    except ModelCallError:
        raise
    except Exception as err:
        raise stream_error(err, chunks=assembly.chunks) from err
    try:
        return assembly.turn()
    except ValueError as err:
        raise ModelCallError(f"malformed model response: {err}", kind="ModelResponseInvalid",
                             retryable=True) from err


def stream_error(err: Exception, *, chunks: int) -> Exception:
    """An error raised while reading a stream, as the ``ModelCallError`` it means."""
    import httpx
    import openai

    # The SDK wraps some transport errors of a stream's body, not all: both forms mean the same.
    if isinstance(err, httpx.TimeoutException | openai.APITimeoutError):
        return ModelCallError(f"the model stream stalled after {chunks} chunks: {err}",
                              kind="ModelTimeout", retryable=True)
    if isinstance(err, httpx.TransportError | openai.APIConnectionError):
        cause = err.__cause__ or err
        return ModelCallError(f"the model stream broke off after {chunks} chunks: "
                              f"{type(cause).__name__}: {cause}", kind="ModelStreamBroken",
                              retryable=True)
    mapped = openai_call_error(err, what="model")
    if mapped is not err:
        return mapped
    if isinstance(err, openai.APIError):
        # An ``error`` event inside the stream: the server gave up on this answer.
        return ModelCallError(f"the model server ended the stream with an error: {err}",
                              kind="ModelServerError", retryable=True)
    if isinstance(err, AttributeError | TypeError | KeyError):
        # A chunk of the wrong shape (the SDK does not validate them).
        return ModelCallError(f"malformed model stream chunk: {err}", kind="ModelResponseInvalid",
                              retryable=True)
    return err

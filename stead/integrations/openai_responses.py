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
from stead.integrations.llm import ModelCallError, openai_call_error
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
        kwargs: dict[str, Any] = {"model": self._model, "input": to_input_items(messages),
                                  **responses_parameters(self._endpoint, tools)}
        try:
            resp = await self._client.responses.create(**kwargs)
        except Exception as err:
            raise openai_call_error(err, what="model") from err
        try:
            return response_turn(resp, fallback_model=self._model)
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
                      "arguments": c.arguments} for c in m.tool_calls)
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

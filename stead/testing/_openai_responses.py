"""The Responses API's wire format for ``FakeOpenAIServer``, and the request checks the fake
shares between its APIs (what OpenAI refuses of reasoning models, strict tool schemas).

Request side: a ``POST /v1/responses`` body becomes stead's chat-shaped messages (input items
``message``, ``reasoning``, ``function_call``, ``function_call_output``; ``instructions``
first), so the responders that answer chat completions answer it too. Response side: a
``ModelTurn`` becomes a ``response`` object with ``reasoning``, ``message`` and
``function_call`` output items, in that order, as OpenAI sends them; a streamed answer
(``"stream": true``) is the same response as ``response.*`` server-sent events
(``render_events``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal, NotRequired, TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stead.contracts.models import (
    JsonObject,
    Message,
    ModelTurn,
    ReasoningItem,
    ToolCall,
    ToolSchema,
)

Api = Literal["chat", "responses"]


class BadRequest(ValueError):
    """A request OpenAI would answer 400 to: ``param`` names the field."""

    def __init__(self, message: str, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


# ---------------------------------------------------------------------------- request side


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Part(_Wire):
    type: str
    text: str | None = None


class _InputMessage(_Wire):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_Part]


class _FunctionCall(_Wire):
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


class _FunctionCallOutput(_Wire):
    call_id: str = Field(min_length=1)
    output: str


class _Summary(_Wire):
    text: str


class _Reasoning(_Wire):
    id: str = Field(min_length=1)
    summary: list[_Summary]
    encrypted_content: str | None = None


class _Tool(_Wire):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: JsonObject | None = None
    strict: bool | None = None


class _Request(_Wire):
    model: str = Field(min_length=1)
    input: str | list[JsonObject]
    instructions: str | None = None
    tools: list[_Tool] | None = None
    store: bool | None = None


def _text(content: str | list[_Part]) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.text or "" for p in content if p.type in ("input_text", "output_text",
                                                               "text"))


def parse_request(body: JsonObject, *, issued: Mapping[str, str]
                  ) -> tuple[str, list[Message], list[ToolSchema]]:
    """The model, the transcript and the tools of a Responses request. Raises ``BadRequest``
    (or pydantic's ``ValidationError``) where OpenAI answers 400, including for a reasoning
    item the server cannot verify: ``issued`` maps the ids of reasoning items it sent to
    their encrypted content."""
    wire = _Request.model_validate(body)
    stateless = wire.store is False
    messages: list[Message] = []
    if wire.instructions:
        messages.append(Message(role="system", content=wire.instructions))
    items: list[JsonObject] = ([{"role": "user", "content": wire.input}]
                               if isinstance(wire.input, str) else wire.input)
    turn: Message | None = None  # the assistant turn being put together

    def close_turn() -> None:
        nonlocal turn
        if turn is not None:
            messages.append(turn)
            turn = None

    for i, item in enumerate(items):
        kind = item.get("type", "message")
        where = f"input[{i}]"
        try:
            if kind == "message":
                m = _InputMessage.model_validate(item)
                if m.role != "assistant":
                    close_turn()
                    role: Literal["system", "user"] = "user" if m.role == "user" else "system"
                    messages.append(Message(role=role, content=_text(m.content)))
                    continue
                if turn is not None and (turn.content is not None or turn.tool_calls):
                    close_turn()
                turn = turn or Message(role="assistant")
                turn.content = _text(m.content)
            elif kind == "reasoning":
                r = _Reasoning.model_validate(item)
                _verify_reasoning(r, issued=issued, stateless=stateless, where=where)
                if turn is not None and (turn.content is not None or turn.tool_calls):
                    close_turn()
                turn = turn or Message(role="assistant")
                turn.reasoning.append(ReasoningItem(id=r.id, summary=[s.text for s in r.summary],
                                                    encrypted_content=r.encrypted_content))
            elif kind == "function_call":
                c = _FunctionCall.model_validate(item)
                turn = turn or Message(role="assistant")
                turn.tool_calls.append(ToolCall(id=c.call_id, name=c.name, arguments=c.arguments))
            elif kind == "function_call_output":
                o = _FunctionCallOutput.model_validate(item)
                close_turn()
                messages.append(Message(role="tool", tool_call_id=o.call_id, content=o.output))
            else:
                raise BadRequest(f"Invalid value: {kind!r}. The fake supports input items of "
                                 f"type message, reasoning, function_call and "
                                 f"function_call_output.", param=f"{where}.type")
        except ValidationError as err:
            first = err.errors()[0]
            raise BadRequest(f"Invalid input item: {first['msg']}",
                             param=".".join([where, *map(str, first["loc"])])) from None
    close_turn()
    if not messages:
        raise BadRequest("The input is empty.", param="input")
    tools = []
    for i, t in enumerate(wire.tools or []):
        if t.type != "function" or not t.name:
            raise BadRequest("the fake only offers function tools with a name",
                             param=f"tools[{i}]")
        tools.append(ToolSchema(name=t.name, description=t.description or "",
                                parameters=t.parameters or {}))
    return wire.model, messages, tools


def _verify_reasoning(r: _Reasoning, *, issued: Mapping[str, str], stateless: bool,
                      where: str) -> None:
    if r.encrypted_content is None:
        if stateless:
            # What OpenAI says: nothing is kept when store is false, so the id means nothing.
            raise BadRequest(f"Item with id {r.id!r} not found. Items are not persisted when "
                             f"`store` is set to false. Try again with `store` set to true, or "
                             f"remove this item from your input.", param=where)
        if r.id not in issued:
            raise BadRequest(f"Item with id {r.id!r} not found.", param=where)
        return
    if issued.get(r.id) != r.encrypted_content:
        raise BadRequest(f"The encrypted content for item {r.id} could not be verified.",
                         param=f"{where}.encrypted_content", code="invalid_encrypted_content")


# ---------------------------------------------------------------------------- shared checks


def refusal(api: Api, body: JsonObject, *, reasoning: bool) -> BadRequest | None:
    """What OpenAI refuses in a request to a reasoning (or another) model, if anything."""
    tools = bool(body.get("tools"))
    if reasoning:
        for name in ("temperature", "top_p"):
            if body.get(name) is not None:
                return BadRequest(f"Unsupported parameter: '{name}' is not supported with this "
                                  f"model.", param=name, code="unsupported_parameter")
        if api == "chat" and body.get("max_tokens") is not None:
            return BadRequest("Unsupported parameter: 'max_tokens' is not supported with this "
                              "model. Use 'max_completion_tokens' instead.", param="max_tokens",
                              code="unsupported_parameter")
    elif api == "chat" and body.get("reasoning_effort") is not None:
        return BadRequest("Unrecognized request argument supplied: reasoning_effort",
                          param="reasoning_effort")
    elif api == "responses" and isinstance(body.get("reasoning"), dict) \
            and body["reasoning"].get("effort") is not None:
        return BadRequest("Unsupported parameter: 'reasoning.effort' is not supported with "
                          "this model.", param="reasoning.effort", code="unsupported_parameter")
    unparsed = _unparsed_arguments(api, body)
    if unparsed is not None:
        # What llama.cpp's server (and other strict servers) refuse: a transcript whose
        # earlier tool call carries arguments that are not a JSON object.
        return BadRequest("Failed to parse tool call arguments as JSON", param=unparsed)
    if api == "chat" and body.get("parallel_tool_calls") is not None and not tools:
        return BadRequest("'parallel_tool_calls' is only allowed when 'tools' are specified.",
                          param="parallel_tool_calls")
    for i, t in enumerate(body.get("tools") or []):
        fn = t.get("function", t) if isinstance(t, dict) else {}
        strict = fn.get("strict", True if api == "responses" else False)
        why = _not_strict(fn.get("parameters") or {}) if strict else None
        if why is not None:
            return BadRequest(f"Invalid schema for function '{fn.get('name')}': {why}",
                              param=f"tools[{i}]", code="invalid_function_parameters")
    return None


def _unparsed_arguments(api: Api, body: JsonObject) -> str | None:
    """Where the request's transcript holds tool-call arguments that are not a JSON object."""
    found: list[tuple[str, object]] = []
    if api == "chat":
        for i, m in enumerate(body.get("messages") or []):
            for j, c in enumerate((m.get("tool_calls") or []) if isinstance(m, dict) else []):
                fn = c.get("function") if isinstance(c, dict) else None
                if isinstance(fn, dict):
                    found.append((f"messages[{i}].tool_calls[{j}].function.arguments",
                                  fn.get("arguments")))
    else:
        items = body.get("input")
        for i, item in enumerate(items if isinstance(items, list) else []):
            if isinstance(item, dict) and item.get("type") == "function_call":
                found.append((f"input[{i}].arguments", item.get("arguments")))
    for where, text in found:
        try:
            if isinstance(text, str) and isinstance(json.loads(text), dict):
                continue
        except json.JSONDecodeError:
            pass
        return where
    return None


def _not_strict(schema: Mapping[str, Any], at: str = "()") -> str | None:
    """Why strict mode refuses ``schema`` (closed objects, every property required), or None."""
    if schema.get("type") == "object":
        if schema.get("additionalProperties") is not False:
            return (f"In context={at}, 'additionalProperties' is required to be supplied and "
                    f"to be false.")
        props = schema.get("properties") or {}
        missing = [p for p in props if p not in (schema.get("required") or [])]
        if missing:
            return (f"In context={at}, 'required' is required to be supplied and to be an "
                    f"array including every key in properties. Missing '{missing[0]}'.")
        for name, sub in props.items():
            if isinstance(sub, Mapping):
                why = _not_strict(sub, f"{at}.{name}")
                if why is not None:
                    return why
    return None


# ---------------------------------------------------------------------------- response side


class OutputTextJSON(TypedDict):
    type: Literal["output_text"]
    text: str
    annotations: list[JsonObject]


class ResponseUsageJSON(TypedDict):
    input_tokens: int
    input_tokens_details: JsonObject
    output_tokens: int
    output_tokens_details: JsonObject
    total_tokens: int


class ResponseJSON(TypedDict):
    """Body of a successful ``POST /v1/responses``."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete"]
    error: None
    incomplete_details: JsonObject | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[JsonObject]
    parallel_tool_calls: bool
    previous_response_id: None
    reasoning: JsonObject
    store: bool
    temperature: float | None
    text: JsonObject
    tool_choice: str
    tools: list[JsonObject]
    top_p: float | None
    truncation: str
    usage: ResponseUsageJSON
    metadata: dict[str, str]
    user: NotRequired[str]


def reasoning_item(text: str, *, encrypted: bool) -> tuple[JsonObject, str]:
    """A ``reasoning`` output item about ``text`` and the encrypted content it carries (sent
    only when the request included ``reasoning.encrypted_content``)."""
    rid = f"rs_{uuid.uuid4().hex}"
    sealed = f"fake-sealed:{uuid.uuid4().hex}"
    item: JsonObject = {"type": "reasoning", "id": rid,
                        "summary": [{"type": "summary_text",
                                     "text": f"Considered: {text[:60]}"}],
                        "encrypted_content": sealed if encrypted else None}
    return item, sealed


def render_response(turn: ModelTurn, *, body: JsonObject, model: str,
                    reasoning: JsonObject | None, reasoning_tokens: int) -> ResponseJSON:
    output: list[JsonObject] = [] if reasoning is None else [reasoning]
    if turn.content is not None or not turn.tool_calls:
        text: OutputTextJSON = {"type": "output_text", "text": turn.content or "",
                                "annotations": []}
        output.append({"type": "message", "id": f"msg_{uuid.uuid4().hex[:24]}",
                       "status": "completed", "role": "assistant", "content": [text]})
    output.extend({"type": "function_call", "id": f"fc_{uuid.uuid4().hex[:24]}",
                   "call_id": c.id, "name": c.name, "arguments": c.arguments,
                   "status": "completed"} for c in turn.tool_calls)
    cut = turn.finish_reason == "length"
    effort = body.get("reasoning", {}).get("effort") if isinstance(body.get("reasoning"),
                                                                   dict) else None
    out_tokens = turn.usage.output_tokens + reasoning_tokens
    return {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if cut else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
        "previous_response_id": None,
        "reasoning": {"effort": effort, "summary": None},
        "store": bool(body.get("store", True)),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": list(body.get("tools") or []),
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {"input_tokens": turn.usage.input_tokens,
                  "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": out_tokens,
                  "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
                  "total_tokens": turn.usage.input_tokens + out_tokens},
        "metadata": {},
    }


def render_events(resp: ResponseJSON, *, pieces: Callable[[str], list[str]]
                  ) -> list[tuple[str, JsonObject]]:
    """``resp`` as the events of a streamed response, as OpenAI sends them: created and in
    progress, then per output item its ``added`` event, its text or arguments in ``pieces``
    and its ``done`` events, then ``response.completed`` (``response.incomplete`` for a
    response cut short) with the whole response."""
    events: list[tuple[str, JsonObject]] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append((kind, {"type": kind, "sequence_number": len(events), **fields}))

    started: JsonObject = {**resp, "status": "in_progress", "output": [],
                           "incomplete_details": None}
    emit("response.created", response=started)
    emit("response.in_progress", response=started)
    for index, item in enumerate(resp["output"]):
        where = {"item_id": item["id"], "output_index": index}
        match item["type"]:
            case "message":
                emit("response.output_item.added", output_index=index,
                     item={**item, "status": "in_progress", "content": []})
                for at, part in enumerate(item["content"]):
                    text = part["text"]
                    emit("response.content_part.added", **where, content_index=at,
                         part={**part, "text": ""})
                    for piece in pieces(text):
                        emit("response.output_text.delta", **where, content_index=at,
                             delta=piece, logprobs=[])
                    emit("response.output_text.done", **where, content_index=at, text=text,
                         logprobs=[])
                    emit("response.content_part.done", **where, content_index=at, part=part)
            case "function_call":
                emit("response.output_item.added", output_index=index,
                     item={**item, "status": "in_progress", "arguments": ""})
                arguments = item["arguments"]
                for k in range(0, len(arguments), 16):
                    emit("response.function_call_arguments.delta", **where,
                         delta=arguments[k:k + 16])
                emit("response.function_call_arguments.done", **where, name=item["name"],
                     arguments=arguments)
            case _:
                emit("response.output_item.added", output_index=index, item=item)
        emit("response.output_item.done", output_index=index, item=item)
    emit("response.incomplete" if resp["status"] == "incomplete" else "response.completed",
         response=resp)
    return events

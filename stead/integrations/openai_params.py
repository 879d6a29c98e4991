"""What a model's declared settings become in an OpenAI request, per API and kind of model.

    chat_parameters(endpoint, tools)        # fields to add to chat.completions.create(...)
    responses_parameters(endpoint, tools)   # fields of responses.create(...) besides the input
    strict_schema_problems(schema)          # why a tool schema cannot be sent strict ([] if it can)

The rules, from OpenAI's API reference and reasoning guide:

- Reasoning models (o-series, gpt-5, gpt-oss) refuse ``temperature`` (and ``top_p``): a
  declared temperature is not sent to them. They take the effort as ``reasoning_effort``
  (chat completions) or ``reasoning.effort`` (Responses); other models are refused one at
  worker start, since OpenAI answers 400 to it.
- The output limit is ``max_output_tokens`` in the Responses API. In chat completions OpenAI
  replaced ``max_tokens`` by ``max_completion_tokens`` and reasoning models refuse the old
  name, while many OpenAI-compatible servers read only the old one: OpenAI's own host and
  every reasoning model get ``max_completion_tokens``, other servers ``max_tokens``.
- ``parallel_tool_calls`` is sent only with tools (OpenAI refuses it without).
- Function tools carry ``strict`` explicitly in the Responses API, whose default is strict.
- The Responses API is called statelessly (``store: false``): the run's history holds the
  transcript, so a retried or replayed call never depends on what the provider kept. Reasoning
  models then need ``include: ["reasoning.encrypted_content"]`` to get their reasoning back
  for the next turn.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from stead.contracts.models import OPENAI_BASE_URL, ModelEndpoint, ToolSchema

_REASONING_NAME = re.compile(r"^(o\d|gpt-5|gpt-oss)")


def looks_like_reasoning(model: str) -> bool:
    """Judged by the name: ``o1``, ``o3-mini``, ``o4-mini``, ``gpt-5*`` (but not
    ``gpt-5-chat*``), ``gpt-oss-*``; a provider prefix (``openai/``) is ignored. Declare
    ``ModelEndpoint.reasoning`` for names this does not know."""
    base = model.rsplit("/", 1)[-1].lower()
    return bool(_REASONING_NAME.match(base)) and "-chat" not in base


def is_reasoning(endpoint: ModelEndpoint) -> bool:
    return endpoint.reasoning if endpoint.reasoning is not None \
        else looks_like_reasoning(endpoint.model)


def is_openai_host(base_url: str | None) -> bool:
    host = urlsplit(base_url or OPENAI_BASE_URL).hostname or ""
    return host == "api.openai.com"


def strict_schema_problems(schema: Mapping[str, Any], where: str = "parameters"
                           ) -> list[str]:
    """Why OpenAI's strict mode would refuse ``schema``: every object must be closed
    (``additionalProperties: false``) and list each of its properties as required (an
    optional field is a required one that may be null). Nested objects, array items,
    ``anyOf`` branches and ``$defs`` are checked too."""
    return list(_strict_problems(schema, where))


def _strict_problems(schema: Mapping[str, Any], where: str) -> Iterator[str]:
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            yield f"{where}: an object must set additionalProperties to false"
        props = schema.get("properties") or {}
        missing = sorted(set(props) - set(schema.get("required") or []))
        if missing:
            yield (f"{where}: every property must be required (make an optional one "
                   f"required and nullable): {', '.join(missing)}")
        for name, sub in props.items():
            if isinstance(sub, Mapping):
                yield from _strict_problems(sub, f"{where}.{name}")
    items = schema.get("items")
    if isinstance(items, Mapping):
        yield from _strict_problems(items, f"{where}[]")
    for i, branch in enumerate(schema.get("anyOf") or []):
        if isinstance(branch, Mapping):
            yield from _strict_problems(branch, f"{where}.anyOf[{i}]")
    for name, sub in (schema.get("$defs") or {}).items():
        if isinstance(sub, Mapping):
            yield from _strict_problems(sub, f"{where}.$defs.{name}")


def sends_strict(endpoint: ModelEndpoint, tool: ToolSchema) -> bool:
    """Strict when the endpoint asks for it and the schema allows it. The worker refuses to
    start with an agent tool that does not; an MCP tool listed at run start that does not is
    sent non-strict rather than failing every call."""
    return endpoint.strict_tools and not strict_schema_problems(tool.parameters)


def chat_parameters(endpoint: ModelEndpoint, tools: Sequence[ToolSchema]) -> dict[str, Any]:
    """Fields for ``chat.completions.create`` from the endpoint's settings (``tools`` again,
    with their ``strict`` flags, when the endpoint asks for strict schemas)."""
    reasoning = is_reasoning(endpoint)
    out: dict[str, Any] = {}
    if endpoint.temperature is not None and not reasoning:
        out["temperature"] = endpoint.temperature
    if endpoint.max_output_tokens is not None:
        key = ("max_completion_tokens" if reasoning or is_openai_host(endpoint.base_url)
               else "max_tokens")
        out[key] = endpoint.max_output_tokens
    if endpoint.reasoning_effort is not None and reasoning:
        out["reasoning_effort"] = endpoint.reasoning_effort
    if tools:
        if endpoint.parallel_tool_calls is not None:
            out["parallel_tool_calls"] = endpoint.parallel_tool_calls
        if endpoint.strict_tools:
            out["tools"] = [
                {"type": "function",
                 "function": {"name": t.name, "description": t.description,
                              "parameters": t.parameters, "strict": sends_strict(endpoint, t)}}
                for t in tools]
    return out


def responses_parameters(endpoint: ModelEndpoint, tools: Sequence[ToolSchema]
                         ) -> dict[str, Any]:
    """Fields for ``responses.create`` besides ``model`` and ``input``."""
    reasoning = is_reasoning(endpoint)
    out: dict[str, Any] = {"store": False}
    if endpoint.temperature is not None and not reasoning:
        out["temperature"] = endpoint.temperature
    if endpoint.max_output_tokens is not None:
        out["max_output_tokens"] = endpoint.max_output_tokens
    if reasoning:
        out["include"] = ["reasoning.encrypted_content"]
        if endpoint.reasoning_effort is not None:
            out["reasoning"] = {"effort": endpoint.reasoning_effort}
    if tools:
        out["tools"] = [{"type": "function", "name": t.name, "description": t.description,
                         "parameters": t.parameters, "strict": sends_strict(endpoint, t)}
                        for t in tools]
        if endpoint.parallel_tool_calls is not None:
            out["parallel_tool_calls"] = endpoint.parallel_tool_calls
    return out

"""``OpenAIModel`` (and the streaming of ``OpenAIResponsesModel``) through the real ``openai``
SDK against ``FakeOpenAIServer``.

What these pin: the wire format stead sends and reads, and how every way a provider can fail
maps onto ``ModelCallError(kind, retryable, retry_after)`` — the contract Temporal's retry
policy relies on.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import openai
import pytest

from stead.contracts.models import Message, ModelTurn, ToolCall, ToolSchema, Usage
from stead.integrations.llm import (
    FunctionModel,
    ModelCallError,
    OpenAIModel,
    ScriptedModel,
    call,
    raw_call,
)
from stead.integrations.openai_responses import OpenAIResponsesModel
from stead.testing.openai_server import FakeOpenAIServer, Fault, fake_embedding

ROOT = Path(__file__).resolve().parents[1]
MODEL = "gpt-4o-mini"
USER = [
    Message(role="system", content="You run ops."),
    Message(role="user", content="Is the api up?"),
]
STATUS_TOOL = ToolSchema(
    name="service_status",
    description="Current health of a service.",
    parameters={
        "type": "object",
        "properties": {"service": {"type": "string"}},
        "required": ["service"],
        "additionalProperties": False,
    },
)


def answer(text: str = "api is healthy") -> ScriptedModel:
    return ScriptedModel([ModelTurn(content=text)])


@asynccontextmanager
async def openai_model(
    srv: FakeOpenAIServer, *, client_timeout: float = 10.0, api_key: str = "sk-test"
) -> AsyncIterator[OpenAIModel]:
    model = OpenAIModel(model=MODEL, api_key=api_key, base_url=srv.base_url, timeout=client_timeout)
    try:
        yield model
    finally:
        await model.close()


async def failure(
    srv: FakeOpenAIServer,
    *faults: Fault,
    client_timeout: float = 10.0,
    tools: Sequence[ToolSchema] = (),
) -> ModelCallError:
    """Inject ``faults``, make one call, and return the error it raised."""
    srv.inject(*faults)
    async with openai_model(srv, client_timeout=client_timeout) as model:
        with pytest.raises(ModelCallError) as info:
            await model.complete(USER, tools)
    return info.value


# ---------------------------------------------------------------------------- answers


async def test_plain_answer_returns_content_and_stop_with_requested_model() -> None:
    async with FakeOpenAIServer.from_model(answer()) as srv, openai_model(srv) as model:
        turn = await model.complete(USER, [])

    assert turn.content == "api is healthy"
    assert turn.tool_calls == []
    assert turn.finish_reason == "stop"
    assert turn.model == MODEL
    assert model.name == f"openai:{MODEL}"
    (sent,) = srv.requests
    assert sent["model"] == MODEL
    assert sent["messages"] == [
        {"role": "system", "content": "You run ops."},
        {"role": "user", "content": "Is the api up?"},
    ]
    # No tools offered means no "tools" key at all: some servers reject an empty list.
    assert "tools" not in sent


async def test_tool_call_round_trips_arguments_and_tools_go_out_in_function_format() -> None:
    scripted = ScriptedModel(
        [
            ModelTurn(
                tool_calls=[call("service_status", call_id="call_1", service="api", verbose=True)]
            )
        ]
    )
    async with FakeOpenAIServer.from_model(scripted) as srv, openai_model(srv) as model:
        turn = await model.complete(USER, [STATUS_TOOL])

    assert turn.tool_calls == [
        ToolCall(
            id="call_1",
            name="service_status",
            arguments=json.dumps({"service": "api", "verbose": True}),
        )
    ]
    assert turn.content is None
    assert turn.finish_reason == "tool_calls"
    assert srv.requests[0]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "service_status",
                "description": "Current health of a service.",
                "parameters": STATUS_TOOL.parameters,
            },
        }
    ]


async def test_transcript_with_tool_results_reaches_the_server_unchanged() -> None:
    """Assistant tool calls and tool results survive stead -> OpenAI JSON -> stead."""
    seen: list[Sequence[Message]] = []

    def plan(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        seen.append(messages)
        return ModelTurn(content="api is healthy")

    transcript = [
        *USER,
        Message(
            role="assistant",
            tool_calls=[
                ToolCall(id="call_1", name="service_status", arguments='{"service": "api"}')
            ],
        ),
        Message(role="tool", tool_call_id="call_1", content='{"status": "healthy"}'),
    ]
    async with (
        FakeOpenAIServer.from_model(FunctionModel(plan, name="plan")) as srv,
        openai_model(srv) as model,
    ):
        await model.complete(transcript, [STATUS_TOOL])

    assert list(seen[0]) == transcript
    assert srv.requests[0]["messages"][2]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "service_status", "arguments": '{"service": "api"}'},
        }
    ]


async def test_usage_tokens_map_to_input_and_output_tokens() -> None:
    scripted = ScriptedModel(
        [ModelTurn(content="ok", usage=Usage(input_tokens=123, output_tokens=45))]
    )
    async with FakeOpenAIServer.from_model(scripted) as srv, openai_model(srv) as model:
        turn = await model.complete(USER, [])

    assert turn.usage == Usage(input_tokens=123, output_tokens=45)


# ---------------------------------------------------------------------------- model mistakes
# The model wrote something wrong but the HTTP call succeeded: OpenAIModel passes it through
# untouched and the workflow rejects the call (counted as rejected_calls), no retry.


async def test_bad_tool_arguments_come_through_as_the_raw_string() -> None:
    async with FakeOpenAIServer.from_model(answer()) as srv, openai_model(srv) as model:
        srv.inject(Fault("bad_tool_arguments", arguments='{"service": "api"'))
        turn = await model.complete(USER, [STATUS_TOOL])

    (tool_call,) = turn.tool_calls
    assert tool_call.name == "service_status"
    assert tool_call.arguments == '{"service": "api"'


async def test_call_to_a_tool_not_offered_comes_through_by_name() -> None:
    async with FakeOpenAIServer.from_model(answer()) as srv, openai_model(srv) as model:
        srv.inject(Fault("unknown_tool", tool_name="service_status"))
        turn = await model.complete(USER, [STATUS_TOOL])

    (tool_call,) = turn.tool_calls
    assert tool_call.name != "service_status"
    assert tool_call.name.startswith("service_status")


async def test_scripted_raw_call_arguments_are_not_reencoded() -> None:
    scripted = ScriptedModel([ModelTurn(tool_calls=[raw_call("service_status", "not json")])])
    async with FakeOpenAIServer.from_model(scripted) as srv, openai_model(srv) as model:
        turn = await model.complete(USER, [STATUS_TOOL])

    assert turn.tool_calls[0].arguments == "not json"


# ---------------------------------------------------------------------------- retryable failures

NAMELESS_TOOL_CALL = {
    "role": "assistant",
    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": None}}],
}


def _completion_json(message: object) -> str:
    """A chat completion body that is valid JSON but carries ``message`` as given."""
    choice = {"index": 0, "finish_reason": "stop", "message": message}
    return json.dumps({"choices": [choice]})


async def test_rate_limit_is_retryable_and_honours_retry_after_seconds() -> None:
    async with FakeOpenAIServer.from_model(answer()) as srv:
        err = await failure(srv, Fault("rate_limit", retry_after=7))

    assert (err.kind, err.retryable) == ("RateLimited", True)
    assert err.retry_after == timedelta(seconds=7)


async def test_rate_limit_prefers_retry_after_ms_over_retry_after() -> None:
    async with FakeOpenAIServer.from_model(answer()) as srv:
        err = await failure(srv, Fault("rate_limit", retry_after=30, retry_after_ms=1500))

    assert err.retry_after is not None
    assert err.retry_after.total_seconds() == pytest.approx(1.5)


async def test_rate_limit_without_retry_headers_leaves_backoff_to_the_retry_policy() -> None:
    async with FakeOpenAIServer.from_model(answer()) as srv:
        err = await failure(srv, Fault("rate_limit"))

    assert (err.kind, err.retryable, err.retry_after) == ("RateLimited", True, None)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_retryable(status: int) -> None:
    async with FakeOpenAIServer.from_model(answer()) as srv:
        err = await failure(srv, Fault("server_error", status=status))

    assert (err.kind, err.retryable, err.retry_after) == ("ModelServerError", True, None)
    assert str(status) in str(err)


async def test_server_error_retry_after_is_honoured() -> None:
    async with FakeOpenAIServer.from_model(answer()) as srv:
        err = await failure(srv, Fault("server_error", status=503, retry_after=4))

    assert err.retry_after == timedelta(seconds=4)


async def test_slow_server_times_out_as_retryable_model_timeout() -> None:
    async with FakeOpenAIServer.from_model(answer()) as srv:
        started = time.monotonic()
        err = await failure(srv, Fault("timeout", delay=30), client_timeout=0.5)
        elapsed = time.monotonic() - started

    assert (err.kind, err.retryable) == ("ModelTimeout", True)
    # The client gave up at its own timeout, not when the server finally answered.
    assert elapsed < 5


async def test_truncated_json_body_is_retryable_response_invalid() -> None:
    async with FakeOpenAIServer.from_model(answer()) as srv:
        err = await failure(srv, Fault("malformed_json"))

    assert (err.kind, err.retryable) == ("ModelResponseInvalid", True)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("<html>502 Bad Gateway</html>", "text/html"),
        (_completion_json(None), "application/json"),
        (_completion_json(NAMELESS_TOOL_CALL), "application/json"),
    ],
    ids=["html-page", "null-message", "nameless-tool-call"],
)
async def test_well_formed_but_wrong_body_is_retryable_response_invalid(
    body: str, content_type: str
) -> None:
    async with FakeOpenAIServer.from_model(answer()) as srv:
        err = await failure(srv, Fault("malformed_json", body=body, content_type=content_type))

    assert (err.kind, err.retryable) == ("ModelResponseInvalid", True)


async def test_unreachable_server_is_retryable_model_unavailable() -> None:
    async with FakeOpenAIServer.from_model(answer()) as srv:
        base_url = srv.base_url
    model = OpenAIModel(model=MODEL, api_key="sk-test", base_url=base_url, timeout=5)
    try:
        with pytest.raises(ModelCallError) as info:
            await model.complete(USER, [])
    finally:
        await model.close()

    assert (info.value.kind, info.value.retryable) == ("ModelUnavailable", True)


async def test_faults_are_consumed_one_per_request_then_the_responder_answers() -> None:
    async with (
        FakeOpenAIServer.from_model(answer()) as srv,
        openai_model(srv, client_timeout=0.5) as model,
    ):
        srv.inject(Fault("rate_limit"), Fault("timeout", delay=30), Fault("server_error"))
        kinds = []
        for _ in range(3):
            with pytest.raises(ModelCallError) as info:
                await model.complete(USER, [])
            kinds.append(info.value.kind)
        turn = await model.complete(USER, [])

    assert kinds == ["RateLimited", "ModelTimeout", "ModelServerError"]
    assert turn.content == "api is healthy"
    assert srv.pending_faults() == 0
    assert len(srv.requests) == 4


# ---------------------------------------------------------------------------- rejected requests


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_not_retryable(status: int) -> None:
    async with FakeOpenAIServer.from_model(answer()) as srv:
        err = await failure(srv, Fault("client_error", status=status))

    assert (err.kind, err.retryable, err.retry_after) == ("ModelRequestRejected", False, None)


async def test_wrong_api_key_is_rejected_without_retry() -> None:
    async with FakeOpenAIServer.from_model(answer(), api_key="sk-right") as srv:
        async with openai_model(srv, api_key="sk-wrong") as model:
            with pytest.raises(ModelCallError) as info:
                await model.complete(USER, [])
        async with openai_model(srv, api_key="sk-right") as model:
            turn = await model.complete(USER, [])

    assert (info.value.kind, info.value.retryable) == ("ModelRequestRejected", False)
    assert "401" in str(info.value)
    assert turn.content == "api is healthy"


# ---------------------------------------------------------------------------- embeddings


async def test_embeddings_are_deterministic_unit_vectors_in_both_encodings() -> None:
    async with (
        FakeOpenAIServer(embedding_dimensions=8) as srv,
        openai.AsyncOpenAI(api_key="sk-test", base_url=srv.base_url, max_retries=0) as client,
    ):
        # The SDK asks for base64 by default and decodes it; ask for floats explicitly too.
        default = await client.embeddings.create(
            model="text-embedding-3-small", input=["api down", "db slow"]
        )
        floats = await client.embeddings.create(
            model="text-embedding-3-small", input="api down", encoding_format="float"
        )
        sized = await client.embeddings.create(
            model="text-embedding-3-small", input="api down", dimensions=3
        )

    assert [d.index for d in default.data] == [0, 1]
    assert default.data[0].embedding == fake_embedding("api down", 8)
    assert default.data[1].embedding == fake_embedding("db slow", 8)
    assert floats.data[0].embedding == default.data[0].embedding
    assert sum(v * v for v in default.data[0].embedding) == pytest.approx(1.0, rel=1e-5)
    assert len(sized.data[0].embedding) == 3
    assert default.model == "text-embedding-3-small"
    assert default.usage.prompt_tokens == default.usage.total_tokens > 0
    assert srv.embedding_requests[0]["encoding_format"] == "base64"
    assert srv.requests == []


async def test_embedding_faults_are_queued_separately_from_chat_faults() -> None:
    async with (
        FakeOpenAIServer(embedding_dimensions=4) as srv,
        openai.AsyncOpenAI(api_key="sk-test", base_url=srv.base_url, max_retries=0) as client,
    ):
        srv.inject(Fault("rate_limit", retry_after=2), endpoint="embeddings")
        assert srv.pending_faults("chat") == 0
        with pytest.raises(openai.RateLimitError):
            await client.embeddings.create(model="text-embedding-3-small", input="x")
        ok = await client.embeddings.create(model="text-embedding-3-small", input="x")

    assert ok.data[0].embedding == fake_embedding("x", 4)


# ---------------------------------------------------------------------------- the fake itself


def test_fault_rejects_settings_that_contradict_its_kind() -> None:
    with pytest.raises(ValueError, match="5xx"):
        Fault("server_error", status=404)
    with pytest.raises(ValueError, match="429"):
        Fault("rate_limit", status=503)
    with pytest.raises(ValueError, match="retry_after"):
        Fault("client_error", retry_after=3)
    with pytest.raises(ValueError, match="status"):
        Fault("malformed_json", status=500)


def test_tool_call_faults_cannot_be_queued_for_embeddings() -> None:
    srv = FakeOpenAIServer()
    with pytest.raises(ValueError, match="chat completions"):
        srv.inject(Fault("unknown_tool"), endpoint="embeddings")


class _Sink:
    """A TurnSink that keeps what it is told, in order."""

    def __init__(self) -> None:
        self.said: list[tuple[str, str]] = []

    def begin(self, model: str) -> None:
        self.said.append(("begin", model))

    def text(self, delta: str) -> None:
        self.said.append(("text", delta))

    def tool_call(self, name: str) -> None:
        self.said.append(("tool", name))


async def test_a_streamed_answer_is_the_same_turn_and_its_text_comes_in_order() -> None:
    """``stream=True`` with usage: the chunks (text piece by piece, a tool call's arguments in
    pieces) assemble into the turn ``complete`` returns, and the sink hears the text in order."""
    turn = ModelTurn(content="The api is healthy: error rate 0.1%, p95 45 ms.",
                     tool_calls=[call("service_status", call_id="call_7", service="api",
                                      detail="full, with every check listed")],
                     usage=Usage(input_tokens=31, output_tokens=12))
    async with (
        FakeOpenAIServer.from_model(ScriptedModel([turn])) as srv,
        openai_model(srv) as model,
    ):
        whole = await model.complete(USER, [STATUS_TOOL])
        sink = _Sink()
        streamed = await model.stream(USER, [STATUS_TOOL], sink)
    assert streamed == whole
    assert (streamed.finish_reason, streamed.usage) == ("tool_calls", turn.usage)
    assert json.loads(streamed.tool_calls[0].arguments) == {
        "service": "api", "detail": "full, with every check listed"}
    assert sink.said[0] == ("begin", f"openai:{MODEL}")
    texts = [t for kind, t in sink.said if kind == "text"]
    assert len(texts) > 5 and "".join(texts) == turn.content
    assert sink.said[-1] == ("tool", "service_status")
    body = srv.requests[-1]
    assert (body["stream"], body["stream_options"]) == (True, {"include_usage": True})


async def test_a_stream_that_breaks_off_or_sends_garbage_is_a_retryable_error() -> None:
    async with (
        FakeOpenAIServer.from_model(answer("one two three four five six")) as srv,
        openai_model(srv) as model,
    ):
        srv.inject(Fault("broken_stream", chunks=3))
        sink = _Sink()
        with pytest.raises(ModelCallError) as broken:
            await model.stream(USER, [], sink)
        assert (broken.value.kind, broken.value.retryable) == ("ModelStreamBroken", True)
        assert "after 3 chunks" in str(broken.value)
        assert ("text", "one") in sink.said  # what came before the break reached the sink
        srv.inject(Fault("malformed_json"))
        with pytest.raises(ModelCallError) as garbled:
            await model.stream(USER, [], _Sink())
        assert (garbled.value.kind, garbled.value.retryable) == ("ModelResponseInvalid", True)
        srv.inject(Fault("rate_limit", retry_after=2))
        with pytest.raises(ModelCallError) as limited:
            await model.stream(USER, [], _Sink())
        assert (limited.value.kind, limited.value.retry_after) == (
            "RateLimited", timedelta(seconds=2))


REASONER = "gpt-5-mini"


@asynccontextmanager
async def responses_model(srv: FakeOpenAIServer) -> AsyncIterator[OpenAIResponsesModel]:
    model = OpenAIResponsesModel(model=REASONER, api_key="sk-test", base_url=srv.base_url,
                                 timeout=10.0)
    try:
        yield model
    finally:
        await model.close()


async def test_a_streamed_response_is_the_same_turn_with_its_text_and_call_name_in_order(
) -> None:
    """Responses ``stream=True``: the text deltas reach the sink in order, the function call's
    name when its item is added, and the turn (usage, reasoning item, call) is the one
    ``complete`` maps from the same response."""
    turn = ModelTurn(content="The api is healthy: error rate 0.1%, p95 45 ms.",
                     tool_calls=[call("service_status", call_id="call_7", service="api")],
                     usage=Usage(input_tokens=31, output_tokens=12))
    async with (
        FakeOpenAIServer.from_model(ScriptedModel([turn]),
                                    reasoning_models=[REASONER]) as srv,
        responses_model(srv) as model,
    ):
        whole = await model.complete(USER, [STATUS_TOOL])
        sink = _Sink()
        streamed = await model.stream(USER, [STATUS_TOOL], sink)
    # Each response carries a reasoning item of its own; all else is the same.
    assert streamed.model_copy(update={"reasoning": []}) == whole.model_copy(
        update={"reasoning": []})
    assert (streamed.finish_reason, streamed.usage) == (
        "tool_calls", Usage(input_tokens=31, output_tokens=12 + 8, reasoning_tokens=8))
    assert len(streamed.reasoning) == 1 and streamed.reasoning[0].summary
    assert json.loads(streamed.tool_calls[0].arguments) == {"service": "api"}
    assert sink.said[0] == ("begin", f"openai:{REASONER}")
    texts = [t for kind, t in sink.said if kind == "text"]
    assert len(texts) > 5 and "".join(texts) == turn.content
    assert sink.said[-1] == ("tool", "service_status")
    assert srv.response_requests[-1]["stream"] is True


def _event(**fields: object) -> str:
    return json.dumps({"sequence_number": 0, **fields})


async def test_a_response_stream_that_breaks_fails_or_stops_short_is_a_retryable_error(
) -> None:
    failed = {"id": "resp_1", "object": "response", "created_at": 0, "status": "failed",
              "model": REASONER, "output": [], "usage": None, "incomplete_details": None,
              "error": {"code": "server_error", "message": "The model fell over."}}
    async with (
        FakeOpenAIServer.from_model(answer("one two three four five six")) as srv,
        responses_model(srv) as model,
    ):
        async def fails(*faults: Fault) -> tuple[ModelCallError, _Sink]:
            srv.inject(*faults, endpoint="responses")
            sink = _Sink()
            with pytest.raises(ModelCallError) as info:
                await model.stream(USER, [], sink)
            assert info.value.retryable, info.value
            return info.value, sink

        broken, sink = await fails(Fault("broken_stream", chunks=7))
        assert broken.kind == "ModelStreamBroken" and "after 7 chunks" in str(broken)
        assert ("text", "one") in sink.said  # what came before the break reached the sink
        garbled, _ = await fails(Fault("malformed_json"))
        assert garbled.kind == "ModelResponseInvalid"
        short, _ = await fails(Fault("malformed_json", body=_event(
            type="response.in_progress", response={**failed, "status": "in_progress"})))
        assert short.kind == "ModelStreamBroken" and "without a final response" in str(short)
        gave_up, _ = await fails(Fault("malformed_json", body=_event(
            type="response.failed", response=failed)))
        assert gave_up.kind == "ModelServerError" and "The model fell over." in str(gave_up)
        errored, _ = await fails(Fault("malformed_json", body=_event(
            type="error", code="server_error", message="Stream lost.", param=None)))
        assert errored.kind == "ModelServerError" and "Stream lost." in str(errored)
        limited, _ = await fails(Fault("rate_limit", retry_after=2))
        assert (limited.kind, limited.retry_after) == ("RateLimited", timedelta(seconds=2))
        # Each fault was one request; the next one streams the whole answer.
        streamed = await model.stream(USER, [], _Sink())
    assert streamed.content == "one two three four five six"


async def test_module_runs_standalone_with_the_echo_responder() -> None:
    """``python -m stead.testing.openai_server`` serves, and imports cleanly (``-W error``)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        "-m",
        "stead.testing.openai_server",
        "--port",
        "0",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
        match = re.search(r"http://127\.0\.0\.1:\d+/v1", line)
        assert match, line
        async with openai.AsyncOpenAI(
            api_key="sk-test", base_url=match.group(0), max_retries=0
        ) as client:
            resp = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello"}]
            )
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, stderr = await proc.communicate()

    assert resp.choices[0].message.content == "echo: hello"
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    assert b"Warning" not in stderr, stderr.decode()

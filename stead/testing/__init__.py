"""Fakes for testing stead and the agents built on it; public code that tests and users share.

- :mod:`stead.testing.openai_server` — :class:`~stead.testing.openai_server.FakeOpenAIServer`, a
  local OpenAI-compatible HTTP server (chat completions and the Responses API) with injectable
  faults (rate limits, 5xx, timeouts, malformed bodies, bad tool calls), so the real ``openai``
  SDK path is tested end to end.
- :mod:`stead.testing.pinecone_server` — ``FakePineconeServer``, the subset of Pinecone's
  data-plane REST API that stead uses (upsert, query, delete, stats, fetch, list), with
  Pinecone's filter language and injectable faults, for the real ``pinecone`` SDK.
- :mod:`stead.testing.otlp_server` — ``FakeOTLPServer``, an OTLP/HTTP receiver (metrics and
  traces, protobuf or JSON) that decodes what a worker exports.
- :mod:`stead.testing.oidc_provider` — ``FakeOidcProvider``, an OpenID Connect identity
  provider on loopback (discovery, JWKS, RSA and EC keys, rotation, outages) that issues
  tokens with chosen claims, for the HTTP API's single sign-on.
- :mod:`stead.testing.tls_proxy` — a TLS-terminating proxy (client certificates, ALPN h2) in
  front of a plaintext Temporal server, with test certificates.
- :mod:`stead.testing.mcp_servers` — real MCP servers (stdio and streamable HTTP) written with
  the ``mcp`` SDK: a well-behaved one, one that crashes mid-call, one with malformed results,
  one whose tool list changes.
- :mod:`stead.testing.flaky_api` — an order service (FastAPI) with faults on request and an
  ``Idempotency-Key`` store, for OpenAPI tools.
- :mod:`stead.testing.gated_model` — ``GatedModel``, a model whose answer to each run waits
  until the test opens that run's gate: runs held in flight on cue (admission tests).
- :mod:`stead.testing.llama_server` — not a fake: ``LlamaServer`` runs llama.cpp's
  ``llama-server`` with a small GGUF model on loopback (``make test-real-model``).

The package imports nothing on purpose: ``python -m stead.testing.openai_server`` would otherwise
import the module twice (once via this package) and Python warns about that.
"""

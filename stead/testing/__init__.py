"""Fakes for testing stead and the agents built on it; public code that tests and users share.

- :mod:`stead.testing.openai_server` — :class:`~stead.testing.openai_server.FakeOpenAIServer`, a
  local OpenAI-compatible HTTP server with injectable faults (rate limits, 5xx, timeouts,
  malformed bodies, bad tool calls), so the real ``openai`` SDK path is tested end to end.
- :mod:`stead.testing.pinecone_server` — ``FakePineconeServer``, the subset of Pinecone's
  data-plane REST API that stead uses (upsert, query, delete, stats, fetch, list), with
  Pinecone's filter language and injectable faults, for the real ``pinecone`` SDK.

The package imports nothing on purpose: ``python -m stead.testing.openai_server`` would otherwise
import the module twice (once via this package) and Python warns about that.
"""

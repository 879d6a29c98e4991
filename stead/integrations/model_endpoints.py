"""The model chains a worker's agents declare: resolved and checked at worker start, and the
clients that call each pinned model.

    endpoints = ModelEndpoints.from_catalog(catalog, settings)   # SpecError listing problems
    plan_chain = endpoints.chain("ops")       # what run.start pins in the run's plan
    client = endpoints.client(request.endpoint)   # in the model activity

A chain comes from ``Agent(models=[...])``, or from ``STEAD_AGENT_MODELS``, which replaces it.
Resolving fills in what the worker's settings say for what the declaration leaves open (the
base URL, timeout and attempts; whether the model reasons), so the run's plan pins concrete
values. Keys stay references: the model activity reads the variable or secret the pinned
endpoint names when it builds the endpoint's client.

Checked at start, each problem named with the agent, the model's place in the chain and the
field: a base URL that is not http(s), a key reference that is not set (or two of them), a
name used twice in one chain, ``reasoning_effort`` on a model that does not reason, and with
``strict_tools`` every agent tool whose schema strict mode refuses. A temperature declared for
a reasoning model is logged and not sent (``stead.integrations.openai_params``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from stead import errors
from stead.authoring.agent import AgentCatalog
from stead.contracts.models import OPENAI_BASE_URL, ModelEndpoint, ToolPlan
from stead.errors import SpecError
from stead.integrations.llm import ModelCallError, ModelClient, OpenAIModel
from stead.integrations.openai_params import is_reasoning, strict_schema_problems
from stead.integrations.openai_responses import OpenAIResponsesModel
from stead.security.secrets import Secrets
from stead.settings import ModelSettings, Settings

log = logging.getLogger("stead.models")


def resolve(endpoint: ModelEndpoint, models: ModelSettings) -> ModelEndpoint:
    """``endpoint`` with what the worker's settings say for what it leaves open."""
    return endpoint.model_copy(update={
        "base_url": (endpoint.base_url or models.base_url or OPENAI_BASE_URL).rstrip("/"),
        "timeout_seconds": endpoint.timeout_seconds or models.timeout_seconds,
        "max_attempts": endpoint.max_attempts or models.max_attempts,
        "reasoning": is_reasoning(endpoint)})


class ModelEndpoints:
    """The resolved chains by agent, and one client per endpoint a run pinned (reused)."""

    def __init__(self, chains: Mapping[str, Sequence[ModelEndpoint]], *, models: ModelSettings,
                 secrets: Secrets, environ: Mapping[str, str] | None = None) -> None:
        """Unchecked: use :meth:`from_catalog`."""
        self._chains = {a: list(c) for a, c in chains.items() if c}
        self._models = models
        self._secrets = secrets
        self._environ = os.environ if environ is None else environ
        self._clients: dict[str, ModelClient] = {}

    @classmethod
    def from_catalog(cls, catalog: AgentCatalog, settings: Settings, *,
                     secrets: Secrets | None = None,
                     environ: Mapping[str, str] | None = None) -> ModelEndpoints:
        """The catalog's chains (``STEAD_AGENT_MODELS`` replacing an agent's own), resolved;
        raises ``SpecError`` listing every problem."""
        secrets = secrets if secrets is not None else Secrets.from_settings(settings.security)
        env = os.environ if environ is None else environ
        problems: list[str] = []
        declared = {a.name: (list(a.models), f"agent {a.name!r}") for a in catalog.agents()}
        for agent, chain in settings.models.agent_models.items():
            if agent not in catalog:
                problems.append(f"STEAD_AGENT_MODELS names agent {agent!r}, which this worker "
                                f"does not serve (it serves: {', '.join(catalog.names())})")
                continue
            declared[agent] = (chain, f"agent {agent!r} (STEAD_AGENT_MODELS)")
        chains: dict[str, list[ModelEndpoint]] = {}
        for agent, (chain, who) in declared.items():
            resolved = [resolve(ep, settings.models) for ep in chain]
            plans = [t.plan() for t in catalog[agent].tools]
            for i, ep in enumerate(resolved):
                where = f"{who}, models[{i}] ({ep.name})"
                problems.extend(f"{where}: {p}" for p in
                                _problems(ep, plans, settings.models, secrets, env))
                if ep.temperature is not None and ep.reasoning:
                    log.warning("%s: %s is a reasoning model; its temperature (%s) is not sent "
                                "(reasoning models refuse it)", where, ep.model, ep.temperature)
            seen: set[str] = set()
            for ep in resolved:
                if ep.name in seen:
                    problems.append(f"{who}: two models of the chain are named {ep.name!r}; "
                                    f"give each its own name (the ledger tells them apart by it)")
                seen.add(ep.name)
            if resolved:
                chains[agent] = resolved
        if problems:
            raise SpecError("invalid model configuration:\n  - " + "\n  - ".join(problems))
        return cls(chains, models=settings.models, secrets=secrets, environ=env)

    def chain(self, agent: str) -> list[ModelEndpoint]:
        """The agent's resolved chain; empty when it declares none."""
        return list(self._chains.get(agent, ()))

    def key_values(self) -> list[tuple[str, str]]:
        """``(variable, key)`` of every key read from a plain environment variable, for the
        redactor (secrets and ``OPENAI_API_KEY`` are known to it already)."""
        out: dict[str, str] = {}
        for chain in self._chains.values():
            for ep in chain:
                value = self._environ.get(ep.api_key_env or "")
                if ep.api_key_env and value:
                    out[ep.api_key_env.lower()] = value
        return sorted(out.items())

    def client(self, endpoint: ModelEndpoint) -> ModelClient:
        """The client for a pinned endpoint (made once per distinct endpoint). Raises
        ``ModelCallError`` (non-retryable) when this worker lacks the key it names."""
        cache = endpoint.model_dump_json()
        found = self._clients.get(cache)
        if found is not None:
            return found
        key = self._key(endpoint)
        ep = endpoint if endpoint.base_url else resolve(endpoint, self._models)
        kind = OpenAIResponsesModel if ep.api == "responses" else OpenAIModel
        made: ModelClient = kind(model=ep.model, api_key=key, base_url=ep.base_url,
                                 timeout=ep.timeout_seconds or self._models.timeout_seconds,
                                 endpoint=ep)
        self._clients[cache] = made
        return made

    async def close(self) -> None:
        for c in self._clients.values():
            close = getattr(c, "close", None)
            if close is not None:
                await close()
        self._clients.clear()

    def _key(self, ep: ModelEndpoint) -> str:
        if ep.api_key_env:
            value = self._environ.get(ep.api_key_env)
            where = f"environment variable {ep.api_key_env}"
        elif ep.api_key_secret:
            value = dict(self._secrets.items()).get(ep.api_key_secret)
            where = f"secret {ep.api_key_secret!r}"
        else:
            value = (self._models.api_key.get_secret_value()
                     if self._models.api_key is not None else None)
            where = "OPENAI_API_KEY"
        if not value:
            raise ModelCallError(f"model {ep.name!r} needs its API key from {where}, which this "
                                 f"worker does not have", kind=errors.MODEL_NOT_CONFIGURED,
                                 retryable=False)
        return value


def _problems(ep: ModelEndpoint, tools: Sequence[ToolPlan], models: ModelSettings,
              secrets: Secrets, env: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    url = urlsplit(ep.base_url or "")
    if url.scheme not in ("http", "https") or not url.hostname:
        out.append(f"base_url {ep.base_url!r} is not an http(s) URL "
                   f"(e.g. http://127.0.0.1:8080/v1)")
    if ep.api_key_env and ep.api_key_secret:
        out.append("declare api_key_env or api_key_secret, not both")
    elif ep.api_key_env:
        if not env.get(ep.api_key_env):
            out.append(f"api_key_env: environment variable {ep.api_key_env} is not set")
    elif ep.api_key_secret:
        if ep.api_key_secret not in secrets.names():
            out.append(f"api_key_secret: no secret {ep.api_key_secret!r} "
                       f"(set STEAD_SECRET_{ep.api_key_secret.upper()})")
    elif models.api_key is None:
        out.append("no API key: set OPENAI_API_KEY, or declare api_key_env or api_key_secret "
                   "(a local server that checks none takes any value)")
    if ep.reasoning_effort is not None and not ep.reasoning:
        out.append(f"reasoning_effort: {ep.model!r} is not a reasoning model, and OpenAI "
                   f"refuses the parameter for others (declare reasoning=true if it is one)")
    if ep.strict_tools:
        for t in tools:
            out.extend(f"strict_tools: tool {t.name!r}: {p}"
                       for p in strict_schema_problems(t.parameters))
    return out

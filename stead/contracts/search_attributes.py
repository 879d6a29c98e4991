"""stead's Temporal search attributes, named once (the embedded and compose stacks register
them; workflows set them; clients, logs and the CLI read them)."""

from __future__ import annotations

from typing import Final

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

AGENT_KEY: Final = SearchAttributeKey.for_keyword("SteadAgent")
TENANT_KEY: Final = SearchAttributeKey.for_keyword("SteadTenant")
AWAITING_KEY: Final = SearchAttributeKey.for_bool("SteadAwaitingApproval")
RISK_KEY: Final = SearchAttributeKey.for_float("SteadRisk")


def run_attributes(agent: str, tenant: str) -> TypedSearchAttributes:
    """The attributes a run or conversation starts with, so the Web UI lists it at once."""
    return TypedSearchAttributes([SearchAttributePair(AGENT_KEY, agent),
                                  SearchAttributePair(TENANT_KEY, tenant)])


__all__ = ["AGENT_KEY", "AWAITING_KEY", "RISK_KEY", "TENANT_KEY", "run_attributes"]

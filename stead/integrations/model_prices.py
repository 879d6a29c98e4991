"""Model prices pinned into a run's plan, and the budget declarations checked at worker start.

    plan = priced(plan, settings.models.prices)      # run.start: the prices the run is charged
    check_budgets(catalog, endpoints, settings)      # SpecError naming agent, field and reason

A run is charged at the prices it started with: ``run.start`` copies the price of each chain
model that declares none (``ModelEndpoint.price``) and of the run's single model
(``AgentPlan.price``) and of each model the policy's routing may choose
(``AgentPlan.routed_prices``) from ``STEAD_MODEL_PRICES`` (longest-prefix match, as ``stead
metrics`` prices). A price table changed later charges only runs started later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from stead.authoring.agent import AgentCatalog
from stead.contracts.budget import Price
from stead.contracts.models import AgentPlan, ModelEndpoint
from stead.contracts.policy import Policy
from stead.errors import SpecError
from stead.evals.metrics import price_for
from stead.settings import ModelPrice

__all__ = ["check_budgets", "price_of", "priced", "routed_models"]


def price_of(model: str, prices: Mapping[str, ModelPrice]) -> Price | None:
    """``model``'s price from the settings' table (None: not listed, unpriced)."""
    found = price_for(model, prices)
    if found is None:
        return None
    return Price(input_usd_per_mtok=found.input, output_usd_per_mtok=found.output)


def _endpoint_price(ep: ModelEndpoint, prices: Mapping[str, ModelPrice]) -> Price | None:
    return ep.price if ep.price is not None else price_of(ep.model, prices)


def routed_models(policy: Policy | None) -> list[str]:
    """The model settings a policy's routing may run a request with (``action: model``),
    each once, in rule order."""
    if policy is None:
        return []
    return list(dict.fromkeys(r.model for r in policy.routing
                              if r.action == "model" and r.model))


def priced(plan: AgentPlan, prices: Mapping[str, ModelPrice]) -> AgentPlan:
    """``plan`` with every price the run will be charged at filled in: its chain's, its
    single model's and those of the models its policy's routing may choose."""
    models = [ep if ep.price is not None or (p := price_of(ep.model, prices)) is None
              else ep.model_copy(update={"price": p}) for ep in plan.models]
    price = None if plan.models else price_of(plan.model, prices)
    routed = {m: p for m in routed_models(plan.policy)
              if (p := price_of(m, prices)) is not None}
    if models == plan.models and price is None and not routed:
        return plan
    return plan.model_copy(update={"models": models, "price": price,
                                   "routed_prices": routed})


def check_budgets(catalog: AgentCatalog, chains: Mapping[str, Sequence[ModelEndpoint]], *,
                  prices: Mapping[str, ModelPrice], single_model: str | None,
                  priced: bool = True) -> None:
    """Raise ``SpecError`` listing every agent whose policy budget cannot work: a
    ``cheaper_model`` that is not in the agent's chain, or unpriced while ``max_usd`` is set,
    or ``max_usd`` on a model nobody priced (it would never count a cent). ``chains``: each
    agent's resolved chain (empty or missing: it has none, and ``single_model``, the
    worker's configured model, serves it; None: its offline model, which is free).
    ``priced`` False: only the chain is checked, not prices (a worker whose one given model
    serves every agent, as evaluations and counterfactuals run, pins no chain)."""
    problems: list[str] = []
    for agent in catalog.agents():
        rules = agent.policy.budget if agent.policy is not None else None
        if rules is None:
            continue
        where = f"agent {agent.name!r}, policy {agent.policy.ref if agent.policy else ''} budget"
        chain = list(chains.get(agent.name, ()))
        names = [ep.name for ep in chain]
        if rules.on_exceed == "cheaper_model":
            if not rules.cheaper_model:
                problems.append(f"{where}.cheaper_model: on_exceed is cheaper_model but no "
                                f"cheaper_model is named (one of the agent's chain: "
                                f"{', '.join(names) or 'it has no chain'})")
            elif rules.cheaper_model not in names:
                problems.append(f"{where}.cheaper_model: {rules.cheaper_model!r} is not a model "
                                f"of the agent's chain ({', '.join(names) or 'it has none'})")
            elif rules.max_usd is not None and priced:
                ep = chain[names.index(rules.cheaper_model)]
                if _endpoint_price(ep, prices) is None:
                    problems.append(f"{where}.cheaper_model: {ep.name} has no price "
                                    f"(ModelEndpoint.price or STEAD_MODEL_PRICES) while "
                                    f"max_usd is set; an unpriced model would spend no money")
        if rules.max_usd is not None and priced:
            if chain:
                unpriced = [ep.name for ep in chain if _endpoint_price(ep, prices) is None]
                if unpriced:
                    problems.append(f"{where}.max_usd: the chain's {', '.join(unpriced)} "
                                    f"ha{'s' if len(unpriced) == 1 else 've'} no price "
                                    f"(ModelEndpoint.price or STEAD_MODEL_PRICES); its calls "
                                    f"would cost nothing against max_usd")
            elif single_model is not None and price_of(single_model, prices) is None:
                # (An agent's offline model is free: nothing to price.)
                problems.append(f"{where}.max_usd: model {single_model!r} has no price in "
                                f"STEAD_MODEL_PRICES; its calls would cost nothing against "
                                f"max_usd")
        if rules.max_usd is not None and priced:
            unpriced = [m for m in routed_models(agent.policy) if price_of(m, prices) is None]
            if unpriced:
                problems.append(f"{where}.max_usd: the routing's model{'s' * (len(unpriced) > 1)}"
                                f" {', '.join(unpriced)} ha{'s' if len(unpriced) == 1 else 've'}"
                                f" no price in STEAD_MODEL_PRICES; a routed run's calls would "
                                f"cost nothing against max_usd")
    if problems:
        raise SpecError("invalid budget configuration:\n  - " + "\n  - ".join(problems))

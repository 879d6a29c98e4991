"""Budget arithmetic and its declarations: narrowing, limits, estimates, settlement, policy."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stead.contracts.budget import Budget, BudgetRules, Price, Spend
from stead.contracts.models import RunRequest, Usage
from stead.contracts.policy import parse_policy
from stead.guardrails import estimate, settle

MINI = Price(input_usd_per_mtok=0.15, output_usd_per_mtok=0.60)


def test_a_request_budget_can_only_lower_the_policy_limits() -> None:
    policy = BudgetRules(max_usd=1.0, max_model_calls=10)
    got = policy.narrow(Budget(max_usd=5.0, max_tokens=1000, max_model_calls=3))
    assert got == Budget(max_usd=1.0, max_tokens=1000, max_model_calls=3)
    assert policy.narrow(None) == Budget(max_usd=1.0, max_model_calls=10)
    assert Budget().unlimited and not got.unlimited


def test_exceeded_names_every_limit_passed_and_only_those() -> None:
    b = Budget(max_usd=0.01, max_tokens=100, max_model_calls=2)
    assert b.exceeded(Spend(usd=0.01, input_tokens=60, output_tokens=40, model_calls=2)) == []
    assert b.exceeded(Spend(usd=0.02, input_tokens=61, output_tokens=40, model_calls=3)) == [
        "max_usd", "max_tokens", "max_model_calls"]
    assert Budget().exceeded(Spend(usd=1e9, model_calls=10**6)) == []


def test_an_estimate_takes_the_request_by_bytes_and_a_full_length_answer() -> None:
    guess = estimate(4001, max_output_tokens=500, price=MINI)
    assert (guess.input_tokens, guess.output_tokens, guess.model_calls) == (1001, 500, 1)
    assert guess.usd == pytest.approx((1001 * 0.15 + 500 * 0.60) / 1e6)
    assert estimate(10, max_output_tokens=5, price=None).usd == 0.0


def test_settlement_charges_the_reported_usage_at_the_pinned_price() -> None:
    spent = settle(Usage(input_tokens=2_000_000, output_tokens=1_000_000), MINI)
    assert spent.usd == pytest.approx(0.30 + 0.60)
    total = spent + settle(Usage(input_tokens=1, output_tokens=1), None)
    assert (total.tokens, total.model_calls) == (3_000_002, 2)


def test_bad_budgets_are_refused_with_the_field() -> None:
    with pytest.raises(ValidationError, match="max_usd"):
        RunRequest(agent="ops", input="x", budget={"max_usd": -1})
    with pytest.raises(ValidationError, match="max_model_calls"):
        Budget(max_model_calls=0)
    with pytest.raises(ValidationError, match="on_exceed"):
        BudgetRules(max_usd=1, on_exceed="shrug")  # type: ignore[arg-type]


def test_a_policy_declares_its_budget_and_old_payloads_stay_byte_identical() -> None:
    p = parse_policy("id: p\nversion: 1\nbudget:\n  max_usd: 0.5\n  on_exceed: ask\n")
    assert p.budget == BudgetRules(max_usd=0.5, on_exceed="ask")
    bare = parse_policy("id: p\nversion: 1\n")
    assert "budget" not in bare.model_dump_json()
    assert "budget" not in RunRequest(agent="ops", input="x").model_dump_json()

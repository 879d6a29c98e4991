"""Custom evaluators used by the reference suites (``function: "checks.py:<name>"``).

Each receives the case's :class:`~stead.evals.expect.CaseOutcome` and returns a verdict; they
look at what the run did (its result and ledger trail), not at log lines.
"""

from __future__ import annotations

import re

from stead.evals.expect import CaseOutcome, Verdict


def ticket_in_answer_exists(outcome: CaseOutcome) -> Verdict:
    """The ticket id the answer quotes is one the run's create_ticket call really returned."""
    answer = outcome.answer or ""
    quoted = re.findall(r"\bOPS-\d+\b", answer)
    if not quoted:
        return Verdict(passed=False, message=f"the answer quotes no ticket id: {answer[:120]!r}")
    returned = {str((row.result or {}).get("ticket_id"))
                for row in outcome.trail.tool_calls
                if row.tool == "create_ticket" and row.status == "completed"}
    missing = [t for t in quoted if t not in returned]
    if missing:
        return Verdict(passed=False, message=f"answer quotes {', '.join(missing)}, but "
                                             f"create_ticket returned "
                                             f"{', '.join(sorted(returned)) or 'nothing'}")
    return Verdict(passed=True, message=f"{', '.join(quoted)} was created by this run")


def refund_amount_in_answer(outcome: CaseOutcome) -> Verdict:
    """The amount the answer says was refunded is what issue_refund paid out."""
    answer = outcome.answer or ""
    m = re.search(r"Refunded (\d+(?:\.\d+)?) ", answer)
    paid = [str((row.result or {}).get("amount"))
            for row in outcome.trail.tool_calls
            if row.tool == "issue_refund" and row.status == "completed"]
    if m is None:
        return Verdict(passed=False, message=f"no refunded amount in {answer[:120]!r}")
    if m.group(1) not in paid:
        return Verdict(passed=False, message=f"answer says {m.group(1)}, issue_refund paid "
                                             f"{', '.join(paid) or 'nothing'}")
    return Verdict(passed=True)

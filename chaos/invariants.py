"""What must hold after every chaos run, checked from the outside world, the ledger and
Temporal — never from what the workers say about themselves.

    evidence = await collect(records, world=world, ledger=ledger, tools=tool_facts(catalog))
    verdict = check(evidence)
    verdict.ok        # no lost run, no duplicate, no silent re-run, no gap, no broken chain

- **lost**: a run without a ``RunResult`` (still running at the deadline, or the workflow
  failed/terminated); every other status — completed, failed, denied, refused, escalated —
  is a deliberate end.
- **duplicate side effects**: more than one effect of one kind for one run (the world counts
  effects as the providers saw them; one order reserves, charges and ships once).
- **silent re-runs**: a non-idempotent tool body entered again after its effect happened, or
  (no reconcile hook) after an attempt whose outcome nobody knows.
- **unknown outcomes left unresolved**: a non-idempotent call whose attempt was lost and that
  was neither reconciled nor escalated.
- **ledger gaps**: a tool attempt the world saw but the ledger did not record, an effect with
  no ledger row, a tool call still ``running``/``open`` after its run ended, a run row missing
  or disagreeing with the run's result, a model turn without a recorded call.
- **chain breaks**: ``Ledger.verify_chain`` problems.
- **off its build** (rollout phase, from Temporal's history): a run pinned to a build with a
  workflow task completed by another, a run started after a promotion that ran on the old
  build, a build that never drained once its runs ended.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from chaos.world import ChaosWorld, Effect, Invocation
from stead.authoring.agent import AgentCatalog
from stead.contracts.models import RunResult, ToolAttemptRow, ToolCallRow, Trail
from stead.errors import TOOL_OUTCOME_UNKNOWN
from stead.storage.ledger import Ledger


@dataclass
class RunRecord:
    """One run the harness started, and what became of it."""

    workflow_id: str
    phase: str
    """Which part of the suite started it (``kills``, ``temporal``, ``model``, ...)."""
    scenario: str
    """What was done to it, e.g. ``failpoint:charge_card:after`` or ``approval:reject``."""
    started_at: float
    ended_at: float | None = None
    result: RunResult | None = None
    lost_reason: str | None = None
    """Why there is no result: timed out waiting, workflow failed, ..."""
    versioning: str = ""
    """Rollout phase: how the run broke its build's promise (a pinned run that left its
    build, a run started after a promotion not on the new build, a build that never
    drained); empty when it kept it, or was never versioned."""

    @property
    def seconds(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at

    @property
    def outcome(self) -> str:
        return self.result.status if self.result is not None else "lost"


@dataclass(frozen=True)
class ToolFacts:
    """What a tool declared, which decides what counts as a re-run."""

    idempotent: bool
    reconcile: bool


def tool_facts(catalog: AgentCatalog) -> dict[str, ToolFacts]:
    return {t.name: ToolFacts(idempotent=t.idempotent, reconcile=t.reconcile is not None)
            for t in catalog.tools()}


@dataclass
class Evidence:
    """Everything the checks read, gathered once after the runs ended."""

    records: list[RunRecord]
    effects: list[Effect]
    invocations: list[Invocation]
    trails: dict[str, Trail]
    chains: dict[str, list[str]]
    tools: dict[str, ToolFacts]


@dataclass(frozen=True)
class Finding:
    workflow_id: str
    detail: str


@dataclass
class Verdict:
    """The checks' findings; each list empty when its invariant holds."""

    lost: list[Finding] = field(default_factory=list)
    duplicates: list[Finding] = field(default_factory=list)
    duplicate_effects: int = 0
    """Extra effects beyond the first, summed (a run that charged three times counts 2)."""
    silent_reruns: list[Finding] = field(default_factory=list)
    unresolved_unknown: list[Finding] = field(default_factory=list)
    ledger_gaps: list[Finding] = field(default_factory=list)
    chain_breaks: list[Finding] = field(default_factory=list)
    versioning: list[Finding] = field(default_factory=list)
    """Runs that left the build they were pinned to, or missed a promoted one (rollout)."""
    phase_checks: list[Finding] = field(default_factory=list)
    """Findings of checks a phase adds for its own feature (``chaos.netfaults.EXTRA_CHECKS``)."""
    statuses: Counter[str] = field(default_factory=Counter)
    reconciled: int = 0
    """Non-idempotent calls whose lost attempt was answered by the reconcile hook."""
    escalated_unknown: int = 0
    """Non-idempotent calls with a lost attempt that the run escalated to a human."""

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.silent_reruns
                    or self.unresolved_unknown or self.ledger_gaps or self.chain_breaks
                    or self.versioning or self.phase_checks)

    def problems(self) -> list[tuple[str, Finding]]:
        return [*(("lost", f) for f in self.lost),
                *(("duplicate", f) for f in self.duplicates),
                *(("silent re-run", f) for f in self.silent_reruns),
                *(("unknown outcome unresolved", f) for f in self.unresolved_unknown),
                *(("ledger gap", f) for f in self.ledger_gaps),
                *(("chain break", f) for f in self.chain_breaks),
                *(("off its build", f) for f in self.versioning),
                *(("phase check", f) for f in self.phase_checks)]


async def collect(records: Sequence[RunRecord], *, world: ChaosWorld, ledger: Ledger,
                  tools: dict[str, ToolFacts]) -> Evidence:
    """Read the world, and the ledger trail and chain of every run."""
    trails: dict[str, Trail] = {}
    chains: dict[str, list[str]] = {}
    for r in records:
        trails[r.workflow_id] = await ledger.trail(r.workflow_id)
        chains[r.workflow_id] = await ledger.verify_chain(r.workflow_id)
    return Evidence(records=list(records), effects=world.all_effects(),
                    invocations=world.invocations(), trails=trails, chains=chains, tools=tools)


def _workflow_of(key: str, owners: dict[str, str]) -> str:
    # The ledger knows which run claimed a key; an effect it does not know is a gap, and
    # the key still names its run (keys are derived from the workflow id, never the model).
    return owners.get(key) or key.split(":", 1)[0]


def check(ev: Evidence) -> Verdict:
    v = Verdict()
    ours = {r.workflow_id for r in ev.records}
    owners: dict[str, str] = {}
    attempts: dict[tuple[str, int], ToolAttemptRow] = {}
    calls: dict[str, ToolCallRow] = {}
    for wid, trail in ev.trails.items():
        for c in trail.tool_calls:
            owners[c.idempotency_key] = wid
            calls[c.idempotency_key] = c
        for a in trail.tool_attempts:
            attempts[(a.idempotency_key, a.attempt)] = a

    for r in ev.records:
        v.statuses[r.outcome] += 1
        if r.result is None:
            v.lost.append(Finding(r.workflow_id, r.lost_reason or "no result"))
        else:
            _check_run_rows(r, ev.trails.get(r.workflow_id), v)
        for problem in ev.chains.get(r.workflow_id, []):
            v.chain_breaks.append(Finding(r.workflow_id, problem))
        if r.versioning:
            v.versioning.append(Finding(r.workflow_id, r.versioning))

    per_run_kind: Counter[tuple[str, str]] = Counter()
    for e in ev.effects:
        wid = _workflow_of(e.key, owners)
        if wid not in ours:
            continue
        per_run_kind[(wid, e.kind)] += 1
        if e.key not in calls:
            v.ledger_gaps.append(Finding(wid, f"{e.kind} effect for key {e.key} has no "
                                              f"stead_tool_calls row"))
    for (wid, kind), n in sorted(per_run_kind.items()):
        if n > 1:
            v.duplicates.append(Finding(wid, f"{n} {kind} effects for one run"))
            v.duplicate_effects += n - 1

    by_key: dict[str, list[Invocation]] = defaultdict(list)
    for inv in ev.invocations:
        if _workflow_of(inv.key, owners) in ours:
            by_key[inv.key].append(inv)
    for key, invs in by_key.items():
        wid = _workflow_of(key, owners)
        for inv in invs:
            if (key, inv.attempt) not in attempts:
                v.ledger_gaps.append(Finding(wid, f"{inv.tool} attempt {inv.attempt} ran "
                                                  f"(pid {inv.pid}) but the ledger has no "
                                                  f"attempt row"))
        _check_reruns(wid, key, invs, ev.tools, attempts, v)

    for key, c in calls.items():
        wid = owners[key]
        facts = ev.tools.get(c.tool)
        if facts is None or facts.idempotent:
            continue
        _check_unknown(wid, key, c, attempts, ev, v)
    return v


def _check_run_rows(r: RunRecord, trail: Trail | None, v: Verdict) -> None:
    assert r.result is not None
    res = r.result
    if trail is None or not trail.runs:
        v.ledger_gaps.append(Finding(r.workflow_id, "no stead_runs row"))
        return
    run = trail.runs[-1]
    if run.status != res.status or run.finished_at is None:
        v.ledger_gaps.append(Finding(r.workflow_id, f"stead_runs says {run.status!r} "
                                                    f"(finished_at {run.finished_at}), the "
                                                    f"run returned {res.status!r}"))
    ok_steps = {m.step for m in trail.model_calls if m.status == "ok"}
    if len(ok_steps) < res.model_turns:
        v.ledger_gaps.append(Finding(r.workflow_id, f"{res.model_turns} model turns, "
                                                    f"{len(ok_steps)} recorded"))
    steps = {c.step for c in trail.tool_calls}
    for call in res.tool_calls:
        if call.status != "rejected" and call.step not in steps:
            v.ledger_gaps.append(Finding(r.workflow_id, f"{call.tool} at step {call.step} "
                                                        f"has no stead_tool_calls row"))
    for c in trail.tool_calls:
        if c.status not in ("completed", "failed"):
            v.ledger_gaps.append(Finding(r.workflow_id, f"{c.tool} call at step "
                                                        f"{c.step} left {c.status!r} "
                                                        f"after the run ended"))


def _check_reruns(wid: str, key: str, invs: list[Invocation], tools: dict[str, ToolFacts],
                  attempts: dict[tuple[str, int], ToolAttemptRow], v: Verdict) -> None:
    facts = tools.get(invs[0].tool)
    if facts is None or facts.idempotent:
        return
    for prev, inv in itertools.pairwise(invs):
        if inv.effects_before > 0:
            v.silent_reruns.append(Finding(wid, f"{inv.tool} entered again (attempt "
                                                f"{inv.attempt}) after its effect happened"))
        elif not facts.reconcile:
            before = attempts.get((key, prev.attempt))
            if before is None or before.status != "error":
                v.silent_reruns.append(Finding(
                    wid, f"{inv.tool} (no reconcile hook) entered again on attempt "
                         f"{inv.attempt} although attempt {prev.attempt} never reported"))


def _check_unknown(wid: str, key: str, call: ToolCallRow,
                   attempts: dict[tuple[str, int], ToolAttemptRow],
                   ev: Evidence, v: Verdict) -> None:
    """A lost attempt of a non-idempotent call must be followed by a reconcile or an
    escalation — not by nothing (the run gave up and carried on) or a blind re-run."""
    rows = sorted((a for (k, _), a in attempts.items() if k == key),
                  key=lambda a: a.attempt)
    for i, a in enumerate(rows):
        if a.status != "running":
            continue
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        if nxt is None:
            v.unresolved_unknown.append(Finding(
                wid, f"{call.tool} attempt {a.attempt} was lost and nothing resolved "
                     f"it (call {call.status!r})"))
        elif nxt.status == "reconciled":
            v.reconciled += 1
        elif nxt.status == "error" and nxt.error_type == TOOL_OUTCOME_UNKNOWN:
            v.escalated_unknown += 1
            rec = next((r for r in ev.records if r.workflow_id == wid), None)
            if rec is not None and rec.result is not None and rec.result.status != "escalated":
                v.unresolved_unknown.append(Finding(
                    wid, f"{call.tool} outcome unknown, but the run ended "
                         f"{rec.result.status!r} instead of escalated"))
        elif nxt.status in ("ok", "replayed", "running"):
            # "ok": the hook said it had not happened, then it ran once (checked against
            # the world in _check_reruns); "replayed": the lost attempt had recorded its
            # result; "running": that attempt was lost too and the next one decides.
            continue
        else:
            v.unresolved_unknown.append(Finding(
                wid, f"{call.tool} attempt {a.attempt} was lost; attempt "
                     f"{nxt.attempt} ended {nxt.status!r} ({nxt.error_type})"))


def first_progress_after(trail: Trail, t: float) -> float | None:
    """The first ledger sign of life of a run after ``t`` (epoch seconds): an attempt
    starting, a model call recorded, a decision taken."""
    times = [*(_ts(a.started_at) for a in trail.tool_attempts),
             *(_ts(m.created_at) for m in trail.model_calls),
             *(_ts(d.created_at) for d in trail.decisions)]
    later = [x for x in times if x is not None and x > t]
    return min(later) if later else None


def _ts(value: object) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def count(findings: Iterable[Finding]) -> int:
    return sum(1 for _ in findings)

"""Budgets and quotas under chaos: some shop orders run governed, and what governs them must
hold through the faults of the phase (``kills``, ``pgnet``, ``temporalnet``).

In a governed phase the workers call a priced model — ``gpt-4o-mini`` at :data:`PRICE`, served
by a :class:`~stead.testing.openai_server.FakeOpenAIServer` in the harness process that answers
with the shop planner and reports usage — and of the phase's orders (approval orders aside):

- every fourth runs as the phase's own tenant (``gov-<phase>``), which has a tight
  ``usd_per_day`` window (:func:`day_cap`) and ``runs_in_flight`` :data:`RUNS_IN_FLIGHT`
  (``over_quota: queue``): such orders queue for admission, and once the window is nearly
  spent (about half of them in) their next model call is refused (the run ends
  ``budget_exceeded``);
- the next of each four carries a ``RunRequest.budget``, alternately ``max_model_calls`` 3
  (a shop order makes 5 calls: it always stops) and ``max_usd`` :data:`TIGHT_USD` (a few
  calls' estimates: it stops after 2-3).

``budget_exceeded`` is a deliberate end, like ``escalated``; the usual invariants (no loss,
no duplicate effect, a complete ledger) apply to these runs as to any. A worker SIGKILLed at a
``model:<turn>`` failpoint dies once the server has answered — and billed — the call, before
its worker settles the reservation: the spend accounting's worst moment.

Checked from the outside once the phases are over (:meth:`Governance.check`, findings in
``Verdict.phase_checks``), from the ledger's tables, the audit rows, the runs' results, the
fake server's log and a probe that sampled ``stead_admissions`` every 0.2 s:

(a) **window within cap**: the tenant's spend in its day window is at most its cap plus one
    call's estimate; the window's spent equals what its reservations settled plus the
    estimates they were charged for abandoned attempts; and no reservation counts as reserved
    once expired (``spend_usage`` counts an expired one as spent, at its estimate);
(b) **runs in flight within cap**: the probe never saw more of the tenant's runs admitted at
    once than ``runs_in_flight``;
(c) **run budgets hold**: a run's ``RunResult.spend`` is within its ``max_model_calls`` and
    within its ``max_usd`` plus its last call's cost (the most an answer can pass the estimate
    it was admitted on); a ``budget_exceeded`` run reached the server for no turn after its
    last admitted one, and its stop is an audit row;
(d) **no queued run lost**: every run of the tenant ended; one that queued was then admitted
    or refused (audit rows of kind ``admission``), and every one that ran was admitted;
(e) **no double count, no undercount across SIGKILLs**: per model call (run and step), the
    cost the ledger settled is that call's reported usage times the price, once per attempt it
    settled, and it settled no more attempts than the server answered; every answer the server
    gave that no attempt settled (its worker was killed after the answer) is covered by an
    attempt charged at its estimate (migration 0013), and what the call was charged is exactly
    those attempts' estimates.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import SecretStr
from temporalio import activity

from chaos.agent import SHOP, ShopPlanner
from chaos.invariants import Finding, RunRecord
from chaos.world import ChaosWorld
from stead.contracts.budget import Budget, Price
from stead.contracts.models import Message, ModelTurn, RunRequest, ToolSchema, Usage
from stead.contracts.quota import TenantQuota
from stead.integrations.llm import ModelClient, TurnSink, assistant_turns
from stead.settings import ModelPrice, Settings
from stead.storage.ledger import Ledger
from stead.testing.openai_server import ChatRequest, FakeOpenAIServer

if TYPE_CHECKING:
    from chaos.harness import Harness

GovPhase = Literal["kills", "pgnet", "temporalnet"]
GOVERNED: tuple[GovPhase, ...] = ("kills", "pgnet", "temporalnet")

MODEL = "gpt-4o-mini"
PRICE = ModelPrice(input=2.0, output=4.0)
"""USD per 1M tokens: a call is estimated at ~$0.018 (its request plus a 4,096-token answer)
and costs ~$0.0003 (the planner's short answers)."""
MARKER_KEY = "sk-chaos-governance"
"""The API key a governed phase's workers get: it tells ``chaos.worker`` to wrap the model."""
RUNS_IN_FLIGHT = 3
TIGHT_USD = 0.018
MAX_CALLS = 3
RESERVATION_TTL = 30.0
"""Seconds a reservation of the suite's tenants holds (the default 900 s outlives the suite)."""
RECHECK = 2.0
"""A queued run looks again this often when no ending run wakes it."""

_ORDER = re.compile(r"\bo-(\d+)\b")
Kind = Literal["tenant", "calls", "usd", "plain"]


def tenant_of(phase: str) -> str:
    return f"gov-{phase}"


def day_cap(tenant_runs: int) -> float:
    """The tenant's day window: one call's estimate (~$0.018) and what about half of its
    orders actually cost (~$0.0011 each), so the later half of its orders is stopped by the
    window — and two calls reserving at once do not both fit."""
    return round(0.02 + 0.0006 * tenant_runs, 6)


def price() -> Price:
    return Price(input_usd_per_mtok=PRICE.input, output_usd_per_mtok=PRICE.output)


def order_of(text: str) -> int | None:
    m = _ORDER.search(text)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------- worker side


class FailpointModel:
    """The configured model, passing the run's ``model:<turn>`` failpoint once it answered: the
    worker dies holding an answer that was billed and not yet settled."""

    def __init__(self, inner: ModelClient, world: ChaosWorld) -> None:
        self._inner = inner
        self._world = world

    @classmethod
    def for_settings(cls, settings: Settings, world: ChaosWorld,
                     model: ModelClient | None) -> ModelClient | None:
        """Wrapped when the settings are a governed phase's; else ``model`` as it is (None:
        the worker builds its own from the settings, as every other phase's do)."""
        key = settings.models.api_key
        if model is None or key is None or key.get_secret_value() != MARKER_KEY:
            return None
        return cls(model, world)

    @property
    def name(self) -> str:
        return self._inner.name

    async def close(self) -> None:
        """The host closes its model when it stops: pass it on to the client's sockets."""
        close = getattr(self._inner, "close", None)
        if close is not None:
            await close()

    def _passed(self, messages: Sequence[Message]) -> None:
        if activity.in_activity():
            wid = activity.info().workflow_id
            if wid is not None:
                self._world.failpoint(wid, f"model:{assistant_turns(messages) + 1}")

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSchema]
                       ) -> ModelTurn:
        turn = await self._inner.complete(messages, tools)
        self._passed(messages)
        return turn

    async def stream(self, messages: Sequence[Message], tools: Sequence[ToolSchema],
                     sink: TurnSink) -> ModelTurn:
        stream = getattr(self._inner, "stream", None)
        if stream is None:
            turn = await self._inner.complete(messages, tools)
        else:
            turn = await stream(messages, tools, sink)
        self._passed(messages)
        return turn


# ---------------------------------------------------------------------------- harness side


@dataclass
class Served:
    """One request the fake model server received for a shop order."""

    order: int
    turn: int
    arrived: float
    answered: float | None = None
    usage: Usage | None = None

    @property
    def cost(self) -> float:
        return price().cost(self.usage.input_tokens, self.usage.output_tokens) \
            if self.usage is not None else 0.0


@dataclass
class GovPlan:
    phase: GovPhase
    order: int
    kind: Kind
    budget: Budget | None = None


@dataclass
class Probe:
    """What the sampler saw of one tenant: most runs admitted at once, spent + reserved."""

    samples: int = 0
    max_admitted: int = 0
    max_queued: int = 0
    max_held_usd: float = 0.0
    errors: int = 0


@dataclass
class Governance:
    """The governed phases' model server, request shaping, probe and checks."""

    harness: Harness
    plans: dict[int, GovPlan] = field(default_factory=dict)
    served: list[Served] = field(default_factory=list)
    probes: dict[str, Probe] = field(default_factory=lambda: defaultdict(Probe))
    server: FakeOpenAIServer | None = None
    _probe_task: asyncio.Task[None] | None = None
    _planner: ShopPlanner = field(default_factory=ShopPlanner)

    # -------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Governance:
        from chaos.netfaults import REQUEST_HOOKS

        self.server = FakeOpenAIServer(self._respond)
        await self.server.__aenter__()
        self._hooks = {
            "pgnet": lambda i, req: self.shape("pgnet", req),
            "temporalnet": lambda i, req: self.shape("temporalnet", req)}
        for phase, hook in self._hooks.items():
            if phase in self.harness.cfg.phases:
                REQUEST_HOOKS[phase].append(hook)  # type: ignore[index]
        self._probe_task = asyncio.create_task(self._probe())
        self.harness.governance = self  # its settings_for and phases consult it from now on
        return self

    async def __aexit__(self, *exc: object) -> None:
        from chaos.netfaults import REQUEST_HOOKS

        if self.harness.governance is self:
            self.harness.governance = None
        for phase, hook in self._hooks.items():
            with contextlib.suppress(ValueError):
                REQUEST_HOOKS[phase].remove(hook)  # type: ignore[index]
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        if self.server is not None:
            await self.server.__aexit__(None, None, None)

    # -------------------------------------------------------------- settings and requests

    def tenant_runs(self, phase: str) -> int:
        """How many of the phase's orders run as its tenant (a fourth of them, at most)."""
        cfg = self.harness.cfg
        n = cfg.runs if phase == "kills" else max(1, min(cfg.runs, cfg.infra_runs))
        return max(1, -(-n // 4))

    def quota(self, phase: str) -> TenantQuota:
        return TenantQuota(usd_per_day=day_cap(self.tenant_runs(phase)),
                           runs_in_flight=RUNS_IN_FLIGHT, over_quota="queue")

    def settings_update(self, phase: str) -> dict[str, Any]:
        """What a governed phase's workers run with (nothing for the other phases)."""
        if phase not in GOVERNED or self.server is None:
            return {}
        return {"openai_api_key": SecretStr(MARKER_KEY), "openai_base_url": self.server.base_url,
                "openai_model": MODEL, "model_prices": {MODEL: PRICE},
                "tenant_quotas": {tenant_of(phase): self.quota(phase)},
                "quota_reservation_ttl_seconds": RESERVATION_TTL,
                "admission_recheck_seconds": RECHECK,
                "admission_recheck_max_seconds": RECHECK}

    def shape(self, phase: GovPhase, req: RunRequest, *, eligible: bool = True) -> RunRequest:
        """The request as governance has it: every fourth order as the phase's tenant, the
        next with a budget (alternately calls and dollars); the others as they were."""
        n = order_of(req.input)
        if not eligible or n is None or req.agent != SHOP:
            return req
        seat = sum(1 for p in self.plans.values() if p.phase == phase)
        slot = seat % 4
        if slot == 0:
            self.plans[n] = GovPlan(phase, n, "tenant")
            return req.model_copy(update={"tenant": tenant_of(phase)})
        if slot == 1:
            calls = seat // 4 % 2 == 0
            budget = Budget(max_model_calls=MAX_CALLS) if calls else Budget(max_usd=TIGHT_USD)
            self.plans[n] = GovPlan(phase, n, "calls" if calls else "usd", budget)
            return req.model_copy(update={"budget": budget})
        self.plans[n] = GovPlan(phase, n, "plain")
        return req

    # -------------------------------------------------------------- the model server

    async def _respond(self, chat: ChatRequest) -> ModelTurn:
        user = next((m.content or "" for m in chat.messages if m.role == "user"), "")
        rec = Served(order=order_of(user) or -1, turn=assistant_turns(chat.messages) + 1,
                     arrived=time.time())
        self.served.append(rec)
        turn = await self._planner.model.complete(chat.messages, chat.tools)
        rec.answered, rec.usage = time.time(), turn.usage
        return turn

    # -------------------------------------------------------------- the probe

    async def _probe(self) -> None:
        """Every 0.2 s: each governed tenant's admitted and queued runs, and its money held."""
        tenants = [tenant_of(p) for p in GOVERNED]
        ledger = self.harness.ledger
        while True:
            await asyncio.sleep(0.2)
            try:
                async with ledger.pool.acquire(timeout=2) as c:
                    rows = await c.fetch(
                        "select tenant, count(*) filter (where state = 'admitted') as a,"
                        " count(*) filter (where state = 'queued') as q"
                        " from stead_admissions where tenant = any($1) group by tenant",
                        tenants, timeout=2)
                    held = await c.fetch(
                        "select t.tenant, coalesce((select spent_usd from stead_tenant_spend s"
                        "  where s.tenant = t.tenant and s.kind = 'day' order by window_start"
                        "  desc limit 1), 0)::float8 + coalesce((select sum(usd) from"
                        "  stead_spend_reservations r where r.tenant = t.tenant and"
                        "  r.state = 'reserved' and r.expires_at > now()), 0)::float8 as usd"
                        " from unnest($1::text[]) t(tenant)", tenants, timeout=2)
            except Exception:  # the phase may be breaking this very database: sample later
                for t in tenants:
                    if t in self.probes:
                        self.probes[t].errors += 1
                continue
            for r in rows:
                p = self.probes[r["tenant"]]
                p.samples += 1
                p.max_admitted = max(p.max_admitted, int(r["a"]))
                p.max_queued = max(p.max_queued, int(r["q"]))
            for r in held:
                if r["usd"]:
                    p = self.probes[r["tenant"]]
                    p.max_held_usd = max(p.max_held_usd, float(r["usd"]))

    # -------------------------------------------------------------- the checks

    async def check(self, records: Sequence[RunRecord]) -> list[Finding]:
        """(a)-(e) of the module docstring, for each governed phase that ran; also a
        ``governance`` row per phase in the report's fault table."""
        out: list[Finding] = []
        for phase in GOVERNED:
            recs = [r for r in records if r.phase == phase]
            if recs:
                out += await self._check_phase(phase, recs)
        return out

    async def _check_phase(self, phase: GovPhase, recs: list[RunRecord]) -> list[Finding]:
        ledger: Ledger = self.harness.ledger
        tenant, quota = tenant_of(phase), self.quota(phase)
        cap = quota.usd_per_day or 0.0
        found: list[Finding] = []
        where = f"{phase}/{tenant}"
        async with ledger.pool.acquire() as c:
            runs = {r["workflow_id"]: (r["tenant"], order_of(r["input"]))
                    for r in await c.fetch(
                        "select workflow_id, tenant, input from stead_runs"
                        " where workflow_id = any($1)", [r.workflow_id for r in recs])}
            resv = [dict(r) for r in await c.fetch(
                "select workflow_id, step, state, usd::float8 as usd, settled_usd::float8 as"
                " settled_usd, settled_attempts, charged_usd::float8 as charged_usd,"
                " abandoned_attempts, abandoned_usd::float8[] as abandoned_usd, expires_at,"
                " expires_at > now() as live"
                " from stead_spend_reservations where tenant = $1", tenant)]
            window = await c.fetchval(
                "select coalesce(sum(spent_usd), 0)::float8 from stead_tenant_spend"
                " where tenant = $1 and kind = 'day'", tenant)
        usage = [w for w in await ledger.spend_usage({tenant: quota}, tenant=tenant)
                 if w.window == "day"]
        by_order: dict[int, list[Served]] = defaultdict(list)
        for s in self.served:
            by_order[s.order].append(s)

        # (a) the window within its cap; settled and charged rows add up; expired ones are
        # spent (at their estimates), not reserved
        est = max((r["usd"] for r in resv), default=0.0)
        expired = sum(r["usd"] for r in resv if r["state"] == "reserved" and not r["live"])
        if window + expired > cap + est + 1e-9:
            found.append(Finding(where, f"day window spent ${window + expired:.6f} > cap "
                                        f"${cap:.6f} + one estimate ${est:.6f}"))
        settled = sum(r["settled_usd"] + r["charged_usd"] for r in resv)
        if abs(settled - window) > 1e-9:
            found.append(Finding(where, f"day window says ${window:.6f} spent but its "
                                        f"reservations settled and charged ${settled:.6f}"))
        live = sum(r["usd"] for r in resv if r["state"] == "reserved" and r["live"])
        dangling = [r for r in resv if r["state"] == "reserved"]
        if usage and abs(usage[0].reserved_usd - live) > 1e-9:
            found.append(Finding(where, f"spend_usage holds ${usage[0].reserved_usd:.6f} "
                                        f"reserved; the live reservations add up to "
                                        f"${live:.6f} (an expired one still counted?)"))
        last_end = max((r.ended_at or 0.0 for r in recs), default=0.0)
        for r in dangling:
            if r["expires_at"].timestamp() > last_end + RESERVATION_TTL + 5:
                found.append(Finding(r["workflow_id"], f"step {r['step']}: reservation "
                                                       f"still live past its TTL after every "
                                                       f"run ended"))

        # (b) runs in flight within the cap, as the probe saw them
        probe = self.probes.get(tenant, Probe())
        if probe.max_admitted > RUNS_IN_FLIGHT:
            found.append(Finding(where, f"{probe.max_admitted} runs admitted at once, cap "
                                        f"{RUNS_IN_FLIGHT} (probe, {probe.samples} samples)"))
        if probe.max_held_usd > cap + est + 1e-9:
            found.append(Finding(where, f"spent + reserved reached ${probe.max_held_usd:.6f},"
                                        f" over cap ${cap:.6f} + one estimate"))

        # (c), (d), (e) per run
        statuses: Counter[str] = Counter()
        queued = refused_by_window = billed_unsettled = budget_runs = superseded = 0
        charged_attempts, charged_usd = 0, 0.0
        steps_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in resv:
            steps_of[r["workflow_id"]].append(r)
        for rec in recs:
            t, order = runs.get(rec.workflow_id, (None, None))
            plan = self.plans.get(order) if order is not None else None
            if plan is None or plan.kind == "plain":
                continue
            res = rec.result
            statuses[rec.outcome] += 1
            trail = await ledger.trail(rec.workflow_id)
            superseded += len(trail.superseded)
            served = by_order.get(order, []) if order is not None else []
            answered = [s for s in served if s.usage is not None]
            if plan.kind == "tenant":
                adm = [d.decision for d in trail.decisions if d.kind == "admission"]
                if t != tenant:
                    found.append(Finding(rec.workflow_id, f"ran as tenant {t!r}, not {tenant}"))
                if res is None:
                    continue  # lost: the harness's own "lost" check reports it
                if "queue" in adm:
                    queued += 1
                    if not ({"admit", "refuse"} & set(adm[adm.index("queue"):])):
                        found.append(Finding(rec.workflow_id, "queued and never admitted or "
                                                              "refused, yet it ended"))
                if res.status != "refused" and "admit" not in adm:
                    found.append(Finding(rec.workflow_id, f"ended {res.status!r} without an "
                                                          f"admission row"))
                if any(d.kind == "budget" and d.decision == "tenant_window"
                       for d in trail.decisions):
                    refused_by_window += 1
                # (e) per call: settled = reported usage x price, once per settled attempt
                turns: dict[int, list[Served]] = defaultdict(list)
                for s in answered:
                    turns[s.turn].append(s)
                keys = sorted(steps_of.get(rec.workflow_id, []), key=lambda x: x["step"])
                for k, row in enumerate(keys, start=1):
                    got = turns.get(k, [])
                    n_settled = len(row["settled_attempts"])
                    if n_settled > len(got):
                        found.append(Finding(rec.workflow_id, f"step {row['step']}: "
                                             f"{n_settled} attempt(s) settled, the server "
                                             f"answered turn {k} {len(got)} time(s)"))
                    elif got:
                        want = n_settled * got[0].cost
                        if abs(row["settled_usd"] - want) > 1e-9 * max(1, n_settled):
                            found.append(Finding(rec.workflow_id, f"step {row['step']}: "
                                                 f"settled ${row['settled_usd']:.9f}, the "
                                                 f"server's usage says ${want:.9f}"))
                    # Killed attempts are charged at their estimate: each answer no attempt
                    # settled must be covered by one (more is fine: a worker killed before
                    # the answer is charged too, as nobody knows whether it was billed).
                    abandoned = [(a, u) for a, u in zip(row["abandoned_attempts"],
                                                    row["abandoned_usd"], strict=True)
                            if a not in row["settled_attempts"]]
                    if row["state"] == "reserved" and not row["live"]:
                        abandoned.append((-1, row["usd"]))  # expired: spent, charged lazily
                    if abs(row["charged_usd"] - sum(u for a, u in abandoned if a >= 0)) > 1e-9:
                        found.append(Finding(rec.workflow_id, f"step {row['step']}: charged "
                                             f"${row['charged_usd']:.9f}, its abandoned "
                                             f"attempts' estimates say "
                                             f"${sum(u for a, u in abandoned if a >= 0):.9f}"))
                    unsettled = max(len(got) - n_settled, 0)
                    if unsettled > len(abandoned):
                        found.append(Finding(rec.workflow_id, f"step {row['step']}: the server "
                                             f"answered turn {k} {len(got)} time(s), "
                                             f"{n_settled} attempt(s) settled and only "
                                             f"{len(abandoned)} charged at their estimate: the "
                                             f"window undercounts"))
                    billed_unsettled += unsettled
                    charged_attempts += len(abandoned)
                    charged_usd += sum(u for _, u in abandoned)
                continue
            # (c) a run with its own budget
            budget_runs += 1
            if res is None or plan.budget is None:
                continue
            spend, lim = res.spend, plan.budget
            if lim.max_model_calls is not None and spend.model_calls > lim.max_model_calls:
                found.append(Finding(rec.workflow_id, f"{spend.model_calls} model calls, "
                                                      f"limit {lim.max_model_calls}"))
            if lim.max_usd is not None:
                last = max((s.cost for s in answered), default=0.0)
                if spend.usd > lim.max_usd + last + 1e-9:
                    found.append(Finding(rec.workflow_id, f"spent ${spend.usd:.6f} > limit "
                                                          f"${lim.max_usd:.6f} + last call "
                                                          f"${last:.6f}"))
            distinct = {s.turn for s in answered}
            if len(distinct) != spend.model_calls:
                found.append(Finding(rec.workflow_id, f"RunResult.spend counts "
                                     f"{spend.model_calls} model calls; the server answered "
                                     f"{len(distinct)} distinct turns"))
            if res.status == "budget_exceeded":
                after = [s for s in served if s.turn > spend.model_calls]
                if after:
                    found.append(Finding(rec.workflow_id, f"budget_exceeded after "
                                         f"{spend.model_calls} calls, yet the server got turn "
                                         f"{after[0].turn}"))
                if not any(d.kind == "budget" and d.decision == "stopped"
                           for d in trail.decisions):
                    found.append(Finding(rec.workflow_id, "budget_exceeded without a budget "
                                                          "'stopped' audit row"))
        # Measured, not required: model requests of the phase's runs that reached the server
        # after their run had ended (an attempt Temporal gave up on, still going).
        ended = {order: rec.ended_at for rec in recs
                 if (order := runs.get(rec.workflow_id, (None, None))[1]) is not None
                 and rec.ended_at is not None}
        late = sum(1 for s in self.served if s.order in ended and s.arrived > ended[s.order])
        stat = self.harness.fault("governance", f"{phase}: tenant {tenant} and run budgets")
        stat.injected = sum(1 for p in self.plans.values() if p.phase == phase
                            and p.kind != "plain")
        stat.outcomes.update(statuses)
        stat.note = (f"tenant: cap ${cap:.4f}/day spent ${window:.4f}, {refused_by_window} "
                     f"stopped by the window, {queued} queued, at most {probe.max_admitted} "
                     f"of {RUNS_IN_FLIGHT} admitted ({probe.samples} samples); "
                     f"{len(dangling)} reservation(s) left to expire; {billed_unsettled} "
                     f"answered call(s) never settled (worker killed after the answer), "
                     f"{charged_attempts} killed attempt(s) charged at their estimate "
                     f"(${charged_usd:.4f}); "
                     f"{budget_runs} runs with a budget; {late} model request(s) arrived "
                     f"after their run had ended; {superseded} audit row(s) of discarded "
                     f"workflow-task attempts superseded")
        return found

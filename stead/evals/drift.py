"""Drift: has the agent's behaviour changed between a baseline window and a recent one?

    check = await run_check(ledger.pool, DriftCheckRequest(windows=windows), embedder=None)
    for s in check.report.signals: print(s.name, s.status, s.statistic, s.threshold)

Each signal compares the two windows with a test suited to its data and has a **threshold on
the size of the change** plus, where a test gives one, a **p-value** checked against
``alpha``. A signal is ``crossed`` only when both say so: a big change that could be noise
(few runs) is not an alarm, nor is a tiny change that many runs make "significant".

=======================  ===============================================  ====================
signal                   statistic                                        test
=======================  ===============================================  ====================
``success_rate``         recent minus baseline share of completed runs    two-proportion z
                                                                          (Fisher if sparse)
``task_success``         recent minus baseline share of evaluated runs    two-proportion z
                         that succeeded (online evaluation's verdicts)    (Fisher if sparse)
``latency``              Kolmogorov-Smirnov distance D of run latencies   two-sample KS
``tool_sequences``       Jensen-Shannon distance (base 2, 0..1) of the    permutation
                         shares of each tool-call sequence
``guardrail.<kind>``     recent minus baseline trigger rate (gate deny/   two-proportion
                         ask per gate decision; call and output
                         rejections, route refusals per run)
``tool_failure.<tool>``  recent minus baseline failed-attempt rate        two-proportion
``request_embeddings``   MMD^2 (RBF kernel, median bandwidth) of the      permutation; the
                         request texts' embeddings                        threshold is the
                                                                          null's 1-alpha
                                                                          quantile
=======================  ===============================================  ====================

A window with fewer samples than the thresholds' minimums gives ``insufficient data``, never
``crossed``. Permutation tests use a fixed seed, so the same data gives the same report.

Scheduled checks (``workflows/drift.py``) store their reports in ``stead_drift_checks``.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from stead.contracts.drift import (
    DRIFT_WORKFLOW,
    DriftCheckInput,
    DriftCheckRequest,
    DriftCheckSummary,
    DriftThresholds,
    DriftWindows,
)
from stead.evals.samples import (
    BadWindow,
    RunSample,
    Window,
    load_runs,
    parse_duration,
    parse_when,
)

if TYPE_CHECKING:
    import asyncpg
    from numpy.typing import NDArray
    from temporalio.client import Client

    from stead.evals.report import HtmlReport
    from stead.storage.memory import Embedder

__all__ = [
    "DRIFT_WORKFLOW",
    "DriftCheck",
    "DriftCheckInput",
    "DriftCheckRequest",
    "DriftCheckRow",
    "DriftCheckSummary",
    "DriftReport",
    "DriftSignal",
    "DriftThresholds",
    "DriftWindows",
    "SignalStatus",
    "compute_report",
    "html_report",
    "list_checks",
    "load_check",
    "record_check",
    "relative_input",
    "resolve_windows",
    "run_check",
    "schedule_checks",
    "summarize",
]

SignalStatus = Literal["ok", "crossed", "insufficient data", "skipped"]
"""``skipped``: the signal could not be computed at all (no embedder, embedder failed, no
run evaluated)."""

_SEED = 20240601  # permutation tests are seeded: the same windows give the same report


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DriftSignal(_Model):
    """One comparison between the windows."""

    name: str
    test: str
    """The statistical test behind ``p_value`` (and how sparse data was handled)."""
    status: SignalStatus
    statistic: float | None = None
    """Size of the change (signed for rates: recent minus baseline)."""
    threshold: float | None = None
    """``|statistic|`` must reach this (and ``p_value`` fall below ``alpha``) to cross."""
    p_value: float | None = None
    alpha: float | None = None
    baseline: float | None = None
    """The measured value in the baseline window (a rate, or p50 latency in ms)."""
    recent: float | None = None
    n_baseline: int = 0
    """Sample size in the baseline window (runs, attempts, gate decisions or requests)."""
    n_recent: int = 0
    detail: str = ""
    """In words: what changed, or why the signal could not be judged."""

    @property
    def crossed(self) -> bool:
        return self.status == "crossed"


class DriftReport(_Model):
    """Every signal of one check, with the windows and thresholds that produced it."""

    checked_at: datetime
    windows: DriftWindows
    agent: str | None = None
    tenant: str | None = None
    include_synthetic: bool = False
    thresholds: DriftThresholds
    embedder: str | None = None
    """Name of the embedder of request texts; None: the embedding signal was skipped."""
    signals: list[DriftSignal]

    @property
    def crossed(self) -> list[DriftSignal]:
        return [s for s in self.signals if s.crossed]

    def signal(self, name: str) -> DriftSignal:
        for s in self.signals:
            if s.name == name:
                return s
        raise KeyError(f"no signal {name!r}; this report has: "
                       + ", ".join(s.name for s in self.signals))


class DriftCheckRow(_Model):
    """A recorded check, as ``stead drift --checks`` lists it."""

    id: int
    checked_at: datetime
    windows: DriftWindows
    agent: str | None
    tenant: str | None
    crossed: bool
    crossed_signals: list[str]
    source: str | None
    """``workflow_id/run_id`` of the scheduled run that recorded it."""


@dataclass(frozen=True)
class DriftCheck:
    """A report plus the samples it was computed from (for plots)."""

    report: DriftReport
    baseline: list[RunSample]
    recent: list[RunSample]


# ---------------------------------------------------------------------------- running


async def run_check(pool: asyncpg.Pool, request: DriftCheckRequest, *,
                    embedder: Embedder | None = None) -> DriftCheck:
    """Load both windows from the ledger and compare them."""
    w = request.windows
    baseline, recent = [
        await load_runs(pool, window, agent=request.agent, tenant=request.tenant,
                        include_synthetic=request.include_synthetic, limit=request.limit)
        for window in (w.baseline, w.recent)]
    report = await compute_report(
        baseline, recent, windows=w, thresholds=request.thresholds, embedder=embedder,
        checked_at=request.checked_at or datetime.now(UTC), agent=request.agent,
        tenant=request.tenant, include_synthetic=request.include_synthetic)
    return DriftCheck(report, baseline, recent)


async def compute_report(baseline: Sequence[RunSample], recent: Sequence[RunSample], *,
                         windows: DriftWindows, thresholds: DriftThresholds | None = None,
                         embedder: Embedder | None = None, checked_at: datetime | None = None,
                         agent: str | None = None, tenant: str | None = None,
                         include_synthetic: bool = False) -> DriftReport:
    """Every signal for two samples of runs. The statistics run in a thread: they are CPU
    work and must not stall a worker's event loop."""
    th = thresholds or DriftThresholds()
    vectors: tuple[NDArray[np.float64], NDArray[np.float64]] | str | None = None
    if embedder is not None:
        vectors = await _embed_windows(embedder, baseline, recent, th)
    signals = await asyncio.to_thread(_signals, list(baseline), list(recent), th, vectors)
    return DriftReport(checked_at=checked_at or datetime.now(UTC), windows=windows, agent=agent,
                       tenant=tenant, include_synthetic=include_synthetic, thresholds=th,
                       embedder=embedder.name if embedder is not None else None,
                       signals=signals)


def _signals(baseline: list[RunSample], recent: list[RunSample], th: DriftThresholds,
             vectors: tuple[NDArray[np.float64], NDArray[np.float64]] | str | None,
             ) -> list[DriftSignal]:
    out = [_success_rate(baseline, recent, th), _task_success(baseline, recent, th),
           _latency(baseline, recent, th),
           _sequences(baseline, recent, th), *_guardrails(baseline, recent, th),
           *_tool_failures(baseline, recent, th)]
    if vectors is None:
        out.append(DriftSignal(name="request_embeddings", test="MMD² permutation test",
                               status="skipped", n_baseline=len(baseline),
                               n_recent=len(recent),
                               detail="no embedder: memory is off (`stead drift --embedder "
                                      "model` compares request topics anyway)"))
    elif isinstance(vectors, str):
        out.append(DriftSignal(name="request_embeddings", test="MMD² permutation test",
                               status="skipped", n_baseline=len(baseline),
                               n_recent=len(recent), detail=vectors))
    else:
        out.append(_embeddings(vectors[0], vectors[1], th))
    return out


# ---------------------------------------------------------------------------- signals


def _scipy_stats() -> ModuleType:
    # Imported on first use: it costs most of a second, which every worker start would pay
    # (workflows/drift.py imports this module).
    import scipy.stats

    module: ModuleType = scipy.stats
    return module


def _too_few(nb: int, nr: int, need: int, what: str) -> str | None:
    if nb >= need and nr >= need:
        return None
    return f"{nb} {what} in the baseline, {nr} in the recent window; each needs at least {need}"


def _two_proportions(xb: int, nb: int, xr: int, nr: int) -> tuple[float, str]:
    """Two-sided p-value that both windows share one rate: the z-test, or Fisher's exact
    test when an expected cell count is below 5 (where the normal approximation is poor)."""
    stats = _scipy_stats()

    pooled = (xb + xr) / (nb + nr)
    if pooled in (0.0, 1.0):
        return 1.0, "two-proportion z-test"
    expected = min(nb, nr) * min(pooled, 1 - pooled)
    if expected < 5:
        _, p = stats.fisher_exact([[xb, nb - xb], [xr, nr - xr]])
        return float(p), "Fisher's exact test"
    se = math.sqrt(pooled * (1 - pooled) * (1 / nb + 1 / nr))
    z = (xr / nr - xb / nb) / se
    return float(2 * stats.norm.sf(abs(z))), "two-proportion z-test"


def _proportion(name: str, event: str, unit: str, xb: int, nb: int, xr: int, nr: int, *,
                delta: float, need: int, th: DriftThresholds) -> DriftSignal:
    """``event`` happened to ``x`` of ``n`` ``unit`` (e.g. "denied", 12 of 140 "gate
    decisions") in each window."""
    short = _too_few(nb, nr, need, unit)
    if short is not None:
        return DriftSignal(name=name, test="two-proportion z-test", status="insufficient data",
                           threshold=delta, alpha=th.alpha, n_baseline=nb, n_recent=nr,
                           baseline=xb / nb if nb else None, recent=xr / nr if nr else None,
                           detail=short)
    rb, rr = xb / nb, xr / nr
    p, test = _two_proportions(xb, nb, xr, nr)
    stat = rr - rb
    crossed = abs(stat) >= delta and p < th.alpha
    return DriftSignal(name=name, test=test, status="crossed" if crossed else "ok",
                       statistic=stat, threshold=delta, p_value=p, alpha=th.alpha,
                       baseline=rb, recent=rr, n_baseline=nb, n_recent=nr,
                       detail=f"{event}: {rb:.1%} → {rr:.1%} of {unit} "
                              f"({stat * 100:+.1f} points)")


def _success_rate(b: list[RunSample], r: list[RunSample], th: DriftThresholds) -> DriftSignal:
    return _proportion("success_rate", "completed", "runs",
                       sum(s.succeeded for s in b), len(b), sum(s.succeeded for s in r), len(r),
                       delta=th.success_rate_delta, need=th.min_runs, th=th)


def _task_success(b: list[RunSample], r: list[RunSample], th: DriftThresholds) -> DriftSignal:
    """Over the runs online evaluation gave a verdict (``stead.evals.online``); the others
    are not in either window's rate."""
    eb = [s.task_success for s in b if s.task_success is not None]
    er = [s.task_success for s in r if s.task_success is not None]
    if not eb and not er:
        return DriftSignal(name="task_success", test="two-proportion z-test", status="skipped",
                           n_baseline=0, n_recent=0,
                           detail="no run of either window was evaluated (declare "
                                  "OnlineEvals on the agent; `stead grade`)")
    return _proportion("task_success", "succeeded (evaluated)", "evaluated runs", sum(eb),
                       len(eb), sum(er), len(er), delta=th.task_success_delta,
                       need=th.min_runs, th=th)


def _latency(b: list[RunSample], r: list[RunSample], th: DriftThresholds) -> DriftSignal:
    stats = _scipy_stats()

    name, test = "latency", "two-sample Kolmogorov–Smirnov"
    lb = np.array([s.latency_ms for s in b], dtype=float)
    lr = np.array([s.latency_ms for s in r], dtype=float)
    mb = float(np.median(lb)) if len(lb) else None
    mr = float(np.median(lr)) if len(lr) else None
    short = _too_few(len(lb), len(lr), th.min_runs, "runs")
    if short is not None:
        return DriftSignal(name=name, test=test, status="insufficient data",
                           threshold=th.latency_ks, alpha=th.alpha, baseline=mb, recent=mr,
                           n_baseline=len(lb), n_recent=len(lr), detail=short)
    res = stats.ks_2samp(lb, lr)
    d, p = float(res.statistic), float(res.pvalue)
    crossed = d >= th.latency_ks and p < th.alpha
    pb, pr = np.percentile(lb, [50, 95]), np.percentile(lr, [50, 95])
    return DriftSignal(name=name, test=test, status="crossed" if crossed else "ok",
                       statistic=d, threshold=th.latency_ks, p_value=p, alpha=th.alpha,
                       baseline=mb, recent=mr, n_baseline=len(lb), n_recent=len(lr),
                       detail=f"p50 {_ms(pb[0])} → {_ms(pr[0])}, p95 {_ms(pb[1])} → "
                              f"{_ms(pr[1])}")


def _js_rows(p: NDArray[np.float64], q: NDArray[np.float64]) -> NDArray[np.float64]:
    """Jensen-Shannon distance (base 2, in 0..1) between matching rows of two count arrays."""
    p = p / p.sum(axis=-1, keepdims=True)
    q = q / q.sum(axis=-1, keepdims=True)
    m = (p + q) / 2

    def kl(a: NDArray[np.float64]) -> NDArray[np.float64]:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * np.log2(a / m), 0.0)
        return np.asarray(terms.sum(axis=-1), dtype=float)

    return np.asarray(np.sqrt(np.clip((kl(p) + kl(q)) / 2, 0.0, 1.0)), dtype=float)


def _sequences(b: list[RunSample], r: list[RunSample], th: DriftThresholds) -> DriftSignal:
    name, test = "tool_sequences", "Jensen–Shannon distance, permutation test"
    short = _too_few(len(b), len(r), th.min_runs, "runs")
    if short is not None:
        return DriftSignal(name=name, test=test, status="insufficient data",
                           threshold=th.sequence_js, alpha=th.alpha, n_baseline=len(b),
                           n_recent=len(r), detail=short)
    cats = sorted({s.sequence for s in b} | {s.sequence for s in r})
    index = {c: i for i, c in enumerate(cats)}
    codes = np.array([index[s.sequence] for s in b + r])
    k, nb = len(cats), len(b)
    cb = np.bincount(codes[:nb], minlength=k).astype(float)
    cr = np.bincount(codes[nb:], minlength=k).astype(float)
    observed = float(_js_rows(cb, cr))
    rng = np.random.default_rng(_SEED)
    total = cb + cr
    null_b = np.array([np.bincount(rng.permutation(codes)[:nb], minlength=k)
                       for _ in range(th.permutations)], dtype=float)
    null = _js_rows(null_b, total - null_b)
    p = float((1 + np.sum(null >= observed - 1e-12)) / (1 + th.permutations))
    crossed = observed >= th.sequence_js and p < th.alpha
    return DriftSignal(name=name, test=test, status="crossed" if crossed else "ok",
                       statistic=observed, threshold=th.sequence_js, p_value=p, alpha=th.alpha,
                       n_baseline=len(b), n_recent=len(r),
                       detail=_sequence_shift(cats, cb / cb.sum(), cr / cr.sum()))


def _sequence_shift(cats: list[str], pb: NDArray[np.float64], pr: NDArray[np.float64]) -> str:
    """The three categories whose share moved most, in words."""
    order = np.argsort(-np.abs(pr - pb))[:3]
    parts = []
    for i in order:
        if pr[i] == pb[i]:
            continue
        tag = " (new)" if pb[i] == 0 else " (gone)" if pr[i] == 0 else ""
        parts.append(f"{cats[i]}{tag} {pb[i]:.0%} → {pr[i]:.0%}")
    return f"{len(cats)} sequences; " + ("; ".join(parts) if parts else "no change")


_RUN_GUARDRAILS: dict[str, tuple[str, Callable[[RunSample], bool]]] = {
    "guardrail.call_rejected": ("a tool call rejected", lambda s: any(
        d.kind == "call_rejected" for d in s.decisions)),
    "guardrail.output_rejected": ("an answer rejected", lambda s: any(
        d.kind == "output_rejected" for d in s.decisions)),
    "guardrail.route_refused": ("refused by routing", lambda s: any(
        d.kind == "route" and d.decision == "refuse" for d in s.decisions)),
}


def _guardrails(b: list[RunSample], r: list[RunSample],
                th: DriftThresholds) -> list[DriftSignal]:
    def gates(samples: list[RunSample]) -> Counter[str]:
        return Counter(d.decision for s in samples for d in s.decisions if d.kind == "gate")

    gb, gr = gates(b), gates(r)
    nb, nr = sum(gb.values()), sum(gr.values())
    out = [_proportion(f"guardrail.gate_{action}", verb, "gate decisions", gb[action], nb,
                       gr[action], nr, delta=th.guardrail_delta, need=th.min_calls, th=th)
           for action, verb in (("deny", "denied"), ("ask", "asked a human"))]
    for name, (what, hit) in _RUN_GUARDRAILS.items():
        out.append(_proportion(name, what, "runs", sum(hit(s) for s in b), len(b),
                               sum(hit(s) for s in r), len(r), delta=th.guardrail_delta,
                               need=th.min_runs, th=th))
    return out


def _tool_failures(b: list[RunSample], r: list[RunSample],
                   th: DriftThresholds) -> list[DriftSignal]:
    def count(samples: list[RunSample]) -> tuple[Counter[str], Counter[str]]:
        total: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        for s in samples:
            for a in s.attempts:
                total[a.tool] += 1
                failed[a.tool] += a.failed
        return total, failed

    (tb, fb), (tr, fr) = count(b), count(r)
    return [_proportion(f"tool_failure.{tool}", "failed", f"{tool} attempts", fb[tool], tb[tool],
                        fr[tool], tr[tool], delta=th.tool_failure_delta, need=th.min_calls,
                        th=th)
            for tool in sorted(set(tb) | set(tr))]


async def _embed_windows(embedder: Embedder, b: Sequence[RunSample], r: Sequence[RunSample],
                         th: DriftThresholds,
                         ) -> tuple[NDArray[np.float64], NDArray[np.float64]] | str:
    """Embeddings of (an even spread of) both windows' requests, or why there are none."""
    tb = [s.input[:2000] for s in _spread(b, th.embedding_sample)]
    tr = [s.input[:2000] for s in _spread(r, th.embedding_sample)]
    if not tb or not tr:
        return (np.zeros((len(tb), 1)), np.zeros((len(tr), 1)))
    try:
        vectors = await embedder.embed(tb + tr)
    except Exception as err:  # an embedder outage must not hide every other signal
        return f"embedder {embedder.name} failed: {type(err).__name__}: {err}"
    arr = np.asarray(vectors, dtype=float)
    return arr[:len(tb)], arr[len(tb):]


def _spread(samples: Sequence[RunSample], k: int) -> list[RunSample]:
    if len(samples) <= k:
        return list(samples)
    idx = np.linspace(0, len(samples) - 1, k).round().astype(int)
    return [samples[i] for i in idx]


def _embeddings(xb: NDArray[np.float64], xr: NDArray[np.float64],
                th: DriftThresholds) -> DriftSignal:
    name, test = "request_embeddings", "MMD² (RBF kernel), permutation test"
    nb, nr = len(xb), len(xr)
    short = _too_few(nb, nr, th.min_runs, "requests")
    if short is not None:
        return DriftSignal(name=name, test=test, status="insufficient data", alpha=th.alpha,
                           n_baseline=nb, n_recent=nr, detail=short)
    z = np.vstack([xb, xr])
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    off = d2[np.triu_indices(len(z), k=1)]
    med = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
    kernel = np.exp(-d2 / med)
    # MMD² (biased) = sᵀKs with s = +1/nb on baseline rows, -1/nr on recent rows; the
    # permutations are columns of S, all evaluated with one matrix product.
    s = np.concatenate([np.full(nb, 1 / nb), np.full(nr, -1 / nr)])
    observed = float(s @ kernel @ s)
    rng = np.random.default_rng(_SEED)
    perms = np.stack([rng.permutation(s) for _ in range(th.permutations)], axis=1)
    null = np.einsum("ip,ip->p", perms, kernel @ perms)
    threshold = float(np.quantile(null, 1 - th.alpha))
    p = float((1 + np.sum(null >= observed - 1e-12)) / (1 + th.permutations))
    crossed = observed > threshold and p < th.alpha
    mb, mr = xb.mean(axis=0), xr.mean(axis=0)
    denom = float(np.linalg.norm(mb) * np.linalg.norm(mr)) or 1.0
    cosine = 1 - float(mb @ mr) / denom
    return DriftSignal(name=name, test=test, status="crossed" if crossed else "ok",
                       statistic=observed, threshold=threshold, p_value=p, alpha=th.alpha,
                       n_baseline=nb, n_recent=nr,
                       detail=f"cosine distance between mean embeddings {cosine:.3f}; "
                              f"threshold is the {1 - th.alpha:.0%} quantile of "
                              f"{th.permutations} permutations")


def _ms(v: float) -> str:
    return f"{v / 1000:.2f} s" if v >= 10_000 else f"{v:.0f} ms"


# ---------------------------------------------------------------------------- windows, schedules


def resolve_windows(*, since: str | None = None, until: str | None = None,
                    baseline_since: str | None = None, baseline_until: str | None = None,
                    now: datetime | None = None) -> DriftWindows:
    """Windows from the CLI's time expressions (a duration ago such as ``24h``, or an ISO
    time). Defaults: recent = the 24 hours before ``until`` (now), baseline = the 7 days
    before the recent window. ``BadWindow`` says what is wrong."""
    now = now or datetime.now(UTC)
    r_until = parse_when(until, now=now) if until else now
    r_since = parse_when(since, now=now) if since else r_until - timedelta(hours=24)
    b_until = parse_when(baseline_until, now=now) if baseline_until else r_since
    b_since = parse_when(baseline_since, now=now) if baseline_since \
        else b_until - timedelta(days=7)
    try:
        return DriftWindows(baseline=_window("baseline", b_since, b_until),
                            recent=_window("recent", r_since, r_until))
    except ValidationError as err:
        raise BadWindow(_first_error(err)) from None


def relative_input(*, since: str | None = None, baseline_since: str | None = None,
                   baseline_until: str | None = None, agent: str | None = None,
                   tenant: str | None = None, include_synthetic: bool = False,
                   thresholds: DriftThresholds | None = None) -> DriftCheckInput:
    """A scheduled check's input from the CLI's durations (absolute times are refused: a
    schedule compares windows that move with it)."""
    def ago(name: str, text: str | None) -> timedelta | None:
        if text is None:
            return None
        try:
            return parse_duration(text)
        except BadWindow:
            raise BadWindow(f"{name} {text!r}: a scheduled check needs a duration before each "
                            f"run (e.g. 24h, 8d), not a fixed time") from None

    check = DriftCheckInput(recent=ago("--since", since) or timedelta(hours=24),
                            baseline_since=ago("--baseline-since", baseline_since),
                            baseline_until=ago("--baseline-until", baseline_until),
                            agent=agent, tenant=tenant, include_synthetic=include_synthetic,
                            thresholds=thresholds or DriftThresholds())
    try:
        check.windows_at(datetime.now(UTC))
    except (ValueError, ValidationError) as err:
        msg = _first_error(err) if isinstance(err, ValidationError) else str(err)
        raise BadWindow(msg) from None
    return check


def _window(name: str, since: datetime, until: datetime) -> Window:
    if since >= until:
        raise BadWindow(f"the {name} window is empty: it starts at {since:%Y-%m-%d %H:%M} and "
                        f"ends at {until:%Y-%m-%d %H:%M} (UTC)")
    return Window(since=since, until=until)


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    return str(e["msg"]).removeprefix("Value error, ")


async def schedule_checks(client: Client, *, schedule_id: str, every: timedelta,
                          check: DriftCheckInput, task_queue: str,
                          ) -> Literal["created", "updated"]:
    """Create (or replace the spec and action of) a Temporal Schedule that starts
    ``DriftWorkflow`` every ``every`` on ``task_queue``. Overlapping runs are skipped."""
    from temporalio.client import ScheduleActionStartWorkflow

    from stead.client import put_interval_schedule

    scope = ", ".join(f"{k} {v}" for k, v in (("agent", check.agent), ("tenant", check.tenant))
                      if v)
    action = ScheduleActionStartWorkflow(
        DRIFT_WORKFLOW, check, id=f"{schedule_id}-check", task_queue=task_queue,
        execution_timeout=max(every, timedelta(minutes=30)),
        static_summary=f"drift check: last {check.recent} vs baseline"
                       + (f" ({scope})" if scope else ""))
    done = await put_interval_schedule(client, schedule_id, action, every=every,
                                       if_exists="replace")
    assert done != "exists"  # replace never leaves one as it is
    return done


# ---------------------------------------------------------------------------- storage


async def record_check(pool: asyncpg.Pool, report: DriftReport, *,
                       source: str | None = None) -> int:
    """Store a report in ``stead_drift_checks``; returns its id. A ``source`` (the scheduled
    run's ``workflow_id/run_id``) makes a retried activity update its row, not add one."""
    w = report.windows
    signals = [s.model_dump(mode="json") for s in report.signals]
    async with pool.acquire() as conn:
        check_id = await conn.fetchval(
            "insert into stead_drift_checks(source, checked_at, baseline_since, baseline_until,"
            " recent_since, recent_until, agent, tenant, include_synthetic, embedder,"
            " thresholds, signals, crossed) values($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)"
            " on conflict (source) do update set checked_at=excluded.checked_at,"
            "  embedder=excluded.embedder, thresholds=excluded.thresholds,"
            "  signals=excluded.signals, crossed=excluded.crossed"
            " returning id",
            source, report.checked_at, w.baseline.since, w.baseline.until, w.recent.since,
            w.recent.until, report.agent, report.tenant, report.include_synthetic,
            report.embedder, report.thresholds.model_dump(mode="json"), signals,
            bool(report.crossed))
    return int(check_id)


async def load_check(pool: asyncpg.Pool, check_id: int) -> DriftReport | None:
    """The full report of a recorded check."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow("select * from stead_drift_checks where id=$1", check_id)
    if row is None:
        return None
    return DriftReport(
        checked_at=row["checked_at"], windows=_row_windows(row), agent=row["agent"],
        tenant=row["tenant"], include_synthetic=row["include_synthetic"],
        thresholds=DriftThresholds.model_validate(row["thresholds"]),
        embedder=row["embedder"],
        signals=[DriftSignal.model_validate(s) for s in row["signals"]])


async def list_checks(pool: asyncpg.Pool, *, agent: str | None = None,
                      tenant: str | None = None, limit: int = 20) -> list[DriftCheckRow]:
    """Recorded checks, newest first, optionally only those scoped to an agent/tenant."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "select id, checked_at, baseline_since, baseline_until, recent_since, recent_until,"
            " agent, tenant, crossed, source,"
            " array(select s->>'name' from jsonb_array_elements(signals) s"
            "       where s->>'status' = 'crossed') as crossed_signals"
            " from stead_drift_checks"
            " where ($1::text is null or agent = $1) and ($2::text is null or tenant = $2)"
            " order by checked_at desc, id desc limit $3", agent, tenant, limit)
    return [DriftCheckRow(id=r["id"], checked_at=r["checked_at"], windows=_row_windows(r),
                          agent=r["agent"], tenant=r["tenant"], crossed=r["crossed"],
                          crossed_signals=list(r["crossed_signals"]), source=r["source"])
            for r in rows]


def _row_windows(row: asyncpg.Record) -> DriftWindows:
    return DriftWindows(baseline=Window(since=row["baseline_since"], until=row["baseline_until"]),
                        recent=Window(since=row["recent_since"], until=row["recent_until"]))


def summarize(report: DriftReport, check_id: int) -> DriftCheckSummary:
    """What a scheduled run returns into its history about a stored report."""
    return DriftCheckSummary(
        check_id=check_id, checked_at=report.checked_at,
        crossed=[s.name for s in report.crossed],
        insufficient=[s.name for s in report.signals if s.status == "insufficient data"],
        signals=len(report.signals))


# ---------------------------------------------------------------------------- HTML


def html_report(check: DriftCheck) -> HtmlReport:
    """A page a person reads at a glance: verdict, signals table (crossed in red), latency
    histograms, success rate over time, and each signal against its threshold."""
    from stead.evals.report import HtmlReport

    rep = check.report
    w = rep.windows
    scope = ", ".join(f"{k} {v}" for k, v in (("agent", rep.agent), ("tenant", rep.tenant)) if v)
    page = HtmlReport("stead drift",
                      subtitle=f"recent {w.recent.label()} vs baseline {w.baseline.label()} "
                               f"(UTC){' · ' + scope if scope else ''} · checked "
                               f"{rep.checked_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC")
    crossed = [s.name for s in rep.crossed]
    short = [s.name for s in rep.signals if s.status == "insufficient data"]
    verdict = (f"{len(crossed)} of {len(rep.signals)} signals crossed their threshold: "
               + ", ".join(crossed) + "." if crossed
               else f"No signal crossed its threshold ({len(rep.signals)} signals).")
    if short:
        verdict += f" Insufficient data (not judged): {', '.join(short)}."
    page.section("Verdict", verdict)
    page.table(["signal", "status", "statistic", "threshold", "p-value", "baseline", "recent",
                "n (baseline / recent)", "detail"],
               [[s.name, s.status, _num(s.statistic), _num(s.threshold), _num(s.p_value),
                 _num(s.baseline), _num(s.recent), f"{s.n_baseline} / {s.n_recent}", s.detail]
                for s in rep.signals], status_column=1)

    page.section("Latency", "Run latency (start to finish) in each window.")
    page.histogram("run latency: baseline vs recent",
                   {"baseline": [s.latency_ms for s in check.baseline],
                    "recent": [s.latency_ms for s in check.recent]}, unit="ms")

    bucket = _bucket(check)
    page.section("Success rate over time",
                 f"Share of runs completed per {_span_words(bucket)} (the smallest period with "
                 f"about {_PER_BUCKET} runs or more in each window).")
    page.timeseries("success rate", {"baseline": _rate_series(check.baseline, bucket),
                                     "recent": _rate_series(check.recent, bucket)},
                    unit="completed share")

    page.section("Signals against thresholds",
                 "Each bar is the weaker of two ratios: change / its threshold, and "
                 f"significance / alpha = {rep.thresholds.alpha:g} (as -log10 p / -log10 "
                 "alpha). A signal crosses when both pass 1, so its bar passes the line.")
    page.bars("signals against thresholds", {s.name: _margin(s) for s in rep.signals
                                             if s.statistic is not None and s.threshold},
              unit="x threshold (weaker of change and significance)", threshold=1.0)

    seq_b = Counter(s.sequence for s in check.baseline)
    seq_r = Counter(s.sequence for s in check.recent)
    nb, nr = max(1, len(check.baseline)), max(1, len(check.recent))
    top = sorted(set(seq_b) | set(seq_r),
                 key=lambda c: -max(seq_b[c] / nb, seq_r[c] / nr))[:15]
    page.section("Tool-call sequences", "Share of runs per sequence, most common first.")
    page.table(["sequence", "baseline", "recent", "change"],
               [[c, f"{seq_b[c] / nb:.1%}", f"{seq_r[c] / nr:.1%}",
                 f"{(seq_r[c] / nr - seq_b[c] / nb) * 100:+.1f} pts"] for c in top])
    return page


_PER_BUCKET = 10
_BUCKETS = tuple(timedelta(hours=h) for h in (1, 3, 6, 12, 24, 24 * 7))


def _bucket(check: DriftCheck) -> timedelta:
    """The smallest period that holds about ``_PER_BUCKET`` runs in each window: hourly
    points of two runs each would plot noise, not a trend."""
    w = check.report.windows
    for size in _BUCKETS:
        if all(len(samples) / max(1.0, window.span / size) >= _PER_BUCKET
               for samples, window in ((check.baseline, w.baseline), (check.recent, w.recent))):
            return size
    fitting = [size for size in _BUCKETS if size <= w.recent.span]
    return fitting[-1] if fitting else _BUCKETS[0]


def _span_words(size: timedelta) -> str:
    if size == timedelta(days=1):
        return "day"
    if size == timedelta(days=7):
        return "week"
    hours = int(size.total_seconds() // 3600)
    return "hour" if hours == 1 else f"{hours} hours"


def _margin(s: DriftSignal) -> float:
    """How far a signal is past its threshold: min(change / threshold, -log10 p / -log10
    alpha); at least 1 exactly when both tests pass."""
    change = abs(s.statistic or 0.0) / (s.threshold or 1.0)
    if s.p_value is None or s.alpha is None:
        return change
    return min(change, -math.log10(max(s.p_value, 1e-300)) / -math.log10(s.alpha))


def _rate_series(samples: Sequence[RunSample], bucket: timedelta,
                 ) -> list[tuple[datetime, float]]:
    step = bucket.total_seconds()
    done: Counter[float] = Counter()
    total: Counter[float] = Counter()
    for s in samples:
        key = math.floor(s.started_at.timestamp() / step) * step
        total[key] += 1
        done[key] += s.succeeded
    return [(datetime.fromtimestamp(k, UTC), done[k] / total[k]) for k in sorted(total)]


def _num(v: float | None) -> str:
    if v is None:
        return "—"
    if v != 0 and abs(v) < 0.001:
        return f"{v:.1e}"
    return f"{v:.3f}"

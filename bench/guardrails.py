"""``python -m bench.guardrails``: what guardrail evaluation costs per tool call.

    python -m bench.guardrails                         # microbenchmark, ~10 s
    python -m bench.guardrails --iterations 20000 --json out.json
    python -m bench --workload policy                  # end to end: bench agent without / with
                                                       # a policy (see ``policy_workload``)

**Microbenchmark.** Calls the guardrail functions exactly as ``AgentWorkflow`` does, in
this process, on the two reference policies (``agents/ops/policy.yaml``,
``agents/refund/policy.yaml``) and the reference agents' real tool plans:

- per tool call, the gate: ``check_call`` (JSON + JSON Schema), ``score_call`` (risk
  factors, untrusted-echo check) and ``decide``;
- per run: ``route`` (before the first model call) and ``validate_output`` (on the answer).

Every gate case scores against 5 prior tool outputs of about 1 KB each as untrusted text
(as the workflow passes them: the tool messages' JSON), i.e. the situation of a run's sixth
call, the most expensive for the untrusted-echo check. Each case is timed call by call with
``time.perf_counter_ns`` after a warm-up; medians and p99 are per call.

**End to end.** ``policy_workload`` runs the bench agent (5 read tools) on the embedded stack
twice over, interleaved: with ``policy=None`` (stead's built-in allow-all policy: default
weights, no routing rules, no output rules beyond secrets) and with ``BENCH_POLICY``, the
reference thresholds and rules (both reference policies' routing rules, argument rules that
look at the bench tools' ``key`` argument, output secrets + PII + grounding) under which the
bench tools are allowed. The difference per run, divided by 5 calls, is the marginal cost of
a real policy. It cannot measure "guardrails off": ``AgentWorkflow`` has no such switch, and
runs without a policy still route, gate and record every decision.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stead.contracts.models import ToolCall, ToolPlan
from stead.contracts.policy import (
    ArgumentRule,
    HardLimit,
    OutputRules,
    Policy,
    RiskWeights,
    load_policy,
)
from stead.guardrails.calls import check_call
from stead.guardrails.decisions import RouteDecision
from stead.guardrails.output import validate_output
from stead.guardrails.risk import decide, score_call
from stead.guardrails.routing import route

ROOT = Path(__file__).resolve().parent.parent
OPS_POLICY = ROOT / "agents" / "ops" / "policy.yaml"
REFUND_POLICY = ROOT / "agents" / "refund" / "policy.yaml"
CALLS_PER_RUN = 5
"""Tool calls per run of the bench agent: per-run costs are spread over these."""
TARGET_US = 1000.0
"""Issue 3: guardrail evaluation adds under 1 ms per tool call."""


# ---------------------------------------------------------------------------- inputs


def _tool_message(tool: str, result: dict[str, Any]) -> str:
    """A tool output as the workflow keeps it for the gate (``_tool_message`` content)."""
    body = {"ok": True, "result": result, "tool": tool, "untrusted": True}
    return json.dumps(body, separators=(",", ":"), sort_keys=True, default=str)


def _pad_to(text_of: Callable[[int], str], size: int = 1024) -> str:
    """The first of ``text_of(1)``, ``text_of(2)``, ... that is at least ``size`` long."""
    n = 1
    while len(out := text_of(n)) < size:
        n += 1
    return out


_LOG_LINES = [
    "2026-11-25T10:41:{s:02d}Z ERROR connection pool exhausted (payments-db) after 5000 ms",
    "2026-11-25T10:41:{s:02d}Z WARN retrying POST /charge (attempt 2) trace=9f3a{s:02d}c1",
    "2026-11-25T10:41:{s:02d}Z ERROR upstream payments-db timeout req=r-77{s:02d}",
    "2026-11-25T10:41:{s:02d}Z INFO GET /health 200 3ms",
]


def ops_outputs() -> list[str]:
    """Five ~1 KB tool outputs of an ops run (statuses and logs of the fleet)."""
    def logs(service: str) -> Callable[[int], str]:
        return lambda n: _tool_message("recent_logs", {
            "service": service, "errors": n // 2,
            "lines": [_LOG_LINES[i % 4].format(s=i) for i in range(n)]})

    def status(service: str, rate: float, p95: int, version: str) -> Callable[[int], str]:
        return lambda n: _tool_message("service_status", {
            "service": service, "status": "degraded", "error_rate": rate, "p95_ms": p95,
            "version": version, "source": "metrics",
            "notes": [f"deploy {version} rolled out to zone eu-west-{i} at 10:{30 + i}Z"
                      for i in range(n)]})

    return [
        _pad_to(lambda n: _tool_message("list_services", {"services": [
            f"{s}-{i}" for i in range(n) for s in ("checkout-api", "payments-db",
                                                   "search-worker", "auth-service")]})),
        _pad_to(status("checkout-api", 0.12, 840, "2026.11.3")),
        _pad_to(logs("checkout-api")),
        _pad_to(status("payments-db", 0.0, 2300, "16.4")),
        _pad_to(logs("payments-db")),
    ]


def refund_outputs() -> list[str]:
    """Five ~1 KB tool outputs of a refund run (orders, earlier refunds and notices)."""
    def order(oid: str, paid: str, refunded: str, left: str) -> Callable[[int], str]:
        return lambda n: _tool_message("lookup_order", {
            "order_id": oid, "customer": "Mila Novak", "item": "Espresso machine EM-300",
            "status": "delivered", "currency": "EUR", "paid": paid, "refunded": refunded,
            "refundable": left,
            "history": [f"2026-11-{10 + i:02d} shipment event {i}: parcel scanned at hub "
                        f"DE-{4100 + i}" for i in range(n)]})

    def receipt(rid: str, oid: str, amount: str, left: str) -> Callable[[int], str]:
        return lambda n: _tool_message("issue_refund", {
            "refund_id": rid, "order_id": oid, "amount": amount, "currency": "EUR",
            "refunded_total": amount, "refundable_left": left, "created": True,
            "ledger": [f"entry {i}: posted to PSP batch B-{88000 + i}" for i in range(n)]})

    return [
        _pad_to(order("ORD-1001", "249.00", "0.00", "249.00")),
        _pad_to(order("ORD-1004", "120.00", "0.00", "120.00")),
        _pad_to(receipt("RF-700013", "ORD-1001", "30.00", "219.00")),
        _pad_to(lambda n: _tool_message("notify_customer", {
            "notification_id": "MSG-312", "order_id": "ORD-1001", "channel": "email",
            "sent": True, "message": "Your refund of 30.00 EUR is on its way. " * n})),
        _pad_to(order("ORD-1007", "89.90", "20.00", "69.90")),
    ]


OPS_REQUEST = ("checkout-api has been throwing 502s since 10:40 and customers cannot pay. "
               "Please check its status and recent logs, open an urgent ticket with what you "
               "find, and restart it if it is down. Contact: oncall team, pager rotation A.")
OPS_SECURITY_REQUEST = ("We think auth-service credentials leaked in a breach last night. "
                        "Check auth-service and restart it to rotate the sessions.")
REFUND_REQUEST = ("Hi, I'm Mila Novak. My espresso machine from order ORD-1001 arrived with a "
                  "cracked water tank. Please refund 30 EUR for the damage; I want to keep the "
                  "machine. Thanks, Mila (mila.novak@example.com)")

OPS_ANSWER = ("checkout-api is degraded: error rate 12.0%, p95 840 ms, version 2026.11.3. "
              "Recent errors: connection pool exhausted (payments-db) after 5000 ms; upstream "
              "payments-db timeout. I opened ticket OPS-1042 (urgent) and did not restart it "
              "because it is not down.")
REFUND_ANSWER = ("I refunded 30.00 EUR on order ORD-1001 (refund RF-700013); 219.00 EUR is "
                 "left to refund on the order. Mila Novak was notified by email (MSG-312).")


def _plans(agent_tools: Sequence[Any]) -> dict[str, ToolPlan]:
    return {t.name: t.plan() for t in agent_tools}


def reference_tools(tmp: Path) -> tuple[dict[str, ToolPlan], dict[str, ToolPlan]]:
    """The ops and refund agents' tool plans (their worlds live in ``tmp``, never touched)."""
    from stead.agents.ops.tools import ops_tools
    from stead.agents.ops.world import OpsWorld
    from stead.agents.refund.tools import refund_tools
    from stead.agents.refund.world import RefundWorld

    return (_plans(ops_tools(OpsWorld(tmp / "ops.sqlite"))),
            _plans(refund_tools(RefundWorld(tmp / "refund.sqlite"))))


# ---------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class GateCase:
    """One proposed tool call, as the gate sees it."""

    name: str
    policy: Policy
    tools: dict[str, ToolPlan]
    call: ToolCall
    request: str
    untrusted: list[str]
    routed: RouteDecision
    expect: str
    """The action the gate must reach (checked once, so a case measures what it says)."""
    prior_failures: int = 0


@dataclass(frozen=True)
class RunCase:
    """The once-per-run guardrails of one reference agent: route, then validate the answer."""

    name: str
    policy: Policy
    request: str
    metadata: dict[str, str]
    answer: str
    evidence: list[str]
    expect_route: str


def _call(name: str, **args: Any) -> ToolCall:
    return ToolCall(id=f"call_{uuid.uuid4().hex[:8]}", name=name, arguments=json.dumps(args))


def cases(tmp: Path) -> tuple[list[GateCase], list[RunCase]]:
    ops, refund = load_policy(OPS_POLICY), load_policy(REFUND_POLICY)
    ops_tools, refund_tools = reference_tools(tmp)
    ops_out, refund_out = ops_outputs(), refund_outputs()

    def routed(policy: Policy, text: str, **metadata: str) -> RouteDecision:
        return route(text=text, tenant="acme", metadata=metadata, policy=policy)

    ops_route = routed(ops, OPS_REQUEST, role="sre")
    strict_route = routed(ops, OPS_SECURITY_REQUEST, role="sre")
    refund_route = routed(refund, REFUND_REQUEST, role="customer")
    assert strict_route.profile == "strict", strict_route
    ticket_body = ("Request: " + OPS_REQUEST + "\nStatus: degraded (error rate 12.0%, p95 840 "
                   "ms, version 2026.11.3)\nRecent errors:\n  "
                   + "\n  ".join(_LOG_LINES[i % 4].format(s=i) for i in (0, 2, 4, 6, 8)))

    def ops_case(name: str, call: ToolCall, expect: str, *, route_: RouteDecision = ops_route,
                 request: str = OPS_REQUEST) -> GateCase:
        return GateCase(name, ops, ops_tools, call, request, ops_out, route_, expect)

    def refund_case(name: str, call: ToolCall, expect: str, failures: int = 0) -> GateCase:
        return GateCase(name, refund, refund_tools, call, REFUND_REQUEST, refund_out,
                        refund_route, expect, failures)

    gates = [
        ops_case("ops   service_status checkout-api",
                 _call("service_status", service="checkout-api"), "allow"),
        ops_case("ops   recent_logs payments-db limit=50",
                 _call("recent_logs", service="payments-db", limit=50), "allow"),
        ops_case("ops   create_ticket quoting 5 log lines",
                 _call("create_ticket", service="checkout-api", priority="urgent",
                       title="checkout-api degraded: payments-db pool exhausted",
                       body=ticket_body), "allow"),
        ops_case("ops   restart_service checkout-api",
                 _call("restart_service", service="checkout-api",
                       reason="requested: restart it if it is down (status degraded)"), "ask"),
        ops_case("ops   restart_service, strict profile",
                 _call("restart_service", service="auth-service",
                       reason="security incident: rotate sessions"), "deny",
                 route_=strict_route, request=OPS_SECURITY_REQUEST),
        refund_case("refund lookup_order ORD-1001",
                    _call("lookup_order", order_id="ORD-1001"), "allow"),
        refund_case("refund issue_refund 30 (from the request)",
                    _call("issue_refund", order_id="ORD-1001", amount=30,
                          reason="cracked water tank on arrival"), "allow"),
        refund_case("refund issue_refund 120 (from a tool output)",
                    _call("issue_refund", order_id="ORD-1004", amount=120,
                          reason="full refund of what is left"), "ask"),
        refund_case("refund issue_refund 5000 (hard limit)",
                    _call("issue_refund", order_id="ORD-1001", amount=5000,
                          reason="customer asked for compensation"), "deny"),
        refund_case("refund notify_customer, 1 failed call before",
                    _call("notify_customer", order_id="ORD-1001",
                          message="Your refund of 30.00 EUR for order ORD-1001 is on its way "
                                  "to your original payment method; it usually arrives within "
                                  "3-5 business days. We are sorry about the cracked tank."),
                    "allow", failures=1),
    ]
    runs = [
        RunCase("ops    (output: secrets)", ops, OPS_REQUEST, {"role": "sre"},
                OPS_ANSWER, ops_out, "allow"),
        RunCase("refund (output: secrets, PII, grounding)", refund,
                REFUND_REQUEST, {"role": "customer"}, REFUND_ANSWER, refund_out, "allow"),
    ]
    return gates, runs


# ---------------------------------------------------------------------------- timing


def gate(c: GateCase) -> str:
    """What ``ToolCalls.call`` + ``_gate`` (``workflows/_toolcall.py``) evaluate for one proposed
    call."""
    verdict = check_call(c.call, c.tools)
    assert verdict.arguments is not None, verdict.error
    plan = c.tools[c.call.name]
    risk = score_call(plan, verdict.arguments, policy=c.policy, route=c.routed,
                      prior_failures=c.prior_failures, untrusted_texts=c.untrusted,
                      request_text=c.request)
    return decide(plan, verdict.arguments, risk, policy=c.policy, route=c.routed).action


@dataclass
class Timing:
    name: str
    n: int
    median_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    min_us: float
    cpu_p99_us: float = 0.0
    """p99 of thread CPU time per call (a second pass), µs."""
    cold_n: int = 0
    cold_median_us: float = 0.0
    cold_p90_us: float = 0.0
    """Calls timed right after evicting the CPU caches (see ``Evictor``), µs."""
    detail: dict[str, float] = field(default_factory=dict)
    """Medians of the parts, µs."""
    note: str = ""


def _time(fn: Callable[[], object], iterations: int, warmup: int, *,
          clock: Callable[[], int] = time.perf_counter_ns) -> list[int]:
    for _ in range(warmup):
        fn()
    out = [0] * iterations
    for i in range(iterations):
        t0 = clock()
        fn()
        out[i] = clock() - t0
    return out


class Evictor:
    """Copies 64 MB between two buffers, which flushes the CPU caches (the L3 of the
    reference machine is 32 MB), as the work between two gate calls does in a real worker:
    other workflow and SDK code, gRPC, and the Temporal server and PostgreSQL sharing the
    cores. In a tight loop a call finds its code and data in cache; in a worker it does not,
    and on the reference machine that makes it 3-5x slower."""

    def __init__(self, mib: int = 64) -> None:
        self.src = bytearray(b"\x01") * (mib << 20)
        self.dst = bytearray(len(self.src))
        self()  # fault the pages in now, not during the first timed call

    def __call__(self) -> None:
        self.dst[:] = self.src


def _time_cold(fn: Callable[[], object], iterations: int, evict: Evictor) -> list[int]:
    fn()
    out = [0] * iterations
    clock = time.perf_counter_ns
    for i in range(iterations):
        evict()
        t0 = clock()
        fn()
        out[i] = clock() - t0
    return out


def _cold(t: Timing, fn: Callable[[], object], iterations: int, evict: Evictor | None) -> None:
    if evict is None or iterations <= 0:
        return
    us = sorted(x / 1000 for x in _time_cold(fn, iterations, evict))
    t.cold_n = len(us)
    t.cold_median_us = statistics.median(us)
    t.cold_p90_us = statistics.quantiles(us, n=10, method="inclusive")[8] if len(us) > 1 \
        else us[0]


def _cpu_p99(fn: Callable[[], object], iterations: int) -> float:
    """p99 in µs of the thread's CPU time per call: what the call costs without the time
    the thread spent preempted by other processes (a loaded 2-vCPU box)."""
    ns = sorted(_time(fn, iterations, 0, clock=time.thread_time_ns))
    return statistics.quantiles(ns, n=100, method="inclusive")[98] / 1000


def _summary(name: str, ns: list[int], note: str = "") -> Timing:
    us = sorted(x / 1000 for x in ns)
    q = statistics.quantiles(us, n=100, method="inclusive")
    return Timing(name=name, n=len(us), median_us=statistics.median(us), p90_us=q[89],
                  p99_us=q[98], mean_us=statistics.fmean(us), min_us=us[0], note=note)


def time_gate(c: GateCase, iterations: int, warmup: int, cold: int = 0,
              evict: Evictor | None = None) -> Timing:
    action = gate(c)
    if action != c.expect:
        raise AssertionError(f"{c.name}: gate said {action!r}, expected {c.expect!r}")
    whole = _summary(c.name, _time(lambda: gate(c), iterations, warmup),
                     note=f"{action}")
    whole.cpu_p99_us = _cpu_p99(lambda: gate(c), iterations)
    _cold(whole, lambda: gate(c), cold, evict)
    verdict = check_call(c.call, c.tools)
    args = verdict.arguments
    assert args is not None
    plan = c.tools[c.call.name]
    risk = score_call(plan, args, policy=c.policy, route=c.routed,
                      prior_failures=c.prior_failures, untrusted_texts=c.untrusted,
                      request_text=c.request)
    parts: dict[str, Callable[[], object]] = {
        "check_call": lambda: check_call(c.call, c.tools),
        "score_call": lambda: score_call(plan, args, policy=c.policy, route=c.routed,
                                         prior_failures=c.prior_failures,
                                         untrusted_texts=c.untrusted, request_text=c.request),
        "decide": lambda: decide(plan, args, risk, policy=c.policy, route=c.routed),
    }
    part_n = max(iterations // 4, 100)
    whole.detail = {k: statistics.median(_time(f, part_n, warmup)) / 1000
                    for k, f in parts.items()}
    if risk.untrusted:
        whole.note += ", echoes untrusted"
    return whole


def time_run(c: RunCase, iterations: int, warmup: int, cold: int = 0,
             evict: Evictor | None = None) -> Timing:
    def routed() -> RouteDecision:
        return route(text=c.request, tenant="acme", metadata=c.metadata, policy=c.policy)

    def validated() -> int:
        return len(validate_output(c.answer, rules=c.policy.output, evidence=c.evidence,
                                   request_text=c.request))

    r = routed()
    if r.action != c.expect_route:
        raise AssertionError(f"{c.name}: routed {r.action!r}, expected {c.expect_route!r}")
    problems = validate_output(c.answer, rules=c.policy.output, evidence=c.evidence,
                               request_text=c.request)
    if problems:
        raise AssertionError(f"{c.name}: the answer does not validate: {problems}")

    def both() -> None:
        routed()
        validated()

    whole = _summary(c.name, _time(both, iterations, warmup), note="once per run")
    whole.cpu_p99_us = _cpu_p99(both, iterations)
    _cold(whole, both, cold, evict)
    part_n = max(iterations // 4, 100)
    whole.detail = {"route": statistics.median(_time(routed, part_n, warmup)) / 1000,
                    "validate_output": statistics.median(_time(validated, part_n, warmup))
                    / 1000}
    return whole


def _number_scan(untrusted: list[str], iterations: int, warmup: int) -> float:
    from stead.guardrails.risk import _number_tokens  # diagnostic: the part that dominates

    def scan() -> set[float]:
        return set().union(*(_number_tokens(t.casefold()) for t in untrusted))

    return statistics.median(_time(scan, max(iterations // 4, 100), warmup)) / 1000


@dataclass
class MicroResult:
    iterations: int
    warmup: int
    untrusted_bytes: list[int]
    gates: list[Timing]
    runs: list[Timing]
    per_call_median_us: float
    """Worst case over gate cases of the median gate time, plus the per-run guardrails of
    the more expensive agent spread over 5 calls."""
    per_call_p99_us: float
    cold: int
    """Calls per case timed with cold caches."""
    per_call_cold_median_us: float
    """As ``per_call_median_us``, from the cold-cache timings."""
    number_scan_us: float
    """Median time score_call spends collecting the number tokens of the 5 untrusted texts
    (``stead.guardrails.risk._number_tokens``), which it does for every call that echoes no
    string, whether or not the arguments hold a number."""
    gc: str
    seconds: float
    scaling: list[tuple[int, float]] = field(default_factory=list)
    """(untrusted KiB, hot median µs) of the first gate case as a run's tool outputs grow:
    each call scans everything the run's tools returned so far."""
    what_if: list[dict[str, float | str]] = field(default_factory=list)
    """With ``--what-if``: per gate case, hot and cold medians with the two caches of
    ``what_if_caches`` in place (``scaling`` repeated too, as ``scaling_cached``)."""
    scaling_cached: list[tuple[int, float]] = field(default_factory=list)


@contextlib.contextmanager
def what_if_caches() -> Iterator[None]:
    """Bench-only, in this process: the two caches suggested in bench/RESULTS.md, to measure
    what they would save. Product code is unchanged.

    - ``stead.guardrails.risk._number_tokens`` memoised per text (the untrusted texts of a run
      only grow, so each would be scanned once instead of at every call);
    - ``stead.guardrails.calls.Draft202012Validator`` built once per schema object (a run's tool
      plans keep their ``parameters`` dicts for the whole run)."""
    import stead.guardrails.calls as calls
    import stead.guardrails.risk as risk

    names = ((risk, "_number_tokens"), (calls, "Draft202012Validator"))
    saved = [(module, name, getattr(module, name)) for module, name in names]
    tokens, validator = saved[0][2], saved[1][2]
    built: dict[int, tuple[object, Any]] = {}

    def cached_validator(schema: Any) -> Any:
        hit = built.get(id(schema))
        if hit is None or hit[0] is not schema:
            hit = built[id(schema)] = (schema, validator(schema))
        return hit[1]

    patched = (functools.lru_cache(maxsize=4096)(tokens), cached_validator)
    for (module, name), value in zip(names, patched, strict=True):
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


SCALING_OUTPUTS = (1, 5, 10, 20, 50)
"""How many ~1 KB tool outputs the scaling table scores against."""


def _scaling(c: GateCase, iterations: int, warmup: int) -> list[tuple[int, float]]:
    outputs = c.untrusted * (max(SCALING_OUTPUTS) // len(c.untrusted) + 1)
    out = []
    for n in SCALING_OUTPUTS:
        grown = dataclasses.replace(c, untrusted=outputs[:n])
        kib = round(sum(len(t.encode()) for t in grown.untrusted) / 1024)
        ns = _time(functools.partial(gate, grown), max(iterations // 10, 50), warmup // 10)
        out.append((kib, statistics.median(ns) / 1000))
    return out


def run_micro(iterations: int = 5000, warmup: int = 500, cold: int = 200, *,
              no_gc: bool = False, what_if: bool = False,
              progress: Callable[[str], None] = print) -> MicroResult:
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stead-bench-guardrails-") as tmp:
        gates, runs = cases(Path(tmp))
    evict = Evictor() if cold > 0 else None
    if no_gc:
        gc.disable()
    try:
        gate_t = []
        for c in gates:
            progress(f"gate: {c.name}")
            gate_t.append(time_gate(c, iterations, warmup, cold, evict))
        run_t = []
        for r in runs:
            progress(f"per run: {r.name}")
            run_t.append(time_run(r, iterations, warmup, cold, evict))
    finally:
        if no_gc:
            gc.enable()
    scan = _number_scan(gates[0].untrusted, iterations, warmup)
    progress("scaling with the size of the run's tool outputs")
    scaling = _scaling(gates[0], iterations, warmup)
    worst_run_med = max(t.median_us for t in run_t)
    worst_run_p99 = max(t.p99_us for t in run_t)
    cached: list[dict[str, float | str]] = []
    scaling_cached: list[tuple[int, float]] = []
    if what_if:
        progress("what if: the same gate cases with the two caches (bench-only patch)")
        with what_if_caches():
            for c, before in zip(gates, gate_t, strict=True):
                after = time_gate(c, max(iterations // 5, 200), warmup, cold, evict)
                cached.append({"case": c.name, "hot_median_us": before.median_us,
                               "cached_hot_median_us": after.median_us,
                               "cold_median_us": before.cold_median_us,
                               "cached_cold_median_us": after.cold_median_us})
            scaling_cached = _scaling(gates[0], iterations, warmup)
    return MicroResult(
        iterations=iterations, warmup=warmup,
        untrusted_bytes=[len(t.encode()) for t in gates[0].untrusted],
        gates=gate_t, runs=run_t,
        per_call_median_us=max(t.median_us for t in gate_t) + worst_run_med / CALLS_PER_RUN,
        per_call_p99_us=max(t.p99_us for t in gate_t) + worst_run_p99 / CALLS_PER_RUN,
        cold=cold,
        per_call_cold_median_us=(max(t.cold_median_us for t in gate_t)
                                 + max(t.cold_median_us for t in run_t) / CALLS_PER_RUN),
        number_scan_us=scan,
        gc="disabled while timing" if no_gc else "enabled (as in a worker)",
        seconds=time.perf_counter() - began, scaling=scaling, what_if=cached,
        scaling_cached=scaling_cached)


def print_micro(res: MicroResult, machine: dict[str, object], command: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from bench.report import print_machine

    con = Console(width=max(Console().width, 175))
    t = Table(title=f"Gate per tool call: check_call + score_call + decide, µs (hot: "
                    f"{res.iterations} calls in a loop; cold: {res.cold} calls after evicting "
                    f"the caches; untrusted = 5 tool outputs of {min(res.untrusted_bytes)}-"
                    f"{max(res.untrusted_bytes)} B)")
    for col in ("case", "gate says", "hot median", "p90", "p99", "p99 cpu", "cold median",
                "cold p90", "check_call", "score_call", "decide"):
        t.add_column(col, justify="left" if col in ("case", "gate says") else "right",
                     no_wrap=True)
    for g in res.gates:
        t.add_row(g.name, g.note, *(f"{v:.1f}" for v in (
            g.median_us, g.p90_us, g.p99_us, g.cpu_p99_us, g.cold_median_us, g.cold_p90_us,
            g.detail["check_call"], g.detail["score_call"], g.detail["decide"])))
    con.print(t)
    con.print(f"(check_call, score_call, decide: hot medians.) score_call's untrusted-number "
              f"scan of the 5 outputs alone: hot median {res.number_scan_us:.0f} µs; it is "
              f"skipped only when a string argument echoes the outputs.")
    t = Table(title=f"Gate of '{res.gates[0].name.split(maxsplit=1)[1]}' as the run's tool "
                    f"outputs grow (hot median, µs)")
    t.add_column("tool outputs so far")
    t.add_column("untrusted KiB", justify="right")
    t.add_column("gate µs", justify="right")
    if res.scaling_cached:
        t.add_column("with the caches", justify="right")
    for i, (n, (kib, us)) in enumerate(zip(SCALING_OUTPUTS, res.scaling, strict=True)):
        extra = [f"{res.scaling_cached[i][1]:.0f}"] if res.scaling_cached else []
        t.add_row(f"{n} x ~1 KB", str(kib), f"{us:.0f}", *extra)
    con.print(t)
    if res.what_if:
        t = Table(title="What if: gate per call with a per-text number-token cache and a "
                        "per-schema validator cache (bench-only patch), µs")
        for col in ("case", "hot median", "cached", "cold median", "cached "):
            t.add_column(col, justify="left" if col == "case" else "right", no_wrap=True)
        for w in res.what_if:
            t.add_row(str(w["case"]), *(f"{float(w[k]):.1f}" for k in (
                "hot_median_us", "cached_hot_median_us", "cold_median_us",
                "cached_cold_median_us")))
        con.print(t)
    t = Table(title="Once per run: route + validate_output, µs")
    for col in ("policy", "hot median", "p90", "p99", "p99 cpu", "cold median", "cold p90",
                "route", "validate_output", f"cold median / {CALLS_PER_RUN}"):
        t.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    for r in res.runs:
        t.add_row(r.name, *(f"{v:.1f}" for v in (
            r.median_us, r.p90_us, r.p99_us, r.cpu_p99_us, r.cold_median_us, r.cold_p90_us,
            r.detail["route"], r.detail["validate_output"],
            r.cold_median_us / CALLS_PER_RUN)))
    con.print(t)
    worst = max(res.per_call_median_us, res.per_call_cold_median_us)
    verdict = "within" if worst < TARGET_US else "NOT within"
    con.print(f"[bold]guardrails per tool call, worst case: hot median "
              f"{res.per_call_median_us:.0f} µs (p99 {res.per_call_p99_us:.0f} µs), cold "
              f"median {res.per_call_cold_median_us:.0f} µs[/] ({verdict} the "
              f"{TARGET_US:.0f} µs target). Worst case = slowest gate case + slowest per-run "
              f"guardrails / {CALLS_PER_RUN}. GC {res.gc}.")
    print_machine(con, machine, command, res.seconds)


# ---------------------------------------------------------------------------- end to end


def bench_policy() -> Policy:
    """The reference policies' thresholds and rules, aimed at the bench agent's tools.

    Routing: every rule of both reference policies (PII refusal, prompt-injection patterns,
    guest and viewer roles, security-incident keywords), so the request goes through all
    their detectors. Thresholds, profiles and approvals: ops's. Risk: argument rules that
    look at every call's ``key`` (production-name patterns) and ``amount``, and a hard
    limit on ``lookup_5``. Output: secrets, card/IBAN PII and grounding, like refund's.
    None of it fires on the bench run: the lookups score 0.05 (tier low + read) and are
    allowed, and the answer is grounded in the tool results.
    """
    ops, refund = load_policy(OPS_POLICY), load_policy(REFUND_POLICY)
    routing = list(refund.routing)
    routing += [r for r in ops.routing if r.name not in {x.name for x in routing}]
    return Policy(
        id="bench-reference", version=1,
        description="Reference thresholds and rules (ops + refund) for the bench agent.",
        routing=routing, thresholds=ops.thresholds, profiles=ops.profiles,
        risk=RiskWeights(
            routes=ops.risk.routes, max_failure_risk=refund.risk.max_failure_risk,
            arguments=[
                ArgumentRule(field="key", matches=["^(checkout|payments|auth)-",
                                                   "(^|-)prod(uction)?(-|$)"],
                             add=0.15, label="production key"),
                ArgumentRule(field="amount", above=50, add=0.2, label="amount above 50")]),
        hard_limits=[HardLimit(tool="lookup_5", field="amount", above=1000,
                               reason="hard ceiling")],
        approvals=ops.approvals,
        output=OutputRules(secrets=True, pii=refund.output.pii, grounding=True))


POLICY_AGENT = "bench-policy"
NO_POLICY, WITH_POLICY = "no policy", "reference policy"
VARIANTS = (NO_POLICY, WITH_POLICY)
METRICS = {
    "latency_ms": "client latency (start -> result), median",
    "server_ms": "server total (started -> completed), median",
    "wft_worker_ms": "workflow tasks on the worker (where guardrails run), median",
    "python_cpu_ms": "CPU of this process (client + workers), mean",
}
"""Per-run metrics. CPU comes from /proc in clock ticks (10 ms), too coarse for a median of
single runs, so its statistic is the mean."""


def _stat(metric: str) -> Callable[[Sequence[float]], float]:
    return statistics.fmean if metric == "python_cpu_ms" else statistics.median


@dataclass
class VariantRuns:
    agent: str
    policy_ref: str = ""
    values: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in METRICS})
    history_bytes: float = 0.0
    gate_us: list[float] = field(default_factory=list)
    """In the worker, one entry per tool call: check_call + score_call + decide, µs."""
    per_run_us: dict[str, list[float]] = field(default_factory=dict)
    """In the worker, per run: µs in each guardrail function (all calls of the run)."""

    def run_total_us(self) -> list[float]:
        """In the worker, per run: µs in all guardrail functions together."""
        return [sum(parts) for parts in zip(*self.per_run_us.values(), strict=True)]


def _quantile(values: Sequence[float], pct: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


@dataclass
class PolicyResult:
    runs: int
    warmup: int
    variants: dict[str, VariantRuns]
    medians: dict[str, dict[str, float]]
    """metric -> variant -> median over runs (mean for CPU)."""
    difference: dict[str, tuple[float, float, float]]
    """metric -> (with - without; 95% bootstrap interval low, high), ms per run."""
    seconds: float


def _bootstrap_diff(a: list[float], b: list[float],
                    stat: Callable[[Sequence[float]], float] = statistics.median,
                    reps: int = 4000, seed: int = 3) -> tuple[float, float]:
    """95% percentile-bootstrap interval of stat(b) - stat(a)."""
    import random

    rng = random.Random(seed)
    diffs = sorted(stat(rng.choices(b, k=len(b))) - stat(rng.choices(a, k=len(a)))
                   for _ in range(reps))
    return diffs[int(0.025 * reps)], diffs[int(0.975 * reps) - 1]


_IN_SITU = (("stead.guardrails.calls", "check_call"), ("stead.guardrails.risk", "score_call"),
            ("stead.guardrails.risk", "decide"), ("stead.guardrails.routing", "route"),
            ("stead.guardrails.output", "validate_output"))
GATE_FUNCTIONS = ("check_call", "score_call", "decide")


class InSitu:
    """Times the guardrail functions where the workflow really calls them, in the worker.

    ``AgentWorkflow`` imports them from passed-through modules each time the sandbox loads
    it, so replacing the module attributes before the worker starts is enough (as
    ``bench/instrument.py`` does). The wrapper costs two ``perf_counter_ns`` calls."""

    def __init__(self) -> None:
        self.ns: dict[str, list[int]] = {name: [] for _, name in _IN_SITU}
        self._saved: list[tuple[Any, str, Any]] = []

    def install(self) -> None:
        import functools
        import importlib

        for mod_name, name in _IN_SITU:
            module = importlib.import_module(mod_name)
            orig = getattr(module, name)
            sink = self.ns[name]

            def timed(*a: Any, _orig: Any = orig, _sink: list[int] = sink, **k: Any) -> Any:
                t0 = time.perf_counter_ns()
                try:
                    return _orig(*a, **k)
                finally:
                    _sink.append(time.perf_counter_ns() - t0)

            self._saved.append((module, name, orig))
            setattr(module, name, functools.wraps(orig)(timed))

    def uninstall(self) -> None:
        for module, name, orig in reversed(self._saved):
            setattr(module, name, orig)
        self._saved.clear()

    def take(self) -> dict[str, list[int]]:
        """Durations recorded since the last call, by function (ns), in call order."""
        out = {name: list(v) for name, v in self.ns.items()}
        for v in self.ns.values():
            v.clear()
        return out


async def policy_workload(runs: int = 30, warmup: int = 5, *,
                          progress: Callable[[str], None] = print) -> PolicyResult:
    """The bench agent without and with ``bench_policy()``, interleaved, on one stack."""
    from bench.agent import bench_agent, bench_tools

    began = time.perf_counter()
    tools = bench_tools()
    agents = {NO_POLICY: bench_agent(tools=tools),
              WITH_POLICY: bench_agent(name=POLICY_AGENT, tools=tools, policy=bench_policy())}
    out = {v: VariantRuns(agent=agents[v].name) for v in VARIANTS}
    for v in VARIANTS:
        out[v].per_run_us = {name: [] for _, name in _IN_SITU}
    probe = InSitu()
    probe.install()
    try:
        await _policy_runs(runs, warmup, agents, out, probe, progress)
    finally:
        probe.uninstall()
    assert out[NO_POLICY].policy_ref == "allow-all@1", out[NO_POLICY].policy_ref
    assert out[WITH_POLICY].policy_ref == bench_policy().ref, out[WITH_POLICY].policy_ref
    medians = {m: {v: _stat(m)(out[v].values[m]) for v in VARIANTS} for m in METRICS}
    difference = {}
    for m in METRICS:
        lo, hi = _bootstrap_diff(out[NO_POLICY].values[m], out[WITH_POLICY].values[m],
                                 _stat(m))
        difference[m] = (medians[m][WITH_POLICY] - medians[m][NO_POLICY], lo, hi)
    return PolicyResult(runs=runs, warmup=warmup, variants=out, medians=medians,
                        difference=difference, seconds=time.perf_counter() - began)


async def _policy_runs(runs: int, warmup: int, agents: dict[str, Any],
                       out: dict[str, VariantRuns], probe: InSitu,
                       progress: Callable[[str], None]) -> None:
    from bench import breakdown, cpu
    from bench.agent import REQUEST
    from bench.runner import STEAD, bench_stack
    from stead.client import start_run
    from stead.contracts.models import RunRequest, RunResult

    async with bench_stack(progress=progress, agents=list(agents.values())) as h:
        async def one(variant: str) -> tuple[float, str, float]:
            before = cpu.snapshot()
            t0 = time.perf_counter()
            handle = await start_run(h.client, RunRequest(agent=agents[variant].name,
                                                          input=REQUEST),
                                     temporal=h.stead_settings.temporal)
            await h.finish(STEAD, handle)
            ms = (time.perf_counter() - t0) * 1000
            used = cpu.delta(before, cpu.snapshot())
            result = await handle.result()
            assert isinstance(result, RunResult)
            out[variant].policy_ref = result.policy
            return ms, handle.id, used.get("python", 0.0) * 1000

        progress(f"policy workload: {warmup} warm-up run(s) per variant")
        for i in range(warmup):
            for v in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
                await one(v)
        probe.take()
        progress(f"policy workload: {runs} sequential run(s) per variant, interleaved")
        ids: dict[str, list[str]] = {v: [] for v in VARIANTS}
        for i in range(runs):
            for v in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
                ms, wid, py = await one(v)
                took = probe.take()
                for name, durations in took.items():
                    out[v].per_run_us[name].append(sum(durations) / 1000)
                out[v].gate_us.extend(sum(parts) / 1000 for parts in zip(
                    *(took[name] for name in GATE_FUNCTIONS), strict=True))
                out[v].values["latency_ms"].append(ms)
                out[v].values["python_cpu_ms"].append(py)
                ids[v].append(wid)
        progress("policy workload: reading event histories")
        worker_segments = [seg for seg in breakdown.SEGMENTS
                           if seg.startswith("workflow task: worker")]
        for v in VARIANTS:
            bds = await breakdown.fetch(h.client, ids[v])
            out[v].values["server_ms"] = [b.total_ms for b in bds]
            out[v].values["wft_worker_ms"] = [
                sum(b.segments_ms.get(seg, 0.0) for seg in worker_segments) for b in bds]
            out[v].history_bytes = statistics.median(b.history_bytes for b in bds)


def print_policy(res: PolicyResult, machine: dict[str, object], command: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from bench.report import print_machine

    con = Console(width=max(Console().width, 175))
    a, b = res.variants[NO_POLICY], res.variants[WITH_POLICY]
    t = Table(title=f"Bench agent without / with a policy, ms per run ({res.runs} "
                    f"sequential runs each, interleaved; 6 model + {CALLS_PER_RUN} tool "
                    f"activities per run)")
    for col in ("metric", f"no policy ({a.policy_ref})", f"with policy ({b.policy_ref})",
                "difference", "95% interval", f"difference / {CALLS_PER_RUN} calls"):
        t.add_column(col, justify="left" if col == "metric" else "right", no_wrap=True)
    for m, label in METRICS.items():
        d, lo, hi = res.difference[m]
        t.add_row(label, f"{res.medians[m][NO_POLICY]:.1f}", f"{res.medians[m][WITH_POLICY]:.1f}",
                  f"{d:+.2f}", f"[{lo:+.1f}, {hi:+.1f}]", f"{d / CALLS_PER_RUN * 1000:+.0f} µs")
    t.add_row("history bytes per run", f"{a.history_bytes:.0f}", f"{b.history_bytes:.0f}",
              f"{b.history_bytes - a.history_bytes:+.0f}", "", "")
    con.print(t)
    d, lo, hi = (x / CALLS_PER_RUN * 1000 for x in res.difference["wft_worker_ms"])
    con.print(f"[bold]a reference policy adds {d:+.0f} µs of workflow-task time per tool "
              f"call[/] (median difference / {CALLS_PER_RUN}; 95% interval [{lo:+.0f}, "
              f"{hi:+.0f}] µs). Both variants evaluate guardrails; the table below times them "
              f"where they run.")
    t = Table(title=f"Guardrails timed inside the worker during these runs, µs ({res.runs} runs "
                    f"x {CALLS_PER_RUN} calls per variant)")
    t.add_column("", no_wrap=True)
    for col in ("no policy", "with policy"):
        t.add_column(col, justify="right", no_wrap=True)
    for label, fn in (("gate per call (check+score+decide): median", statistics.median),
                      ("gate per call: p90", lambda x: _quantile(x, 90)),
                      ("gate per call: p99", lambda x: _quantile(x, 99))):
        t.add_row(label, *(f"{fn(res.variants[v].gate_us):.1f}" for v in VARIANTS))
    for name in ("route", "validate_output"):
        t.add_row(f"{name} per run: median", *(
            f"{statistics.median(res.variants[v].per_run_us[name]):.1f}" for v in VARIANTS))
    totals = {v: res.variants[v].run_total_us() for v in VARIANTS}
    t.add_row("all guardrails per run: median", *(
        f"{statistics.median(totals[v]):.1f}" for v in VARIANTS))
    t.add_row(f"all guardrails per run / {CALLS_PER_RUN} calls: median", *(
        f"{statistics.median(totals[v]) / CALLS_PER_RUN:.1f}" for v in VARIANTS), style="bold")
    t.add_row(f"all guardrails per run / {CALLS_PER_RUN} calls: p90", *(
        f"{_quantile(totals[v], 90) / CALLS_PER_RUN:.1f}" for v in VARIANTS))
    con.print(t)
    print_machine(con, machine, command, res.seconds)


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    from bench.machine import load_average, machine_details

    ap = argparse.ArgumentParser(prog="python -m bench.guardrails",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--iterations", type=int, default=5000, help="timed calls per case")
    ap.add_argument("--warmup", type=int, default=500, help="untimed calls per case first")
    ap.add_argument("--cold", type=int, default=200,
                    help="calls per case timed right after evicting the CPU caches (0: skip)")
    ap.add_argument("--what-if", action="store_true",
                    help="also time the gate with the caches suggested in bench/RESULTS.md "
                         "(patched in this process only)")
    ap.add_argument("--no-gc", action="store_true",
                    help="disable the garbage collector while timing (default: enabled)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    command = "python -m bench.guardrails " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = machine_details()
    res = run_micro(args.iterations, args.warmup, args.cold, no_gc=args.no_gc,
                    what_if=args.what_if,
                    progress=lambda m: print(f"[bench.guardrails] {m}", flush=True))
    machine["load_average_at_end"] = load_average()
    print_micro(res, machine, command.strip())
    if args.json is not None:
        doc = {"command": command.strip(), "machine": machine, **dataclasses.asdict(res)}
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"[bench.guardrails] wrote {args.json}")


if __name__ == "__main__":
    os.environ.pop("OPENAI_API_KEY", None)
    main()

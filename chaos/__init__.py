"""The chaos suite: ``python -m chaos`` (``make chaos``).

Faults a production agent runtime meets — workers SIGKILLed mid-call, the Temporal server and
PostgreSQL restarted under load, a misbehaving model server, broken tools, oversized results —
injected into real runs on a throwaway embedded stack, followed by checks that every run ended
deliberately, no side effect happened twice and the ledger is complete and intact.

- :mod:`chaos.world`: the outside world, counting side effects per idempotency key; failpoints.
- :mod:`chaos.agent`: the ``shop`` and ``drills`` agents and their tools.
- :mod:`chaos.pool`: worker processes to kill and replace.
- :mod:`chaos.harness`: the phases.
- :mod:`chaos.invariants`: what must hold afterwards, and the evidence for it.
- :mod:`chaos.report`: tables, RELIABILITY.md, JSON.
"""

from chaos.harness import PHASES, ChaosConfig, ChaosResult, run_chaos
from chaos.invariants import RunRecord, Verdict, check, collect

__all__ = ["PHASES", "ChaosConfig", "ChaosResult", "RunRecord", "Verdict", "check", "collect",
           "run_chaos"]

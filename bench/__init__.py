"""Benchmark: stead's AgentWorkflow (ledger on) against the same work in plain temporalio.

    python -m bench            # 30 sequential runs each, 5 bursts of 50 concurrent runs each
    python -m bench --quick    # a smoke run in well under a minute

Both sides run on one embedded stack the benchmark starts itself (free ports, temporary data
directory), with their workers in this process on their own task queues, and their
repetitions interleaved so machine noise hits both alike. See ``bench/RESULTS.md``.

- ``agent``: the bench agent (5 trivial read tools, a planner calling them one per turn);
- ``plain*``: the same agent loop as a plain ``@workflow.defn`` with plain activities;
- ``runner``: the stack, the workers and the two workloads;
- ``breakdown``: where a run's time goes, from its event history;
- ``report``: tables for people, JSON for scripts, machine details.
"""

import atexit
import shutil
import sys
import tempfile

# The workflow sandbox re-imports the workflow module for every run. Without bytecode on disk
# (PYTHONDONTWRITEBYTECODE=1 with an editable install, as in some dev shells and CI) that
# means compiling workflows/agent.py from source each time: ~5 ms per run, measured. Deployed
# workers do not pay it (pip precompiles on install, and the Dockerfile's image has the
# .pyc files), so the benchmark keeps bytecode in a private temporary prefix, which also
# leaves the source tree untouched.
if sys.dont_write_bytecode and sys.pycache_prefix is None:
    _pycache = tempfile.mkdtemp(prefix="stead-bench-pycache-")
    sys.pycache_prefix = _pycache
    sys.dont_write_bytecode = False
    atexit.register(shutil.rmtree, _pycache, True)

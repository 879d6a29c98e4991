"""``python -m bench.ttft``: time to first token through stead versus straight from the server.

    python -m bench.ttft                       # 30 samples per path after 5 warm-up, ~1 min
    python -m bench.ttft --quick               # 8 after 2
    python -m bench --workload ttft            # the same, from the main entry point

One OpenAI-compatible server (``FakeOpenAIServer``, streaming word-sized chunks
``--chunk-delay`` seconds apart, 20 ms by default: 50 tokens a second) answers three kinds of
client, one after the other, in rotating order:

- ``direct``: the ``openai`` SDK asks the server to stream; the clock stops at the first
  chunk with text. What an application that calls the model itself waits.
- ``stead``: a run of a one-turn agent is started (``start_run``) and followed as ``stead run
  --stream`` follows it (``follow_run``: the ledger's token stream, woken by NOTIFY); the clock
  stops at the first ``token`` event with text.
- ``stead-http``: the same, followed over ``GET /v1/runs/{workflow_id}/events`` (uvicorn on
  loopback, SSE), as the inbox page and HTTP clients follow it.

Both stead paths include everything a run does before its model call (starting the workflow,
its first workflow task, the ``run.start`` local activity, scheduling the model activity,
writing the carried decisions): that is the time a user of stead waits. Each stead sample is
also split at the moment the model server received the request, so the table shows how much
is orchestration before the call and how much is the stream itself after it. The stream holds
back a word until it is complete (so a credential split across chunks is redacted whole): its
first text is published when the second chunk arrives, one chunk delay after the first.

The target (issue 17): p50 of (stead - direct) ≤ 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import SecretStr

from bench.stats import Summary, summarise
from stead.api import ApiServer, create_app, issue_token
from stead.authoring.agent import Agent, AgentCatalog
from stead.client import start_run
from stead.contracts.models import ModelTurn, RunRequest
from stead.integrations.llm import OpenAIModel, ScriptedModel
from stead.settings import Settings
from stead.stack.embedded import EmbeddedStack, free_port
from stead.storage.ledger import Ledger
from stead.streaming import StreamListener, TokenEvent, follow_run
from stead.testing.openai_server import ChatRequest, FakeOpenAIServer
from stead.worker import WorkerHost

DIRECT, STEAD, HTTP = "direct", "stead", "stead-http"
PATHS = (DIRECT, STEAD, HTTP)
MODEL = "gpt-4o-mini"
ANSWER = ("Checkout is healthy again: the error rate fell to 0.1 % after the restart, p95 "
          "latency is 45 ms, and nothing else needs doing.")
SECRET = "bench-ttft-" + "k" * 40
TARGET_MS = 50.0

Progress = Callable[[str], None]


@dataclass
class Sample:
    ttft_ms: float
    """Request (or run start) to the first text."""
    to_server_ms: float | None = None
    """Run start to the model server receiving the request (stead paths)."""
    word_ms: float | None = None
    """Request to the second text chunk, when the first word is known to be complete
    (direct path): what stead's stream, which publishes whole words, can at best match."""


@dataclass
class TtftResult:
    runs: int
    warmup: int
    chunk_delay_s: float
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    summary: dict[str, Summary] = field(default_factory=dict)
    overhead: dict[str, Summary] = field(default_factory=dict)
    """stead path -> summary of (its sample - the direct sample of the same round), ms."""
    word_overhead: dict[str, Summary] = field(default_factory=dict)
    """stead path -> summary of (its sample - the direct first complete word), ms."""
    stream_part: dict[str, Summary] = field(default_factory=dict)
    """stead path -> summary of (server received the request -> first text), ms."""
    seconds: float = 0.0


class _Server:
    """The model server, noting when each request arrives."""

    def __init__(self, chunk_delay: float) -> None:
        self.arrived: list[float] = []
        self.fake = FakeOpenAIServer(self._answer, chunk_delay=chunk_delay)

    def _answer(self, _: ChatRequest) -> ModelTurn:
        self.arrived.append(time.perf_counter())
        return ModelTurn(content=ANSWER)


async def _direct(server: _Server) -> Sample:
    import openai

    async with openai.AsyncOpenAI(api_key="sk-bench", base_url=server.fake.base_url,
                                  max_retries=0) as client:
        began = time.perf_counter()
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "how is checkout?"}],
            stream=True, stream_options={"include_usage": True})
        texts: list[float] = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                texts.append(time.perf_counter())
    assert len(texts) >= 2
    return Sample(ttft_ms=(texts[0] - began) * 1000, word_ms=(texts[1] - began) * 1000)


async def _stead(host: WorkerHost, ledger: Ledger, listener: StreamListener,
                 settings: Settings, server: _Server) -> Sample:
    assert host.client is not None
    began = time.perf_counter()
    handle = await start_run(host.client, RunRequest(agent="ttft", input="how is checkout?"),
                             temporal=settings.temporal)
    assert handle.result_run_id is not None
    first: float | None = None
    async for event in follow_run(host.client, ledger, listener, workflow_id=handle.id,
                                  run_id=handle.result_run_id, tenant="default"):
        if (first is None and event is not None and isinstance(event.data, TokenEvent)
                and event.data.text):
            first = time.perf_counter()
    assert first is not None
    return Sample(ttft_ms=(first - began) * 1000,
                  to_server_ms=(server.arrived[-1] - began) * 1000)


async def _stead_http(host: WorkerHost, http: httpx.AsyncClient, settings: Settings,
                      server: _Server) -> Sample:
    assert host.client is not None
    token = issue_token(SECRET, sub="bench", tenant="default", roles=["requester"])
    began = time.perf_counter()
    handle = await start_run(host.client, RunRequest(agent="ttft", input="how is checkout?"),
                             temporal=settings.temporal)
    first: float | None = None
    name = ""
    async with http.stream("GET", f"/v1/runs/{handle.id}/events",
                           headers={"Authorization": f"Bearer {token}"}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: ") and first is None and name == "token":
                if json.loads(line.removeprefix("data: ")).get("text"):
                    first = time.perf_counter()
    assert first is not None
    return Sample(ttft_ms=(first - began) * 1000,
                  to_server_ms=(server.arrived[-1] - began) * 1000)


async def ttft_workload(runs: int = 30, warmup: int = 5, chunk_delay: float = 0.02, *,
                        progress: Progress = print) -> TtftResult:
    began = time.perf_counter()
    res = TtftResult(runs=runs, warmup=warmup, chunk_delay_s=chunk_delay,
                     samples={p: [] for p in PATHS})
    server = _Server(chunk_delay)
    agent = Agent(name="ttft", instructions="Answer in one sentence.", tools=[],
                  offline_model=ScriptedModel([ModelTurn(content="offline")]))
    with tempfile.TemporaryDirectory(prefix="stead-bench-ttft-") as tmp:
        settings = Settings(data_dir=Path(tmp), temporal_port=free_port(), ui_port=free_port(),
                            postgres_port=free_port(), temporal_address=None,
                            database_url=None, openai_api_key=None, memory_backend="off",
                            task_queue=f"bench-ttft-{uuid.uuid4().hex[:8]}",
                            api_secret=SecretStr(SECRET))
        progress(f"starting embedded stack in {tmp}")
        async with EmbeddedStack(settings, ui=False) as stack, server.fake:
            resolved = stack.resolved_settings()
            assert resolved.ledger.database_url is not None
            model = OpenAIModel(model=MODEL, api_key="sk-bench", base_url=server.fake.base_url)
            async with WorkerHost(resolved, AgentCatalog([agent]), model=model) as host, \
                    StreamListener(resolved.ledger.database_url) as listener:
                assert host.client is not None and host.ledger is not None
                app = create_app(resolved, client=host.client)
                async with ApiServer(app, host="127.0.0.1", port=0) as api, \
                        httpx.AsyncClient(base_url=api.url, timeout=60) as http:
                    async def one(path: str) -> Sample:
                        if path == DIRECT:
                            return await _direct(server)
                        if path == STEAD:
                            assert host.ledger is not None
                            return await _stead(host, host.ledger, listener, resolved, server)
                        return await _stead_http(host, http, resolved, server)

                    progress(f"ttft: {warmup} warm-up round(s) of {', '.join(PATHS)}")
                    for _ in range(warmup):
                        for p in PATHS:
                            await one(p)
                    progress(f"ttft: {runs} round(s), the paths in rotating order")
                    for i in range(runs):
                        order = PATHS[i % 3:] + PATHS[:i % 3]
                        for p in order:
                            res.samples[p].append(await one(p))
                            await asyncio.sleep(0.05)  # let the last run's tail settle
    for p in PATHS:
        res.summary[p] = summarise([s.ttft_ms for s in res.samples[p]])
    for p in (STEAD, HTTP):
        pairs = zip(res.samples[p], res.samples[DIRECT], strict=True)
        res.overhead[p] = summarise([s.ttft_ms - d.ttft_ms for s, d in pairs])
        res.word_overhead[p] = summarise([
            s.ttft_ms - d.word_ms for s, d in zip(res.samples[p], res.samples[DIRECT],
                                                  strict=True) if d.word_ms is not None])
        res.stream_part[p] = summarise([s.ttft_ms - s.to_server_ms for s in res.samples[p]
                                        if s.to_server_ms is not None])
    res.seconds = time.perf_counter() - began
    return res


def print_ttft(res: TtftResult, machine: dict[str, object], command: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from bench.report import print_machine

    con = Console(width=max(Console().width, 150))
    t = Table(title=f"Time to first token, ms ({res.runs} rounds after {res.warmup} warm-up; "
                    f"chunks {res.chunk_delay_s * 1000:g} ms apart)")
    for col in ("path", "median", "p90", "min", "max", "mean"):
        t.add_column(col, justify="left" if col == "path" else "right", no_wrap=True)

    def row(label: str, s: Summary, bold: bool = False) -> None:
        t.add_row(label, *(f"{v:.1f}" for v in (s.median, s.p90, s.min, s.max, s.mean)),
                  style="bold" if bold else None)

    row("direct: SDK request -> first text chunk", res.summary[DIRECT])
    row("direct: SDK request -> second text chunk (first word complete)",
        summarise([s.word_ms for s in res.samples[DIRECT] if s.word_ms is not None]))
    for p, how in ((STEAD, "follow_run, as stead run --stream"),
                   (HTTP, "GET /v1/runs/{id}/events")):
        row(f"{p}: run start -> first token event ({how})", res.summary[p])
        row(f"  {p} - direct, same round (overhead)", res.overhead[p], bold=True)
        row(f"  {p} - direct first complete word, same round", res.word_overhead[p])
        row(f"  {p}: model server got the request -> first token event",
            res.stream_part[p])
    con.print(t)
    for p in (STEAD, HTTP):
        p50 = res.overhead[p].median
        verdict = "met" if p50 <= TARGET_MS else "missed"
        con.print(f"[bold]{p}: p50 overhead {p50:.1f} ms, target <= {TARGET_MS:g} ms: "
                  f"{verdict}[/]")
    print_machine(con, machine, command, res.seconds)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--chunk-delay", type=float, default=0.02, metavar="SECONDS",
                    help="ttft: seconds between two streamed chunks of the model server "
                         "(default 0.02: 50 tokens/s)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.ttft", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30, help="rounds measured (default 30)")
    ap.add_argument("--warmup", type=int, default=5, help="rounds not measured (default 5)")
    ap.add_argument("--quick", action="store_true", help="8 rounds after 2 warm-up")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    add_arguments(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.warmup = 8, 2
    run(args, "python -m bench.ttft " + shlex.join(sys.argv[1:] if argv is None else argv))


def run(args: argparse.Namespace, command: str) -> None:
    from bench.machine import load_average, machine_details

    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TEMPORAL_ADDRESS", "DATABASE_URL",
                "OTEL_EXPORTER_OTLP_ENDPOINT"):
        os.environ.pop(var, None)
    if args.chunk_delay < 0:
        raise SystemExit("--chunk-delay must not be negative")
    machine = machine_details()
    res = asyncio.run(ttft_workload(args.runs, args.warmup, args.chunk_delay,
                                    progress=lambda m: print(f"[bench] {m}", flush=True)))
    machine["load_average_at_end"] = load_average()
    print_ttft(res, machine, command.strip())
    if args.json is not None:
        args.json.write_text(json.dumps({"command": command, "machine": machine,
                                         **dataclasses.asdict(res)}, indent=2,
                                        default=str) + "\n")
        print(f"[bench] wrote {args.json}")


if __name__ == "__main__":
    main()

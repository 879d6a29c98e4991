"""Fuzzed inputs that need no server: policy files, settings from the environment, and the
tool-call gate. These run thousands of examples in seconds.

Properties:

- a policy text parses, or raises ``PolicyError`` (a ``SpecError``) whose every problem is
  located as ``file:line:`` on a line the file has — never another exception;
- a set of ``STEAD_*`` (and ecosystem) variables loads, or raises ``SettingsError`` naming a
  variable that was set and is bad on its own; every accepted duration is usable;

The regression tests below the properties are bugs the fuzzer found (since fixed).
- the tool-call gate rejects a call with a reason of a known kind naming the tool, and what
  it accepts the tool's own pydantic model accepts too (a call never passes the gate only to
  fail inside the activity).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from _fuzz import fuzz, json_values, text
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from stead.agents import reference_catalog
from stead.agents.ops import POLICY_FILE as OPS_POLICY
from stead.agents.refund import POLICY_FILE as REFUND_POLICY
from stead.authoring.tools import Tool
from stead.contracts.models import ToolCall, ToolPlan
from stead.contracts.policy import Policy, PolicyError, load_policy, parse_policy
from stead.errors import SettingsError, SpecError
from stead.guardrails.calls import check_call
from stead.settings import VARIABLES as READ
from stead.settings import Settings, load_settings

# ---------------------------------------------------------------------------- policy files

SOURCE = "fuzzed.yaml"
LOCATED = re.compile(rf"^  {re.escape(SOURCE)}:(\d+): .*: .", re.DOTALL)
"""One problem of an invalid policy: indented ``file:line: field: message``."""

VALID_POLICIES = [yaml.safe_load(p.read_text()) for p in (OPS_POLICY, REFUND_POLICY)]


@st.composite
def mutated_policy(draw: st.DrawFn) -> Any:
    """A shipped policy with one value somewhere replaced by any JSON value (or removed)."""
    doc = json.loads(json.dumps(draw(st.sampled_from(VALID_POLICIES))))
    node: Any = doc
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        if isinstance(node[key], (dict, list)) and node[key] and draw(st.booleans()):
            node = node[key]
            continue
        if isinstance(node, dict) and draw(st.booleans()):
            del node[key]
        else:
            node[key] = draw(json_values)
        break
    return doc


policy_texts = (
    st.text(max_size=300)
    | mutated_policy().map(lambda d: yaml.safe_dump(d, sort_keys=False, allow_unicode=True))
    | json_values.map(lambda d: yaml.safe_dump(d, allow_unicode=True))
    | st.lists(st.sampled_from(["id: x", "version: 1", "version: 0", "routing:", "  - name: r",
                                "    action: refuse", "    action: fly", "  -", "approvals:",
                                "  chain: []", "  timeout_seconds: -5", "thresholds: {",
                                "- a", "  key: [1, 2", "&a x", "*b", "\t", ": :", "---", "..."]),
               max_size=12).map("\n".join)
)


def assert_located(err: PolicyError, t: str) -> None:
    msg = str(err)
    last_line = t.count("\n") + 2  # a parser may point just past the last line
    if msg.startswith("invalid policy:\n"):
        # One problem per "\n  file:line: " (a field name may itself hold line breaks).
        head, *problems = re.split(rf"\n(?=  {re.escape(SOURCE)}:\d+: )", msg)
        assert head == "invalid policy:" and problems, msg
        for p in problems:
            m = LOCATED.match(p)
            assert m, (p, msg)
            assert 1 <= int(m.group(1)) <= last_line, (p, t)
    else:
        m = re.match(rf"{re.escape(SOURCE)}:(\d+): .", msg)
        assert m, msg
        assert 1 <= int(m.group(1)) <= last_line, (msg, t)


@fuzz(300)
@given(policy_texts)
@example("")
@example("id: x\nversion: 1\nrouting: [{name: r, action: fly}]\n")
@example("id: x\nversion: 1\napprovals: {chain: [], timeout_seconds: 0}\n")
@example("a: &x [*x]\n")
@example("id: [unclosed\n")
def test_any_policy_text_parses_or_fails_with_file_and_line(t: str) -> None:
    try:
        policy = parse_policy(t, source=SOURCE)
    except PolicyError as err:
        assert isinstance(err, SpecError)
        assert_located(err, t)
    else:
        assert isinstance(policy, Policy)
        assert policy.ref == f"{policy.id}@{policy.version}"


def test_unreadable_characters_are_located() -> None:
    """Found by the fuzzer: a character YAML refuses (here ESC) used to be reported without
    a line."""
    t = "id: ops\nversion: 1\ndescription: bad \x1b char\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(t, source=SOURCE)
    assert str(info.value).startswith(f"{SOURCE}:3: not valid YAML")


def test_a_policy_file_that_cannot_be_read_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"cannot read policy .*missing\.yaml"):
        load_policy(tmp_path / "missing.yaml")
    with pytest.raises(PolicyError, match=r"cannot read policy .*policy\.d"):
        (tmp_path / "policy.d").mkdir()
        load_policy(tmp_path / "policy.d")


def test_a_policy_file_that_is_not_utf8_is_a_policy_error(tmp_path: Path) -> None:
    """Found while fuzzing: bytes that are not UTF-8 used to escape as UnicodeDecodeError."""
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"id: x\nversion: 1\ndescription: \xff\xfe\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value).startswith(f"{path}:3: not UTF-8 text")


# ---------------------------------------------------------------------------- settings


VARIABLES = dict(READ)
"""Every environment variable stead reads, to its setting's flat name."""
DURATIONS = sorted({f for f in VARIABLES.values() if f.endswith("_seconds")})
ENV_PREFIXES = ("STEAD_", "TEMPORAL_", "OPENAI_", "PINECONE_", "DATABASE_URL", "OTEL_")

env_values = (
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)
    | st.sampled_from(["1", "0", "-1", "70000", "true", "no", "{}", "[]", "null", '{"a": 1}',
                       '["x"]', '{"gpt": {"input": -1, "output": 1}}', "nan", "1e3", "DEBUG",
                       "auto", "off", "pgvector", "(", "[a-"])
    | st.integers(-10**12, 10**12).map(str)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6).map(str))


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """Exactly ``env`` among stead's variables for the duration of the block."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
    for k in saved:
        del os.environ[k]
    os.environ.update(env)
    try:
        yield
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)


def load(env: dict[str, str]) -> Settings | SettingsError:
    with environment(env):
        try:
            return load_settings()
        except SettingsError as err:
            return err


def named(message: str) -> set[str]:
    """The variables a message names (longest name wins: STEAD_TEMPORAL_TLS_... over
    STEAD_TEMPORAL_TLS)."""
    found = set()
    for name in sorted(VARIABLES, key=len, reverse=True):
        if re.search(rf"(?<![A-Z_]){re.escape(name)}(?![A-Z_])", message):
            found.add(name)
            message = message.replace(name, "")
    return found


@fuzz(250)
@given(st.dictionaries(st.sampled_from(sorted(VARIABLES)), env_values, min_size=1, max_size=3)
)
@example({"STEAD_TEMPORAL_PORT": "abc"})
@example({"STEAD_MODEL_PRICES": "{not json"})
@example({"STEAD_REDACT_PATTERNS": "[\"(\"]"})
@example({"STEAD_UI_PORT": "70000", "STEAD_LOG_LEVEL": "LOUD"})
@example({"STEAD_MODEL_TIMEOUT_SECONDS": "1e9"})
@example({"STEAD_MODEL_TIMEOUT_SECONDS": "inf"})
@example({"TEMPORAL_TLS": "maybe"})
def test_any_environment_loads_or_names_a_bad_variable(env: dict[str, str]) -> None:
    got = load(env)
    if isinstance(got, Settings):
        values = dict(got.flat_items())
        for field in DURATIONS:
            value = values[field]
            assert timedelta(seconds=value) >= timedelta(0), (field, value)
        return
    message = str(got)
    assert message.startswith("invalid setting: "), message
    # A setting with two names is named by both ("STEAD_TEMPORAL_TLS or TEMPORAL_TLS"):
    # compare the settings blamed, not the spellings.
    blamed = {VARIABLES[name] for name in named(message)}
    assert blamed, message
    assert blamed <= {VARIABLES[name] for name in env}, (blamed, env, message)
    # It blames a setting that is bad on its own (the message points at the right one).
    bad_alone = {VARIABLES[name] for name in env
                 if isinstance(load({name: env[name]}), SettingsError)}
    assert blamed & bad_alone, (blamed, bad_alone, message)


def test_an_endless_duration_setting_is_refused() -> None:
    """Found by the fuzzer: inf (or 1e15) used to be accepted, and every run's workflow task
    then failed with OverflowError building its activity timeout."""
    for value in ("inf", "1e15"):
        got = load({"STEAD_MODEL_TIMEOUT_SECONDS": value})
        assert isinstance(got, SettingsError), value
        assert "STEAD_MODEL_TIMEOUT_SECONDS" in str(got)


def test_a_bad_aliased_variable_is_named_as_users_write_it() -> None:
    """Found by the fuzzer: TEMPORAL_TLS=maybe used to be reported as
    STEAD_STEAD_TEMPORAL_TLS, a variable that does not exist."""
    got = load({"TEMPORAL_TLS": "maybe"})
    assert isinstance(got, SettingsError)
    assert "STEAD_STEAD_" not in str(got)
    assert named(str(got)) >= {"TEMPORAL_TLS"}


# ---------------------------------------------------------------------------- tool-call gate


def _reference_tools(tmp: Path) -> dict[str, Tool[Any, Any]]:
    return {t.name: t for t in reference_catalog(tmp).tools()}


@pytest.fixture(scope="module")
def reference_tools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tool[Any, Any]]:
    return _reference_tools(tmp_path_factory.mktemp("fuzz-tools"))


def _argument_names() -> list[str]:
    return ["amount", "body", "limit", "message", "order_id", "priority", "reason", "service",
            "title"]


tool_arguments = (
    st.dictionaries(st.sampled_from(_argument_names()) | text,
                    json_values | st.sampled_from([0, 1, -1, 50.5, 1e308, "", "auth-service",
                                                   "ORD-1001", "high", 10**30]),
                    max_size=4).map(json.dumps)
    | json_values.map(json.dumps)
    | st.text(max_size=60))
"""Argument text a model may write: objects of the right and wrong fields, any JSON, or not
JSON at all."""

KINDS = {"unknown_tool", "malformed_arguments", "invalid_arguments"}


def test_the_gate_and_each_tool_agree_on_arguments(
        reference_tools: dict[str, Tool[Any, Any]]) -> None:
    plans: dict[str, ToolPlan] = {n: t.plan() for n, t in reference_tools.items()}

    @fuzz(800)
    @given(st.sampled_from(sorted(plans)) | text, tool_arguments)
    @example("issue_refund", '{"order_id": "ORD-1001", "amount": 20.0}')
    @example("issue_refund", '{"order_id": "ORD-1001", "amount": true}')
    @example("service_status", '{"service": "auth-service", "extra": 1}')
    @example("service_status", "")
    @example("list_services", "null")
    def prop(name: str, arguments: str) -> None:
        verdict = check_call(ToolCall(id="c1", name=name, arguments=arguments), plans)
        if verdict.arguments is None:
            assert verdict.kind in KINDS, verdict
            assert verdict.error and repr(name) in verdict.error, verdict
            return
        assert verdict.kind == "ok" and verdict.error is None
        try:
            reference_tools[name].input_model.model_validate(verdict.arguments)
        except ValidationError as err:
            raise AssertionError(f"the gate passed {arguments!r} for {name}, but the tool's "
                                 f"model refuses it: {err}") from None

    prop()

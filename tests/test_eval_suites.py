"""Behaviour suites (``stead eval``), against the real dev server and PostgreSQL.

Pins that the reference agents' suites pass as real workflow runs, that designed-to-fail cases
fail exactly on the expectations that are wrong (with a reason saying what was found), that
recorded and judge models work through the same seams, that bad suite files stop everything
before a run starts (exit 2, naming file and line), and the CLI end to end (exit 1 on failure,
JSON, HTML, --ephemeral).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from _cli import stead
from temporalio.client import WorkflowExecutionStatus

from stead.agents import reference_catalog
from stead.client import connect
from stead.contracts.models import Message, ModelTurn, ToolSchema
from stead.evals import SYNTHETIC_KEY
from stead.evals.expect import (
    CaseOutcome,
    ObservedCall,
    check_call,
    check_tools,
    parse_judgement,
)
from stead.evals.runner import EvalReport, SuiteRunner
from stead.evals.suite import (
    CallExpect,
    RecordedModelSource,
    SuiteError,
    ToolsExpect,
    load_suite,
    parse_suite,
    suite_from_data,
)
from stead.integrations.llm import FunctionModel
from stead.settings import Settings
from stead.storage.ledger import Ledger

ROOT = Path(__file__).resolve().parent.parent
EVALS = ROOT / "evals"
REGRESSIONS = Path(__file__).resolve().parent / "evals" / "regressions.yaml"


async def run_suites(settings: Settings, world: Path, *paths: Path,
                     **kwargs: Any) -> EvalReport:
    runner = SuiteRunner(settings, reference_catalog(world), parallel=4, **kwargs)
    return await runner.run([load_suite(p) for p in paths])


# ---------------------------------------------------------------------------- loading


def test_suite_errors_name_file_line_case_and_field() -> None:
    text = """\
suite: broken
agent: ops
cases:
  - name: one
    input: is auth-service healthy?
    expect:
      status: finished
      answer: {regex: "(unclosed"}
  - name: two
    input: hi
    model: {kind: scripted, turns: []}
    approvals: [{decision: reject, arguments: {service: x}}]
    metadata: {stead.synthetic: nope}
"""
    with pytest.raises(SuiteError) as e:
        parse_suite(text, source="broken.yaml")
    msg = str(e.value)
    assert "broken.yaml:7: case 'one': expect.status.0: Input should be" in msg
    assert "broken.yaml:8: case 'one': expect.answer.regex: not a valid regular expression" \
        in msg
    assert "broken.yaml:11: case 'two': model.scripted.turns: List should have at least 1" in msg
    assert ("broken.yaml:12: case 'two': approvals.0: edited arguments only make sense with "
            "decision: approve") in msg
    assert "broken.yaml:13: case 'two': metadata: metadata keys starting with 'stead.'" in msg


def test_yaml_syntax_errors_and_non_mappings_name_the_line() -> None:
    with pytest.raises(SuiteError, match=r"^x\.yaml:3: not valid YAML"):
        parse_suite("cases:\n  - name: a\n   input: [", source="x.yaml")
    with pytest.raises(SuiteError, match=r"^x\.yaml:1: a suite must be a mapping"):
        parse_suite("- a\n- b\n", source="x.yaml")


def test_duplicate_case_names_and_unknown_fields_are_errors() -> None:
    with pytest.raises(SuiteError, match="case names must be unique; repeated: a"):
        parse_suite("suite: s\nagent: ops\ncases:\n  - {name: a, input: x}\n"
                    "  - {name: a, input: y}\n", source="s.yaml")
    with pytest.raises(SuiteError, match=r"s\.yaml:4: case 'a': expect\.stauts: Extra inputs"):
        parse_suite("suite: s\nagent: ops\ncases:\n  - {name: a, input: x, expect: {stauts: "
                    "completed}}\n", source="s.yaml")


def test_referenced_evaluators_and_recordings_are_checked_at_load(tmp_path: Path) -> None:
    (tmp_path / "checks.py").write_text("def ok(outcome):\n    return True\n")
    (tmp_path / "notjson.json").write_text("{nope")
    path = tmp_path / "refs.yaml"
    path.write_text("""\
agent: ops
cases:
  - name: a
    input: x
    expect: {custom: [{function: "checks.py:missing"}, {function: "no_such_mod:fn"}]}
  - name: b
    input: x
    model: {kind: recorded, file: notjson.json}
""")
    with pytest.raises(SuiteError) as e:
        load_suite(path)
    msg = str(e.value)
    # Checked in order: recorded files first, so fix that and look again.
    assert f"{path}:8: case 'b': model.file: recorded model file" in msg and "not JSON" in msg
    (tmp_path / "notjson.json").write_text(json.dumps([{"content": "hi"}]))
    with pytest.raises(SuiteError) as e:
        load_suite(path)
    msg = str(e.value)
    assert f"{path}:5: case 'a': expect.custom.0.function: 'checks.py' has no function " \
           f"'missing'" in msg
    assert "expect.custom.1.function: cannot import module 'no_such_mod'" in msg
    good = path.read_text().replace("checks.py:missing", "checks.py:ok").replace(
        ', {function: "no_such_mod:fn"}', "")
    path.write_text(good)
    suite = load_suite(path)
    assert suite.name == "refs"  # the file's stem
    model = suite.cases[1].model
    assert isinstance(model, RecordedModelSource) and model.file == tmp_path / "notjson.json"


def test_suites_load_from_python_objects_with_yaml_shorthands() -> None:
    suite = suite_from_data({
        "suite": "py", "agent": "refund",
        "cases": [{"name": "a", "input": "Refund €5 on ORD-1003", "model": "agent",
                   "expect": {"status": "completed", "approvals_requested": 0,
                              "answer": {"contains": "Refunded"},
                              "tools": {"includes": "issue_refund"}}},
                  {"name": "b", "agent": "ops", "input": "hi",
                   "expect": {"approvals_requested": ["restart_service"]}}]})
    a, b = suite.cases
    assert (a.agent, b.agent) == ("refund", "ops")
    assert a.expect.status == ["completed"]
    assert a.expect.answer is not None and a.expect.answer.contains == ["Refunded"]
    assert a.expect.tools is not None and a.expect.tools.includes == ["issue_refund"]
    assert a.expect.approvals_requested is not None and a.expect.approvals_requested.count == 0
    assert b.expect.approvals_requested is not None \
        and b.expect.approvals_requested.tools == ["restart_service"]
    request = a.request("py")
    assert request.metadata == {SYNTHETIC_KEY: "eval", "stead.eval.suite": "py",
                                "stead.eval.case": "a"}
    with pytest.raises(SuiteError, match=r"^invalid suite <python>:\n  <python>: case 'x': "
                                         r"input: Field required"):
        suite_from_data({"suite": "p", "agent": "ops", "cases": [{"name": "x"}]})


def _outcome(calls: Sequence[tuple[str, dict[str, Any] | None, str]]) -> CaseOutcome:
    case = suite_from_data({"suite": "s", "agent": "ops",
                            "cases": [{"name": "c", "input": "x"}]}).cases[0]
    return CaseOutcome(suite="s", case=case, workflow_id="w", result=None, calls=[
        ObservedCall(step=i, call_id=f"c{i}", tool=t, arguments=a, raw_arguments=json.dumps(a),
                     status=s)
        for i, (t, a, s) in enumerate(calls)])


def test_tool_sequences_and_argument_subsets() -> None:
    o = _outcome([("list_services", {}, "ok"), ("service_status", {"name": "x"}, "rejected"),
                  ("service_status", {"service": "api", "opts": {"deep": True, "n": 2}}, "ok")])
    [in_order] = check_tools(ToolsExpect(in_order=["list_services", "service_status"]), o)
    assert in_order.status == "pass"
    [wrong] = check_tools(ToolsExpect(in_order=["service_status", "list_services"]), o)
    assert wrong.status == "fail"
    assert "'list_services' not found after the ones before it" in wrong.reason
    [ran] = check_tools(ToolsExpect(exact=["list_services", "service_status"], which="ran"), o)
    assert ran.status == "pass"  # the rejected call never reached the tool
    assert check_call(CallExpect(tool="service_status", arguments={"opts": {"n": 2.0}}),
                      o).status == "pass"  # nested subset, numbers by value
    bool_vs_int = check_call(CallExpect(tool="service_status", arguments={"opts": {"deep": 1}}),
                             o)
    assert bool_vs_int.status == "fail"  # true is not 1
    assert 'service_status {"name": "x"} rejected' in bool_vs_int.reason
    assert check_call(CallExpect(tool="service_status", nth=1, status="ok"), o).status == "fail"


def test_judge_replies_are_parsed_strictly() -> None:
    assert parse_judgement('Sure. {"score": 0.8, "reason": "good"}') == (0.8, "good")
    assert parse_judgement("0.25") == (0.25, "")
    assert parse_judgement('{"score": 7}') == (None, "")
    assert parse_judgement("great answer") == (None, "")


# ---------------------------------------------------------------------------- real runs


async def test_reference_suites_pass_as_real_synthetic_runs(settings: Settings, ledger: Ledger,
                                                           tmp_path: Path) -> None:
    """What `make test` gates on: the ops and refund agents behave as their suites say."""
    report = await run_suites(settings, tmp_path, EVALS / "ops.yaml", EVALS / "refund.yaml")

    failures = {f"{c.suite}/{c.case}": [f"{x.name}: {x.reason}" for x in c.failures]
                for c in report.failed}
    assert report.passed, failures
    by_suite = {s: [c for c in report.cases if c.suite == s] for s in ("ops", "refund")}
    assert all(len(cs) >= 6 for cs in by_suite.values())
    assert all(c.checks and all(x.status == "pass" for x in c.checks) for c in report.cases)
    assert {c.run_status for c in report.cases} == {"completed", "denied", "refused",
                                                    "escalated"}
    # Each case was a real AgentWorkflow run, on record as a synthetic eval run.
    rows = await ledger.pool.fetch(
        "select workflow_id, metadata, status from stead_runs where workflow_id = any($1)",
        [c.workflow_id for c in report.cases])
    assert len(rows) == len(report.cases)
    meta = {r["workflow_id"]: r["metadata"] for r in rows}
    for c in report.cases:
        assert meta[c.workflow_id][SYNTHETIC_KEY] == "eval"
        assert (meta[c.workflow_id]["stead.eval.suite"],
                meta[c.workflow_id]["stead.eval.case"]) == (c.suite, c.case)


# Which checks of each designed-to-fail case must fail; every other check must pass.
DESIGNED_FAILURES: dict[str, dict[str, str]] = {
    "wrong-tool": {
        "tools exact": "proposed [recent_logs], expected exactly [service_status]",
        'call service_status {"service": "auth-service"}':
            "no call of service_status; proposed: [recent_logs]"},
    "wrong-arguments": {
        'call service_status {"service": "auth-service"} [ok]':
            'found: service_status {"service": "payments-db"} ok'},
    "answer-violates-schema": {
        "answer schema": "healthy: 'yes' is not of type 'boolean'"},
    "wrong-policy-expectations": {
        "status": "status is completed",
        "decision gate=ask tool=issue_refund":
            "gate decisions: gate=allow(lookup_order), gate=allow(issue_refund)",
        "approvals requested = 1": "the run asked 0 approval(s)"},
    "unplanned-approval": {
        "approvals played": "(restart_service): the case planned no decision for it, so the "
                            "eval rejected it",
        "status": "status is denied"},
    "step-budget": {
        "status": "status is failed (error: step budget of 4 exhausted before an answer)",
        "steps <= 3": "used 4 steps (2 model turns, 2 tool calls)"},
    "present-and-absent": {
        "tools in order": "proposed []; [service_status] not in this order",
        "no decision route=refuse": "recorded: seq 1 route=refuse[pii-payment-data]"},
    "evaluators": {
        "custom root_cause_score": "score 0.2 < threshold 0.5",
        "custom broken_evaluator": "eval_checks.py:broken_evaluator raised KeyError: 'verdict'",
        "judge (scripted:judge)": "score 0.3 < threshold 0.7: it gives figures but no root "
                                  "cause"},
    "timeout": {
        "run finished": "timed out after 3s",
        "status": "expected escalated; no run result (timed out after 3s"},
}


async def test_designed_to_fail_cases_fail_exactly_where_designed(settings: Settings,
                                                                 tmp_path: Path) -> None:
    report = await run_suites(settings, tmp_path, REGRESSIONS)

    assert not report.passed
    assert {c.case for c in report.cases} == set(DESIGNED_FAILURES)
    for c in report.cases:
        want = DESIGNED_FAILURES[c.case]
        failed = {x.name: x.reason for x in c.failures}
        assert set(failed) == set(want), (c.case, failed)
        for name, fragment in want.items():
            assert fragment in failed[name], (c.case, name, failed[name])
        assert any(x.status == "pass" for x in c.checks) or c.case == "timeout", c.case
    timed_out = report.case("timeout")
    assert timed_out.run_status == "error" and timed_out.error is not None
    assert "terminated" in timed_out.error
    client = await connect(settings)
    desc = await client.get_workflow_handle(timed_out.workflow_id).describe()
    assert desc.status == WorkflowExecutionStatus.TERMINATED  # not left waiting 15 minutes


async def test_recorded_models_replay_a_past_run_from_the_ledger_and_a_file(
        settings: Settings, tmp_path: Path) -> None:
    """A recording is served as recorded: its mistake (checking the wrong service) comes back,
    where the agent's own planner would have checked the right one."""
    first = await SuiteRunner(settings, reference_catalog(tmp_path)).run([suite_from_data({
        "suite": "rec", "agent": "ops",
        "cases": [{"name": "original", "input": "is auth-service healthy?",
                   "model": {"kind": "scripted", "turns": [
                       {"tool_calls": [{"tool": "service_status",
                                        "arguments": {"service": "payments-db"}}]},
                       {"content": "payments-db is degraded."}]}}]})])
    wid = first.cases[0].workflow_id
    audit = tmp_path / "audit.json"
    done = await stead("audit", wid, "--json", env=_cli_env(settings), cwd=tmp_path)
    assert done.code == 0, done.err
    audit.write_text(done.out)
    expect = {"tools": {"exact": ["service_status"]},
              "calls": [{"tool": "service_status", "arguments": {"service": "payments-db"}}],
              "answer": {"exact": "payments-db is degraded."}}
    replay = suite_from_data({"suite": "replay", "agent": "ops", "cases": [
        {"name": "from-ledger", "input": "is auth-service healthy?",
         "model": {"kind": "recorded", "workflow_id": wid}, "expect": expect},
        {"name": "from-file", "input": "is auth-service healthy?",
         "model": {"kind": "recorded", "file": str(audit)}, "expect": expect}]})

    report = await SuiteRunner(settings, reference_catalog(tmp_path)).run([replay])

    assert report.passed, [(c.case, c.failures) for c in report.cases]
    assert report.case("from-ledger").models == [f"recorded:{wid}"]
    assert report.case("from-file").models == ["recorded:audit.json"]
    missing = suite_from_data({"suite": "m", "agent": "ops", "cases": [
        {"name": "gone", "input": "x", "model": {"kind": "recorded", "workflow_id": "nope"}}]})
    with pytest.raises(SuiteError, match="the ledger has no successful model calls for "
                                         "workflow 'nope'"):
        await SuiteRunner(settings, reference_catalog(tmp_path)).run([missing])


async def test_judge_model_grades_answers_through_the_model_client_seam(
        settings: Settings, tmp_path: Path) -> None:
    seen: list[str] = []

    def grade(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> ModelTurn:
        prompt = messages[-1].content or ""
        seen.append(prompt)
        answer = prompt.split("Answer:\n", 1)[1]
        score = 1.0 if "I restarted" in answer else 0.0
        return ModelTurn(content=json.dumps({"score": score, "reason": f"score {score}"}))

    judged = {"rubric": "The answer confirms that the service was restarted.",
              "threshold": 0.5}
    suite = suite_from_data({"suite": "judged", "agent": "ops", "cases": [
        {"name": "restarted", "input": "search-worker is down, restart it",
         "approvals": [{"decision": "approve", "role": "oncall"}],
         "expect": {"judge": judged}},
        {"name": "only-looked", "input": "is auth-service healthy?",
         "expect": {"judge": judged}}]})

    report = await SuiteRunner(settings, reference_catalog(tmp_path),
                               judge_model=FunctionModel(grade, name="grader")).run([suite])

    [ok] = report.case("restarted").checks[1:]
    assert (ok.name, ok.status, ok.score) == ("judge (grader)", "pass", 1.0)
    [bad] = report.case("only-looked").checks
    assert (bad.status, bad.score) == ("fail", 0.0)
    assert bad.reason == "score 0 < threshold 0.5: score 0.0"
    assert all("Rubric:\nThe answer confirms that the service was restarted." in p for p in seen)
    assert any("- restart_service" in p for p in seen)  # the judge sees the calls made

    # No judge model anywhere (no OpenAI key in tests): the check is skipped, not failed.
    unjudged = await SuiteRunner(settings, reference_catalog(tmp_path)).run(
        [suite], only=["only-looked"])
    [skipped] = unjudged.cases[0].checks
    assert skipped.status == "skip" and "no judge model" in skipped.reason
    assert unjudged.passed


# ---------------------------------------------------------------------------- the CLI


def _cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    assert settings.temporal.address is not None and settings.ledger.database_url is not None
    return {**os.environ, "TEMPORAL_ADDRESS": settings.temporal.address,
            "DATABASE_URL": settings.ledger.database_url, "COLUMNS": "200", **extra}


async def test_cli_eval_passes_prints_a_table_and_keeps_out_of_the_data_dir(
        settings: Settings, tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = await stead("eval", str(EVALS / "refund.yaml"), "--case", "small-refund-allowed",
                        "--case", "refund/guest-refused", "--parallel", "2",
                        env=_cli_env(settings, STEAD_DATA_DIR=str(data)), cwd=ROOT)

    assert done.code == 0, done.out + done.err
    assert "stead eval — 2 case(s), 2 passed, 0 failed" in done.out
    assert "small-refund-allowed" in done.out and "guest-refused" in done.out
    assert "✓ refund/small-refund-allowed  completed" in done.err  # progress, on stderr
    assert "models: scripted:refund (offline rule-based planners" in done.out
    # The eval's fake shop lived in a temp dir: nothing of the demo's world was touched.
    assert not (data / "refund-world.sqlite").exists()


async def test_cli_eval_of_a_directory_runs_every_suite_in_it(settings: Settings,
                                                             tmp_path: Path) -> None:
    """`stead eval evals/`: the directory stands for its suites (ops, refund), all passing."""
    expected = {f"{s.name}/{c.name}" for s in map(load_suite, (EVALS / "ops.yaml",
                                                                EVALS / "refund.yaml"))
                for c in s.cases}
    done = await stead("eval", "evals/", "--json", env=_cli_env(settings), cwd=ROOT,
                       timeout=600)

    assert done.code == 0, done.out + done.err
    data = json.loads(done.out)
    assert data["passed"] and data["failed"] == 0
    assert {f"{c['suite']}/{c['case']}" for c in data["cases"]} == expected
    assert data["total"] == len(expected) >= 24
    assert f"running {len(expected)} case(s) from 2 suite(s)" in done.err

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("not a suite")
    empty = await stead("eval", str(tmp_path / "empty"), env=_cli_env(settings), cwd=tmp_path)
    assert empty.code == 2
    assert f"{tmp_path / 'empty'}: no *.yaml or *.yml suite files in this directory" in \
        " ".join(empty.err.split())


async def test_cli_eval_failing_cases_exit_1_with_json_and_html(settings: Settings,
                                                               tmp_path: Path) -> None:
    html = tmp_path / "report" / "eval.html"
    done = await stead("eval", str(REGRESSIONS), "--case", "wrong-tool", "--case",
                        "answer-violates-schema", "--json", "--html", str(html),
                        env=_cli_env(settings), cwd=tmp_path)

    assert done.code == 1, done.out + done.err
    data = json.loads(done.out)
    assert (data["passed"], data["total"], data["failed"]) == (False, 2, 2)
    cases = {c["case"]: c for c in data["cases"]}
    failing = {x["name"]: x["reason"] for x in cases["wrong-tool"]["checks"]
               if x["status"] == "fail"}
    assert failing["tools exact"] == "proposed [recent_logs], expected exactly [service_status]"
    assert cases["answer-violates-schema"]["run_status"] == "completed"
    page = html.read_text()
    assert "<h1>stead eval</h1>" in page and "data:image/png;base64," in page
    assert "answer does not match the schema: healthy: &#x27;yes&#x27; is not of type" in page
    assert f"HTML report: {html}" in done.err

    table = await stead("eval", str(REGRESSIONS), "--case", "wrong-arguments",
                         env=_cli_env(settings), cwd=tmp_path)
    assert table.code == 1
    assert "FAIL" in table.out and "✗ call service_status" in table.out


async def test_cli_bad_suites_exit_2_before_anything_runs(settings: Settings, ledger: Ledger,
                                                          tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("suite: bad-suite\nagent: ops\ncases:\n  - name: x\n    input: hi\n"
                   "    expect: {status: done}\n")
    env = _cli_env(settings)
    done = await stead("eval", str(EVALS / "ops.yaml"), str(bad), env=env, cwd=tmp_path)
    assert done.code == 2
    assert f"{bad}:6: case 'x': expect.status.0: Input should be" in done.err

    bad.write_text("suite: bad-suite\ncases:\n  - name: x\n    agent: billing\n    input: hi\n")
    done = await stead("eval", str(bad), env=env, cwd=tmp_path)
    assert done.code == 2
    assert f"{bad}:3: case 'x': unknown agent 'billing' (the catalog serves: ops, refund)" \
        in done.err

    done = await stead("eval", str(EVALS / "ops.yaml"), "--case", "nope", env=env,
                        cwd=tmp_path)
    assert done.code == 2 and "no case named 'nope'; cases: ops/healthy-check" in done.err

    done = await stead("eval", str(EVALS / "ops.yaml"), "--catalog", "stead.agents:nothing",
                        env=env, cwd=tmp_path)
    assert done.code == 2
    assert "--catalog stead.agents:nothing: 'stead.agents' has no function 'nothing'" in done.err
    ran = await ledger.pool.fetchval(
        "select count(*) from stead_runs where metadata->>'stead.eval.suite' = 'bad-suite'")
    assert ran == 0


async def test_cli_eval_on_an_ephemeral_stack(tmp_path: Path) -> None:
    """--ephemeral starts its own throwaway Temporal and PostgreSQL and removes them."""
    env = {k: v for k, v in os.environ.items() if k not in ("TEMPORAL_ADDRESS", "DATABASE_URL")}
    done = await stead("eval", str(EVALS / "ops.yaml"), "--case", "healthy-check",
                        "--ephemeral", "--json", env=env, cwd=tmp_path)

    assert done.code == 0, done.err
    data = json.loads(done.out)
    assert data["passed"] and data["cases"][0]["run_status"] == "completed"
    assert "on a throwaway embedded stack" in done.err

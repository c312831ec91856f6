"""Peak executions on a real ``akobridge serve`` (the local runtime through the shipped
catalogue): execute idempotent per x-peak-requestId, list, details, logs paged with nextToken,
stop (Stopping → Stopped), delete refused while running, retries by exit code with growing
delays, conditions and parentStatus, bad execute bodies."""

from __future__ import annotations

import contextlib
import copy
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_peak_definition import MANUAL
from test_peak_definitions_api import TOKEN, Api, peak_daemon


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from peak_daemon(tmp_path_factory.mktemp("peak-exec"))


def definition(name: str, steps: dict[str, dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"name": name, **top, "steps": {
        n: {"type": "standard", "imageId": 123, "imageVersionId": 1,
            "resources": {"instanceTypeId": 21}, **s} for n, s in steps.items()}}


def execute(api: Api, wf_id: int, body: Any = None, request_id: str | None = None) -> str:
    headers = {"x-peak-requestId": request_id} if request_id else {}
    r = api.call("POST", f"/workflows/{wf_id}/execute", body or {}, headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["executionId"])


def details(api: Api, wf_id: int, ex: str) -> dict[str, Any]:
    r = api.call("GET", f"/workflows/{wf_id}/executions/{ex}")
    assert r.status_code == 200, r.text
    return r.json()


def wait(api: Api, wf_id: int, ex: str, until: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = details(api, wf_id, ex)
        if got["status"] in until:
            return got
        time.sleep(0.2)
    raise AssertionError(f"execution {ex} still {got['status']} after {timeout} s")


def steps_of(got: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in got["steps"]}


def test_an_execution_runs_and_a_retried_execute_starts_no_second(api: Api) -> None:
    wf_id = api.create(definition("exec-basic", {
        "first": {"command": "echo one; echo two"},
        "second": {"command": "echo three", "parents": ["first"]}}))
    request_id = str(uuid.uuid4())
    ex = execute(api, wf_id, request_id=request_id)
    assert execute(api, wf_id, request_id=request_id) == ex  # the client's retry
    uuid.UUID(ex)
    got = wait(api, wf_id, ex, {"Success", "Failed"})
    assert got["status"] == "Success", got
    steps = steps_of(got)
    assert steps["first"]["children"] == ["second"] and steps["second"]["children"] == []
    assert steps["first"]["output"]["exitCode"] == "0"
    assert steps["first"]["command"] == "echo one; echo two"
    assert steps["first"]["resources"] == {"instanceTypeId": 21}
    assert got["executedAt"].endswith("Z") and got["finishedAt"].endswith("Z")
    listing = api.call("GET", f"/workflows/executions/{wf_id}").json()
    assert [e["executionId"] for e in listing["executions"]] == [ex]
    assert (listing["executionCount"], listing["pageCount"], listing["workflowId"]) == (
        1, 1, wf_id)
    assert listing["executions"][0]["status"] == "Success"
    assert api.call("GET", f"/workflows/{wf_id}").json()["lastExecution"]["executionId"] == ex
    ok = api.call("GET", f"/workflows/executions/{wf_id}", params={"statuses": "Failed"})
    assert ok.json()["executions"] == [] and ok.json()["pageCount"] == 0


def test_logs_page_with_next_token_until_the_step_ends(api: Api) -> None:
    wf_id = api.create(definition("exec-logs", {
        "talk": {"command": "for i in 1 2 3; do echo line-$i; sleep 0.5; done"}}))
    ex = execute(api, wf_id)
    seen: list[str] = []
    token: str | None = None
    statuses = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        params = {"stepName": "talk", **({"nextToken": token} if token else {})}
        r = api.call("GET", f"/workflows/{wf_id}/executions/{ex}/logs", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        statuses.add(page["stepRunStatus"])
        seen += [line["message"] for line in page["logs"]]
        assert all(isinstance(line["timestamp"], int) for line in page["logs"])
        token = page["nextToken"]
        if token is None:
            break
        time.sleep(0.2)
    assert seen == ["line-1", "line-2", "line-3"]  # each line once, in order
    assert "Success" in statuses
    bad = api.call("GET", f"/workflows/{wf_id}/executions/{ex}/logs",
                   params={"stepName": "nope"})
    assert bad.status_code == 404 and bad.json()["detail"][0]["field"] == "stepName"


def test_stop_goes_through_stopping_to_stopped_and_delete_waits(api: Api) -> None:
    wf_id = api.create(definition("exec-stop", {"long": {"command": "sleep 120"}}))
    ex = execute(api, wf_id)
    wait(api, wf_id, ex, {"Running"})
    deadline = time.monotonic() + 30
    while steps_of(details(api, wf_id, ex))["long"]["status"] != "Running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    refused = api.call("DELETE", f"/workflows/{wf_id}")
    assert refused.status_code == 409, refused.text
    r = api.call("POST", f"/workflows/{wf_id}/executions/{ex}/stop")
    assert r.status_code == 200 and r.json() == {}
    got = wait(api, wf_id, ex, {"Stopped"}, timeout=30)
    assert steps_of(got)["long"]["status"] == "Stopped"
    listed = api.call("GET", f"/workflows/executions/{wf_id}").json()["executions"][0]
    assert listed["status"] == "Stopped" and listed["stoppedBy"]
    assert api.call("DELETE", f"/workflows/{wf_id}").status_code == 200


def test_retries_follow_exit_codes_with_growing_delays(api: Api, tmp_path: Path) -> None:
    tries = tmp_path / "tries"
    retry = {"exitCodes": [1], "numberOfRetries": 2, "exponentialBackoff": True, "duration": 1}
    wf_id = api.create(definition("exec-retry", {
        "flaky": {"command": f"date +%s.%N >> {tries}; exit 1"},
        "other": {"command": "exit 2"}}, retryOptions=retry))
    ex = execute(api, wf_id)
    got = wait(api, wf_id, ex, {"Success", "Failed"}, timeout=90)
    steps = steps_of(got)
    assert got["status"] == "Failed"
    assert (steps["flaky"]["attempt"], steps["flaky"]["output"]["exitCode"]) == (3, "1")
    assert (steps["other"]["attempt"], steps["other"]["output"]["exitCode"]) == (1, "2")
    starts = [float(line) for line in tries.read_text().split()]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert len(starts) == 3 and 1.0 <= gaps[0] < 5 and 2.0 <= gaps[1] < 7  # 1 s, then 2 s
    assert gaps[1] > gaps[0]


def on_answer(condition: str, value: str) -> dict[str, Any]:
    """``executionParameters``: run when step ask's output ``answer`` equals / does not equal
    ``value``."""
    return {"conditional": [{"condition": condition, "paramName": "answer", "stepName": "ask",
                             "value": value}]}


def test_conditions_and_a_cleanup_after_failure(api: Api) -> None:
    def when(value: str) -> dict[str, Any]:
        return on_answer("equals", value)
    wf_id = api.create(definition("exec-rules", {
        "ask": {"command": "echo yes > answer.txt", "outputParameters": {"answer": "answer.txt"}},
        "on_yes": {"command": "true", "parents": ["ask"], "executionParameters": when("yes")},
        "on_no": {"command": "true", "parents": ["ask"], "executionParameters": when("no")},
        "breaks": {"command": "exit 3", "parents": ["on_yes"]},
        "cleanup": {"command": "echo cleaning", "parents": ["breaks"], "executionParameters": {
            "parentStatus": [{"condition": "one-of", "parents": ["breaks"],
                              "status": ["failure"]}]}}}))
    got = wait(api, wf_id, execute(api, wf_id), {"Success", "Failed"})
    status = {n: s["status"] for n, s in steps_of(got).items()}
    assert status == {"ask": "Success", "on_yes": "Success", "on_no": "Skipped",
                      "breaks": "Failed", "cleanup": "Success"}
    assert got["status"] == "Failed"


def test_not_equals_runs_a_step_only_when_the_output_differs(api: Api) -> None:
    def unless(value: str) -> dict[str, Any]:
        return on_answer("not-equals", value)
    wf_id = api.create(definition("exec-not-equals", {
        "ask": {"command": "echo yes > answer.txt", "outputParameters": {"answer": "answer.txt"}},
        "unless_no": {"command": "echo ran", "parents": ["ask"],
                      "executionParameters": unless("no")},
        "unless_yes": {"command": "exit 4", "parents": ["ask"],
                       "executionParameters": unless("yes")},
        "after_unless_yes": {"command": "exit 5", "parents": ["unless_yes"]}}))
    got = wait(api, wf_id, execute(api, wf_id), {"Success", "Failed"})
    steps = steps_of(got)
    assert {n: s["status"] for n, s in steps.items()} == {
        "ask": "Success", "unless_no": "Success", "unless_yes": "Skipped",
        "after_unless_yes": "Skipped"}
    assert steps["unless_yes"]["jobId"] is None and steps["after_unless_yes"]["jobId"] is None
    assert "not-equals" in steps["unless_yes"]["output"]["message"]
    assert got["status"] == "Success"  # skipped by a rule is not a failure


def test_skip_configuration_skip_and_skip_dag(api: Api) -> None:
    """``skip``: the step is Skipped (its command, which would fail, never runs) and its
    dependent runs; with ``skipDAG`` its dependents, and theirs, are Skipped too."""
    def skip(dag: bool) -> dict[str, Any]:
        return {"skipConfiguration": {"skip": True, "skipDAG": dag}}
    wf_id = api.create(definition("exec-skips", {
        "skipped": {"command": "exit 3", "runConfiguration": skip(False)},
        "after_skipped": {"command": "echo ran", "parents": ["skipped"]},
        "skipped_dag": {"command": "exit 3", "runConfiguration": skip(True)},
        "child": {"command": "exit 4", "parents": ["skipped_dag"]},
        "grandchild": {"command": "exit 5", "parents": ["child"]}}))
    ex = execute(api, wf_id)
    got = wait(api, wf_id, ex, {"Success", "Failed"})
    steps = steps_of(got)
    assert {n: s["status"] for n, s in steps.items()} == {
        "skipped": "Skipped", "after_skipped": "Success", "skipped_dag": "Skipped",
        "child": "Skipped", "grandchild": "Skipped"}
    assert all(steps[n]["jobId"] is None for n in ("skipped", "skipped_dag", "child",
                                                     "grandchild"))
    assert "skipConfiguration" in steps["skipped"]["output"]["message"]
    page = api.call("GET", f"/workflows/{wf_id}/executions/{ex}/logs",
                    params={"stepName": "after_skipped"}).json()
    assert [line["message"] for line in page["logs"]] == ["ran"]
    assert got["status"] == "Success"


def test_steps_to_run_and_params(api: Api) -> None:
    wf_id = api.create(definition("exec-some", {
        "a": {"command": "echo $GREETING-$WHO"}, "b": {"command": "true", "parents": ["a"]},
        "c": {"command": "true"}}))
    body = {"params": {"global": {"GREETING": "hello", "WHO": "all"},
                       "stepWise": {"a": {"WHO": "a"}}},
            "stepsToRun": [{"stepName": "a", "runDAG": True}]}
    ex = execute(api, wf_id, body)
    got = wait(api, wf_id, ex, {"Success", "Failed"})
    assert sorted(steps_of(got)) == ["a", "b"]
    page = api.call("GET", f"/workflows/{wf_id}/executions/{ex}/logs",
                    params={"stepName": "a"}).json()
    assert [line["message"] for line in page["logs"]] == ["hello-a"]


def test_the_seeds_manual_body_executes(api: Api) -> None:
    """As written, but its repositories point at a closed local port: a test reaches no
    outside host (the checkout then fails at once, failing those steps)."""
    seed = copy.deepcopy(MANUAL[0])
    for step in seed["steps"].values():
        if "repository" in step:
            step["repository"]["url"] = "http://127.0.0.1:9/org/repo"
    wf_id = api.create(seed, name="seed-manual-exec")
    ex = execute(api, wf_id)
    got = wait(api, wf_id, ex, {"Success", "Failed"})
    assert {s["name"] for s in got["steps"]} == set(MANUAL[0]["steps"])
    assert all(s["status"] in ("Success", "Failed", "Skipped") for s in got["steps"])


@pytest.mark.parametrize(("body", "field"), [
    ([], "body"), ({"params": []}, "params"), ({"params": {"global": []}}, "params.global"),
    ({"params": {"global": {"1X": "v"}}}, "params.global.1X"),
    ({"params": {"global": {"X": {"a": 1}}}}, "params.global.X"),
    ({"params": {"stepWise": {"zz": {}}}}, "params.stepWise.zz"),
    ({"stepsToRun": {}}, "stepsToRun"), ({"stepsToRun": [{"stepName": 3}]}, "stepsToRun[0]"),
    ({"stepsToRun": [{"stepName": "a", "runDAG": "yes"}]}, "stepsToRun[0].runDAG"),
    ({"stepsToRun": [{"stepName": "zz"}]}, "stepsToRun[0].stepName"),
    ({"other": 1}, "other")])
def test_a_bad_execute_body_names_the_field(api: Api, body: Any, field: str) -> None:
    wf_id = api.create(definition(f"exec-bad-{uuid.uuid4().hex[:8]}", {"a": {"command": "true"}}))
    r = api.call("POST", f"/workflows/{wf_id}/execute", body)
    assert r.status_code == 400, r.text
    assert r.json()["detail"][0]["field"] == field
    assert api.call("GET", f"/workflows/executions/{wf_id}").json()["executionCount"] == 0


def test_unknown_ids_are_404(api: Api) -> None:
    wf_id = api.create(definition("exec-404", {"a": {"command": "true"}}))
    assert api.call("POST", "/workflows/999999/execute").status_code == 404
    r = api.call("GET", f"/workflows/{wf_id}/executions/{uuid.uuid4()}")
    assert r.status_code == 404 and r.json()["detail"][0]["field"] == "executionId"
    assert api.call("GET", "/workflows/executions/999999").status_code == 404



def test_a_reply_lost_after_execute_starts_one_execution(api: Api) -> None:
    """The connection is cut before the reply (the client then resends with the same
    x-peak-requestId, as peak-sdk's retries do): exactly one execution runs."""
    import json
    import socket
    from urllib.parse import urlsplit

    wf_id = api.create(definition("exec-lost-reply", {"a": {"command": "sleep 1"}}))
    request_id = str(uuid.uuid4())
    url = urlsplit(api.daemon.url)
    body = json.dumps({}).encode()
    raw = (f"POST /workflows/api/v1/workflows/{wf_id}/execute HTTP/1.1\r\n"
           f"Host: {url.hostname}\r\nAuthorization: {TOKEN}\r\n"
           f"Content-Type: application/json\r\nx-peak-requestId: {request_id}\r\n"
           f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_RDWR)  # gone before any reply
    deadline = time.monotonic() + 10  # the first request did start one
    while time.monotonic() < deadline:
        first = api.call("GET", f"/workflows/executions/{wf_id}").json()["executions"]
        if first:
            break
        time.sleep(0.1)
    assert len(first) == 1
    ex = execute(api, wf_id, request_id=request_id)  # the retry
    assert ex == first[0]["executionId"]
    assert execute(api, wf_id, request_id=request_id) == ex
    listing = api.call("GET", f"/workflows/executions/{wf_id}").json()
    assert [e["executionId"] for e in listing["executions"]] == [ex]


def test_a_step_over_its_step_timeout_fails(api: Api) -> None:
    """stepTimeout seconds → the job's time limit (Slurm counts whole minutes: 1 s → 1 min);
    the step ends Failed with the time-limit reason, its dependents are skipped."""
    wf_id = api.create(definition("exec-timeout", {
        "slow": {"command": "sleep 300", "stepTimeout": 1},
        "after": {"command": "true", "parents": ["slow"]}}))
    began = time.monotonic()
    got = wait(api, wf_id, execute(api, wf_id), {"Success", "Failed"}, timeout=150)
    steps = steps_of(got)
    assert got["status"] == "Failed"
    assert steps["slow"]["status"] == "Failed" and "time limit" in steps["slow"]["output"][
        "message"]
    assert steps["after"]["status"] == "Skipped"
    assert 55 <= time.monotonic() - began < 140


def test_a_steps_log_holds_its_stderr_too(api: Api) -> None:
    wf_id = api.create(definition("exec-stderr", {
        "both": {"command": "echo to-out; echo to-err >&2; sleep 0.2; echo out-again"}}))
    ex = execute(api, wf_id)
    wait(api, wf_id, ex, {"Success", "Failed"})
    page = api.call("GET", f"/workflows/{wf_id}/executions/{ex}/logs",
                    params={"stepName": "both"}).json()
    assert [line["message"] for line in page["logs"]] == ["to-out", "to-err", "out-again"]


def test_inherit_passes_an_upstream_output_as_an_environment_variable(api: Api) -> None:
    wf_id = api.create(definition("exec-inherit", {
        "make": {"command": "echo 42 > answer.txt",
                 "outputParameters": {"answer": "answer.txt"}},
        "middle": {"command": "true", "parents": ["make"]},
        "use": {"command": 'echo "got=$ANSWER."', "parents": ["middle"],
                "parameters": {"inherit": {"ANSWER": "answer"}}}}))
    ex = execute(api, wf_id)
    assert wait(api, wf_id, ex, {"Success", "Failed"})["status"] == "Success"
    page = api.call("GET", f"/workflows/{wf_id}/executions/{ex}/logs",
                    params={"stepName": "use"}).json()
    assert [line["message"] for line in page["logs"]] == ["got=42."]  # from a grandparent


def test_a_cluster_gone_after_a_reload_is_a_400_not_a_500(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The instance type's cluster was removed and the daemon reloaded (SIGHUP): execute
    answers 400 naming the steps, never a 5xx (peak-sdk would resend a 5xx four times)."""
    import signal

    import yaml
    from test_peak_definitions_api import SHIPPED_PEAK

    tmp = tmp_path_factory.mktemp("peak-gone")
    clusters = tmp / "clusters"
    clusters.mkdir()
    (clusters / "extra.yaml").write_text(yaml.safe_dump({
        "name": "extra", "kind": "process", "transport": "local",
        "workdir": str(tmp / "jobs"), "container": {"engine": "none"}}))
    types = [*SHIPPED_PEAK["instance_types"],
             {"id": 41, "cluster": "extra", "cpus": 1, "memory": "1Gi"}]
    with contextlib.closing(peak_daemon(tmp, {"peak": {"instance_types": types}})) as started:
        gone = next(started)
        daemon = gone.daemon
        wf_id = gone.create(definition("exec-gone", {
            "a": {"command": "true", "resources": {"instanceTypeId": 41}}}))
        (clusters / "extra.yaml").unlink()
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "cluster configs reloaded" not in daemon.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        r = gone.call("POST", f"/workflows/{wf_id}/execute", {})
        assert r.status_code == 400, r.text
        assert r.json()["detail"][0]["field"] == "steps" and "extra" in r.text

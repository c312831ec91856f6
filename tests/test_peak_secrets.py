"""Peak ``parameters.secrets``: values from the daemon's secrets file (mode 0600) reach the
job's environment and nowhere else — not the job script, the store, the logs, the API replies
or the daemon's own log; the file that carries them is gone once the job started."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_peak_definitions_api import Api, files_holding, peak_daemon, private_file
from test_peak_executions_api import definition, execute, wait

VALUE = "s3cr3t-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def secret_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Path]]:
    tmp = tmp_path_factory.mktemp("peak-secrets")
    secrets = private_file(tmp / "secrets", f"# for the test\nsecret-1={VALUE}\nother=x\n")
    for client in peak_daemon(tmp, {"peak": {"secrets_file": secrets}}):
        yield client, tmp


def test_a_secret_reaches_the_job_and_nothing_else(secret_api: tuple[Api, Path]) -> None:
    api, tmp = secret_api
    wf_id = api.create(definition("with-secret", {"use": {
        "command": f'test "$secret_1" = {VALUE[:7]}"${{secret_1#{VALUE[:7]}}}" && '
                   'echo "length ${#secret_1}"; ls "$AKB_JOBDIR"',
        "parameters": {"secrets": ["secret-1"]}}}))
    ex = execute(api, wf_id)
    got = wait(api, wf_id, ex, {"Success", "Failed"})
    assert got["status"] == "Success", got
    logs = api.call("GET", f"/workflows/{wf_id}/executions/{ex}/logs",
                    params={"stepName": "use"}).json()
    lines = [line["message"] for line in logs["logs"]]
    assert f"length {len(VALUE)}" in lines
    assert "secrets.env" not in lines  # removed before the command ran
    replies = [api.call("GET", f"/workflows/{wf_id}").text, str(got), str(logs),
               api.call("GET", f"/workflows/executions/{wf_id}").text]
    assert not any(VALUE in r for r in replies)
    assert files_holding(tmp, VALUE) == []  # not the script, the store, the WAL, any log


def test_an_unknown_secret_fails_its_step_with_the_reason(
        secret_api: tuple[Api, Path]) -> None:
    """The execution runs (as the seed's bodies must, on a daemon without their secrets); the
    step that names a missing secret fails before any job, saying which."""
    api, _ = secret_api
    wf_id = api.create(definition("missing-secret", {
        "use": {"command": "true", "parameters": {"secrets": ["other", "nope"]}},
        "free": {"command": "true"}}))
    got = wait(api, wf_id, execute(api, wf_id), {"Success", "Failed"})
    steps = {s["name"]: s for s in got["steps"]}
    assert got["status"] == "Failed" and steps["free"]["status"] == "Success"
    assert steps["use"]["status"] == "Failed" and steps["use"]["jobId"] is None
    assert "secret nope is not in the daemon's secrets file" in steps["use"]["output"]["message"]

"""Peak ``repository``: the step's code is cloned on the login node into its job directory
before the job, the command runs inside it; a token (a stored secret) reaches git through a
credential helper on stdin and nowhere else. A real git repository served over HTTP (git's
"dumb" protocol) behind Basic auth."""

from __future__ import annotations

import base64
import subprocess
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_peak_definitions_api import Api, files_holding, peak_daemon, private_file
from test_peak_executions_api import definition, execute, wait

GIT_TOKEN = "ghp_" + uuid.uuid4().hex


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def served_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:PORT/code.git`` with branch ``main`` holding ``hello.txt``."""
    root = tmp_path_factory.mktemp("git")
    work = root / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "hello.txt").write_text("hello from the repository\n")
    git("add", "hello.txt", cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "one",
        cwd=work)
    git("clone", "-q", "--bare", str(work), str(root / "code.git"), cwd=root)
    git("update-server-info", cwd=root / "code.git")
    expected = "Basic " + base64.b64encode(f"x-access-token:{GIT_TOKEN}".encode()).decode()

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *_args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/code.git"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def repo_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Path]]:
    tmp = tmp_path_factory.mktemp("peak-repo")
    secrets = private_file(tmp / "secrets", f"github={GIT_TOKEN}\n")
    for client in peak_daemon(tmp, {"peak": {"secrets_file": secrets}}):
        yield client, tmp


def test_the_command_runs_in_the_checked_out_repository(
        repo_api: tuple[Api, Path], served_repo: str) -> None:
    api, tmp = repo_api
    wf_id = api.create(definition("with-repo", {"code": {
        "command": 'cat hello.txt; basename "$PWD"',
        "repository": {"url": served_repo, "branch": "main", "token": "github"}}}))
    ex = execute(api, wf_id)
    got = wait(api, wf_id, ex, {"Success", "Failed"})
    assert got["status"] == "Success", got["steps"][0]["output"]
    page = api.call("GET", f"/workflows/{wf_id}/executions/{ex}/logs",
                    params={"stepName": "code"}).json()
    assert [line["message"] for line in page["logs"]] == ["hello from the repository", "repo"]
    assert files_holding(tmp, GIT_TOKEN) == []


def test_a_wrong_branch_fails_the_step_with_gits_reason(
        repo_api: tuple[Api, Path], served_repo: str) -> None:
    api, _ = repo_api
    wf_id = api.create(definition("bad-branch", {"code": {
        "command": "true",
        "repository": {"url": served_repo, "branch": "nope", "token": "github"}}}))
    got = wait(api, wf_id, execute(api, wf_id), {"Success", "Failed"})
    [step] = got["steps"]
    assert got["status"] == "Failed" and step["status"] == "Failed"
    assert "checking out" in step["output"]["message"] and "nope" in step["output"]["message"]
    assert GIT_TOKEN not in str(got)

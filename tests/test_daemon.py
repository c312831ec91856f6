"""`akobridge serve` as a real process: the seed's Python snippet against it (local runtime and
real Slurm), tokens and the unix socket, the CLI through a daemon, kill -9 at random moments."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import REPO, STANDIN_BIN, Receiver, lab_cluster, slurm

SEED_TEXT = (REPO.parent / "shared" / "seeds" / "akoflow-integration.txt")
SEED_YAML = (REPO / "tests" / "data" / "seed.yaml").read_text()
SEED_ROOT = "/scratch/.../.../p-inference-nemo"


class Daemon:
    """A running ``akobridge serve``; ``url`` is its TCP address."""

    def __init__(self, tmp: Path, config: dict[str, Any], clusters: Path,
                 env: dict[str, str] | None = None) -> None:
        self.tmp, self.state = tmp, tmp / "state"
        self.cfg_path = tmp / "bridge.yaml"
        self.cfg_path.write_text(yaml.safe_dump({"clusters_dir": str(clusters), **config}))
        self.env = {**os.environ, **(env or {})}
        self.log = tmp / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> Daemon:
        owner = self.state / "owner.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--config", str(self.cfg_path),
             "--state-dir", str(self.state)],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                api = json.loads(owner.read_text())["api"]
                if json.loads(owner.read_text())["pid"] == self.proc.pid:
                    self.url = self._tcp(api)
                    if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                        return self
            except (OSError, ValueError, KeyError, httpx.HTTPError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"daemon did not start: {self.log.read_text()[-3000:]}")

    def _tcp(self, api: str) -> str:
        if api.startswith("http"):
            return api
        text = self.log.read_text()
        found = re.findall(r'"listen": \[([^\]]*)\]', text)
        if not found:
            raise ValueError("not serving yet")
        urls = [u.strip(' "') for u in found[-1].split(",")]
        return next(u for u in urls if u.startswith("http"))

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def write_cluster(clusters: Path, cfg: dict[str, Any]) -> None:
    clusters.mkdir(exist_ok=True)
    (clusters / f"{cfg['name']}.yaml").write_text(yaml.safe_dump(cfg))


def seed_snippet(api_url: str, workflow_yaml: str) -> str:
    """The guide's Python example, taken from the guide; only the URL and the YAML (its paths
    made real on this machine) differ."""
    text = SEED_TEXT.read_text()
    start = text.index("import yaml")
    end = text.index('print("Response Body:", response.json())') + len(
        'print("Response Body:", response.json())')
    code = text[start:end]
    code = code.replace("https://api.akoflow.com/workflows", api_url)
    head, _, rest = code.partition('workflow_yaml = """')
    _, _, tail = rest.partition('"""')
    return f"{head}workflow_yaml = {workflow_yaml!r}{tail}"


def seed_for(tmp: Path, hook: str) -> tuple[str, Path]:
    root = tmp / "p-inference-nemo"
    sifs, wine = tmp / "data-akoflow" / "sifs", tmp / "data-akoflow" / "akf-wine-singularity"
    sifs.mkdir(parents=True)
    wine.mkdir()
    (sifs / "p-inference-nemo.sif").write_bytes(b"not really an image")
    (wine / "MLproject").write_text("name: tutorial\n")
    text = SEED_YAML.replace(SEED_ROOT, str(root)).replace("/data-akoflow/",
                                                           f"{tmp}/data-akoflow/")
    return text.replace("https://myhost.com/mypath/mywebhook", hook), root


def loopback_config(**extra: Any) -> dict[str, Any]:
    return {"api": {"listen": ["127.0.0.1:0"], "allow_loopback_without_token": True},
            "webhooks": {"first_delay": 0.2, "max_delay": 1}, **extra}


@pytest.mark.parametrize("where", ["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def test_the_seed_snippet_runs_through_the_daemon(tmp_path: Path, receiver: Receiver,
                                                  where: str, request: Any) -> None:
    clusters = tmp_path / "clusters"
    if where == "local":
        write_cluster(clusters, {"name": "sdumont", "kind": "process", "transport": "local",
                                 "workdir": str(tmp_path / "jobs"),
                                 "container": {"engine": "none"}})
    else:
        request.getfixturevalue("slurm_cluster")
        base = lab_cluster("local", tmp_path).model_copy(update={
            "name": "sdumont", "aliases": (),
            "env": {**lab_cluster("local", tmp_path).env,
                    "PATH": f"{STANDIN_BIN}:{os.environ['PATH']}"}})
        write_cluster(clusters, base.model_dump(mode="json", exclude_none=True))
    text, root = seed_for(tmp_path, receiver.url)
    daemon = Daemon(tmp_path, loopback_config(
        staging={"allowed_roots": [str(tmp_path / "data-akoflow")]}), clusters,
        env={"PATH": f"{STANDIN_BIN}:{os.environ['PATH']}"}).start()  # conda stand-in
    try:
        script = tmp_path / "client.py"
        script.write_text(seed_snippet(f"{daemon.url}/workflows", text))
        res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0, res.stderr
        assert "Response Status Code: 201" in res.stdout
        wf_id = int(re.search(r"'id': (\d+)", res.stdout).group(1))  # type: ignore[union-attr]
        received = receiver.wait_for(2, timeout=90)
        types = [r.body["type"] for r in received]
        assert types == ["ACTIVITY_COMPLETED", "WORKFLOW_DONE"], types
        act, done = received[0].body["data"], received[1].body["data"]
        assert act["Status"] == 1 and act["WorkflowId"] == wf_id
        assert act["Name"] == "inference-examples" and act["ProcId"]
        assert done["ID"] == wf_id and done["Status"] == 1 and done["Runtime"] == "sdumont"
        assert base64.b64decode(done["RawWorkflow"]).decode() == text
        ids = {r.headers["X-Akobridge-Event-Id"] for r in received}
        assert len(ids) == 2
        wf = httpx.get(f"{daemon.url}/workflows/{wf_id}").json()
        assert wf["state"] == "COMPLETED"
        assert Path(root, "akf-wine-sdumont", "MLproject").exists()  # staged in
    finally:
        assert daemon.stop() == 0


def test_tokens_off_loopback_and_the_unix_socket(tmp_path: Path) -> None:
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    token = "t0ken-" + "x" * 26
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# api tokens\n{token}\n")
    tokens.chmod(0o600)
    sock = tmp_path / "api.sock"
    daemon = Daemon(tmp_path, {"api": {"listen": [f"unix:{sock}", "127.0.0.1:0"],
                                       "token_file": str(tokens)}}, clusters)
    body = {"workflow": base64.b64encode((REPO / "examples" / "hello.yaml").read_bytes())
            .decode()}
    daemon.start()
    try:
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        r = httpx.post(f"{daemon.url}/workflows", json=body)
        assert r.status_code == 401 and r.json()["detail"][0]["field"] == "Authorization"
        r = httpx.post(f"{daemon.url}/workflows", json=body,
                       headers={"Authorization": "Bearer wrong-token-wrong-token"})
        assert r.status_code == 401
        assert httpx.get(f"{daemon.url}/workflows").status_code == 401
        assert httpx.get(f"{daemon.url}/metrics").status_code == 401
        assert httpx.get(f"{daemon.url}/healthz").status_code == 200
        r = httpx.post(f"{daemon.url}/workflows", json=body,
                       headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                          base_url="http://akobridge") as unix:
            r = unix.post("/workflows", json=body)
            assert r.status_code == 201, r.text
            assert unix.get("/workflows").json()["total"] == 2
        assert token not in daemon.log.read_text()
    finally:
        assert daemon.stop() == 0
    assert not sock.exists()


@pytest.mark.parametrize(("config", "message"), [
    ({"api": {"listen": ["0.0.0.0:0"]}}, "api.listen[0]"),
    ({"api": {"listen": ["127.0.0.1:0"]}}, "allow_loopback_without_token"),
    ({"api": {"listen": ["unix:relative.sock"]}}, "api.listen"),
    ({"api": {"listen": ["unix:/tmp/x.sock"], "max_body": "lots"}}, "api.max_body"),
    ({"api": {"listen": ["unix:/tmp/x.sock"]}, "webhooks": {"attempts": 0}},
     "webhooks.attempts"),
    ({"api": {"listen": ["unix:/tmp/x.sock"]}, "colour": "blue"}, "colour"),
])
def test_bad_daemon_configs_name_the_field(tmp_path: Path, config: dict[str, Any],
                                           message: str) -> None:
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(yaml.safe_dump(config))
    res = subprocess.run([sys.executable, "-m", "bridge", "serve", "--config", str(cfg),
                          "--state-dir", str(tmp_path / "state")], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "state" / "akobridge.db").exists()


def _normalised(text: str) -> str:
    text = re.sub(r"local-\d+", "local-N", text)
    text = re.sub(r"\d+\.\d+s", "Ts", text)
    return re.sub(r"in \d+(\.\d+)? s", "in T s", text)


def test_run_goes_through_a_daemon_with_the_same_output(tmp_path: Path) -> None:
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    hello = str(REPO / "examples" / "hello.yaml")
    alone = subprocess.run([sys.executable, "-m", "bridge", "--state-dir",
                            str(tmp_path / "alone"), "run", hello], capture_output=True,
                           text=True, timeout=60)
    assert alone.returncode == 0, alone.stderr
    daemon = Daemon(tmp_path, loopback_config(), clusters).start()
    try:
        via = subprocess.run([sys.executable, "-m", "bridge", "--state-dir",
                              str(daemon.state), "run", hello], capture_output=True,
                             text=True, timeout=60)
        assert via.returncode == 0, via.stderr
        assert _normalised(via.stdout) == _normalised(alone.stdout)
        # the daemon stored and drove it (the CLI never took the state dir)
        listed = httpx.get(f"{daemon.url}/workflows").json()
        assert listed["total"] == 1 and listed["items"][0]["state"] == "COMPLETED"
        status = subprocess.run([sys.executable, "-m", "bridge", "--state-dir",
                                 str(daemon.state), "status", "1"], capture_output=True,
                                text=True, timeout=30)
        assert status.returncode == 0 and "COMPLETED" in status.stdout
        logs = subprocess.run([sys.executable, "-m", "bridge", "--state-dir",
                               str(daemon.state), "logs", "1", "greet"], capture_output=True,
                              text=True, timeout=30)
        assert logs.returncode == 0 and logs.stdout.startswith("Hello from"), logs.stderr
    finally:
        assert daemon.stop() == 0


def _layers(n: int, nap: float) -> str:
    acts = []
    for i in range(n):
        deps = [f"a{j}" for j in range(max(0, i - 3 - i % 3), i) if j % 5 == i % 5][:1]
        acts.append({"name": f"a{i}", "run": f"sleep {nap}; echo done a{i}",
                     **({"dependsOn": deps} if deps else {})})
    return yaml.safe_dump({"name": "kill9", "spec": {"runtime": "devslurm",
                                                     "webhooks": [{"url": "HOOK"}],
                                                     "activities": acts}})


@pytest.mark.slurm
@pytest.mark.slow
def test_kill9_the_daemon_at_random_moments(tmp_path: Path, receiver: Receiver,
                                            slurm_cluster: Path) -> None:
    clusters = tmp_path / "clusters"
    cfg = lab_cluster("local", tmp_path)
    write_cluster(clusters, cfg.model_dump(mode="json", exclude_none=True))
    text = _layers(30, 0.5).replace("HOOK", receiver.url)
    daemon = Daemon(tmp_path, loopback_config(), clusters).start()
    r = httpx.post(f"{daemon.url}/workflows",
                   json={"workflow": base64.b64encode(text.encode()).decode()})
    assert r.status_code == 201, r.text
    wf_id = r.json()["id"]
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.05, 1.2))
        state = httpx.get(f"{daemon.url}/workflows/{wf_id}").json()["state"]
        if state != "RUNNING" and kills >= 20:
            break
        daemon.kill9()
        kills += 1
        daemon.start()
    final = httpx.get(f"{daemon.url}/workflows/{wf_id}").json()
    while final["state"] == "RUNNING" and time.monotonic() < deadline + 120:
        time.sleep(0.5)
        final = httpx.get(f"{daemon.url}/workflows/{wf_id}").json()
    assert kills >= 20
    assert final["state"] == "COMPLETED", final["reason"]
    # every activity ran exactly once on Slurm: one job per token, counted by name in sacct
    jobs = [t["job_id"] for a in final["activities"] for t in a["attempts"]]
    assert len(jobs) == 30 and len(set(jobs)) == 30
    out = slurm("sacct", "-n", "-X", "-P", "-o", "JobName,JobID", "-S", "now-1hour")
    prefix = re.match(r"(akb-[0-9a-f]+-\d+)-", _token_of(daemon, jobs[0]))
    assert prefix is not None
    per_name = Counter(line.split("|")[0] for line in out.splitlines()
                       if line.startswith(prefix.group(1) + "-"))
    assert len(per_name) == 30 and set(per_name.values()) == {1}, per_name
    received = receiver.wait_for(31, timeout=60)
    by_event: dict[str, set[str]] = {}
    for rec in received:
        key = rec.body["type"] + str(rec.body["data"].get("Id", rec.body["data"].get("ID")))
        by_event.setdefault(key, set()).add(rec.headers["X-Akobridge-Event-Id"])
    assert len(by_event) == 31  # 30 ACTIVITY_COMPLETED + 1 WORKFLOW_DONE, at least once
    assert all(len(ids) == 1 for ids in by_event.values())  # duplicates share the event id
    first_done = min(i for i, r in enumerate(received) if r.body["type"] == "WORKFLOW_DONE")
    assert len({r.body["data"]["Id"] for r in received[:first_done]}) == 30  # all before it
    assert daemon.stop() == 0


def _token_of(daemon: Daemon, job_id: str) -> str:
    import sqlite3

    db = sqlite3.connect(daemon.state / "akobridge.db")
    try:
        (token,) = db.execute("SELECT token FROM attempts WHERE job_id=?", (job_id,)).fetchone()
    finally:
        db.close()
    return str(token)


def test_the_daemon_takes_spool_files_dropped_at_any_time(tmp_path: Path) -> None:
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    spool = tmp_path / "spool"
    daemon = Daemon(tmp_path, loopback_config(spool={"dir": str(spool), "interval": 0.2}),
                    clusters).start()
    try:
        hello = (REPO / "examples" / "hello.yaml").read_text()
        for name in ("first", "second"):  # the second well after the first scan
            time.sleep(1.5)
            tmp = spool / "incoming" / f".{name}.yaml.tmp"
            tmp.write_text(hello)
            tmp.rename(spool / "incoming" / f"{name}.yaml")
        deadline = time.monotonic() + 20
        while len(list((spool / "accepted").iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(p.name for p in (spool / "accepted").iterdir()) == [
            "1-first.yaml", "2-second.yaml"]
        assert httpx.get(f"{daemon.url}/workflows").json()["total"] == 2
        metrics = httpx.get(f"{daemon.url}/metrics").text  # counted once each, not twice
        assert 'akobridge_workflows_accepted_total{intake="spool"} 2.0' in metrics
    finally:
        assert daemon.stop() == 0


def test_readyz_reports_each_cluster_once_with_its_aliases(tmp_path: Path) -> None:
    clusters = tmp_path / "clusters"
    write_cluster(clusters, {"name": "lab", "aliases": ["dev", "slurm"], "kind": "process",
                             "transport": "local", "workdir": str(tmp_path / "jobs"),
                             "container": {"engine": "none"}})
    daemon = Daemon(tmp_path, loopback_config(), clusters).start()
    try:
        report = httpx.get(f"{daemon.url}/readyz").json()
        assert report["ready"] is True and report["store"] == "ok"
        assert sorted(report["clusters"]) == ["lab", "local"]  # not "dev", "slurm"
        assert report["clusters"]["lab"]["aliases"] == ["dev", "slurm"]
        assert report["clusters"]["lab"]["reachable"] is None  # not used yet
    finally:
        assert daemon.stop() == 0

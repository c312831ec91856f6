#!/usr/bin/env python3
"""Submission over SSH: akobridge versus a raw sbatch loop on one reused connection versus a
fresh ``ssh`` process per command (the AkoFlow engine's way), side by side in one run; then the
AkoFlow engine's own workflow shapes over SSH through akobridge.

    python bench/ssh_submit.py [--n 200] [--rounds 2] [--fresh-sample 40]

Part 1, throughput (N trivial jobs per side and round; the order of the sides is reversed in
every other round, and the queue is drained before every phase):

reused  ONE paramiko connection (socket with TCP_NODELAY, passed as connect(sock=...)), opened
        before the clock; ``exec_command("sbatch --parsable ...")`` per job over N pre-written
        ``#!/bin/bash`` + ``true`` scripts. Submission = first sbatch → last job id.
fresh   ``subprocess.run(["ssh", "-i", key, "-p", port, ..., "sbatch --parsable ..."])`` per job:
        a new process, TCP connection, key exchange and login each time. Only the first
        --fresh-sample jobs are submitted and jobs/s is extrapolated from them.
bridge  an in-process ``Bridge`` on configs/devslurm-ssh.yaml (job directories in a temporary
        directory under /var/tmp/akb-lab/jobs), its SSH connection opened before the clock as
        in a running daemon, driven by ``Bridge.run`` (the daemon's loop). Submission =
        ``bridge.submit()`` → every activity has a job id; also → the workflow is COMPLETED.

Part 2, for akobridge: SSH connections (``transport.connects`` and sshd's "Accepted
publickey" lines), remote round trips per cycle (every ``SSHTransport._request``), and
squeue/sacct calls per cycle (``runtime.calls``).

Part 3, the AkoFlow engine's shapes through akobridge, end to end (``submit()`` → workflow
done; a fresh bridge, so the SSH connection is opened inside the clock): 20 independent
``echo`` activities and a chain of 20, with SSH logins and the Slurm jobs made (by job-name
prefix in sacct), beside the AkoFlow engine's measured figures
(/work/shared/reference/peers.md). As a reference for the chain, the same 20 jobs chained by
Slurm itself (``--dependency=afterok``, all submitted at once): Slurm's own floor.

Goals (issue 3, "Benchmark (bench/)"): akobridge ≥ 0.9× the reused-connection loop and ≥ 10×
the fresh-ssh way; 20 independent: ≤ 5 s, 1 login, exactly 20 jobs; chain of 20: ≤ 20 s.
Prints PASS/MISS; never fails the build.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paramiko
from _common import (
    LAB,
    REPO,
    dbd_queue,
    fmt,
    machine_facts,
    median,
    profile_text,
    settle,
    sh,
    slurm_env,
    verdict,
    wait_gone,
    workflow_yaml,
)

from bridge import logs
from bridge.runner import SUBMIT_CHUNK, Bridge
from bridge.spec import parse_akoflow
from bridge.spec.model import Workflow
from bridge.store import Store
from runtimes.config import ClusterConfig, Clusters, load_cluster

RAW_NAME = "akbbench-ssh"
CONTROLLER_CALLS = ("squeue", "sacct", "scontrol")
SSHD_LOG = LAB / "ssh" / "sshd.log"
ACCEPTED = b"Accepted publickey"

# The AkoFlow engine over SSH on this kind of machine (peers.md, measured 2026-11-23).
AKOFLOW = {
    "independent": {"wall": "29–52 s", "logins": "106–179", "jobs": "46–83"},
    "chain": {"wall": "43–56 s (2.2–2.7 s/step)", "logins": "-", "jobs": "-"},
}


# -- SSH facts -------------------------------------------------------------------------------
class SshdLog:
    """sshd's "Accepted publickey" lines (one per login) written after a mark.

    Other processes on this machine (a test run, say) may log in during a phase too: each
    line names the client's port, so logins are also counted for given ports (this process's
    own connections).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return -1

    def logins_since(self, mark: int, ports: set[int] | None = None) -> Logins:
        if mark < 0:
            return Logins(None, None)
        try:
            with self.path.open("rb") as f:
                f.seek(mark)
                lines = [ln for ln in f.read().splitlines() if ACCEPTED in ln]
        except OSError:
            return Logins(None, None)
        ours = None
        if ports is not None:
            ours = sum(1 for ln in lines if any(f" port {p} ".encode() in ln for p in ports))
        return Logins(len(lines), ours)


@dataclass(frozen=True)
class Logins:
    total: int | None
    """Every login sshd accepted during the phase."""
    ours: int | None
    """Those from this process's own connections (by client port); None if not attributed."""

    @property
    def best(self) -> int | None:
        return self.ours if self.ours is not None else self.total

    def text(self) -> str:
        if self.total is None:
            return "-"
        if self.ours is None or self.ours == self.total:
            return str(self.total)
        return f"{self.ours}(+{self.total - self.ours})"


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    key: str
    known_hosts: str
    env: dict[str, str]

    @classmethod
    def of(cls, cluster: ClusterConfig) -> Target:
        s = cluster.ssh
        assert s is not None and s.key_file and s.known_hosts, "needs ssh key_file/known_hosts"
        return cls(s.host, s.port, s.user or "root", os.path.expanduser(s.key_file),
                   os.path.expanduser(s.known_hosts), dict(cluster.env))

    def prefix(self) -> str:
        """The cluster's environment (SLURM_CONF) as ``K=V`` words before the command."""
        return "".join(f"{k}={shlex.quote(v)} " for k, v in self.env.items())

    def ssh_argv(self, command: str) -> list[str]:
        """One fresh ``ssh`` process per command, as the AkoFlow engine does (but verifying
        the host key, which the engine does not)."""
        return ["ssh", "-i", self.key, "-p", str(self.port),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", f"{self.user}@{self.host}", command]

    def client(self) -> paramiko.SSHClient:
        """One paramiko connection; TCP_NODELAY on the socket given to connect(sock=...)."""
        sock = socket.create_connection((self.host, self.port), timeout=15)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = paramiko.SSHClient()
        client.load_host_keys(self.known_hosts)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(self.host, self.port, username=self.user, key_filename=self.key,
                       sock=sock, allow_agent=False, look_for_keys=False, timeout=15)
        return client


def exec_one(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    """One ``exec_command`` (a new channel and a non-interactive shell on the server)."""
    _, stdout, _ = client.exec_command(command)
    out = stdout.read().decode()
    return stdout.channel.recv_exit_status(), out


def client_port(client: paramiko.SSHClient) -> int:
    """The local TCP port of a connection: sshd logs it with the login."""
    transport = client.get_transport()
    sock = transport.sock if transport is not None else None
    return int(sock.getsockname()[1]) if isinstance(sock, socket.socket) else -1


def probe_latency(t: Target, samples: int) -> tuple[float, float]:
    """Median ms of ``true``: one exec_command on a reused connection; one fresh ssh process."""
    client = t.client()
    try:
        exec_ms = []
        for _ in range(samples):
            s = time.perf_counter()
            exec_one(client, "true")
            exec_ms.append((time.perf_counter() - s) * 1000)
    finally:
        client.close()
    fresh_ms = []
    for _ in range(max(2, samples // 2)):
        s = time.perf_counter()
        subprocess.run(t.ssh_argv("true"), capture_output=True, check=False)
        fresh_ms.append((time.perf_counter() - s) * 1000)
    return statistics.median(exec_ms), statistics.median(fresh_ms)


# -- raw sides -------------------------------------------------------------------------------
@dataclass
class RawResult:
    side: str
    jobs: int
    submit_s: float
    e2e_s: float | None
    errors: int
    logins: Logins
    sbatch_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.jobs / self.submit_s


def trivial_scripts(n: int, d: Path) -> list[str]:
    """``sbatch`` command lines over N pre-written scripts, each with its own --output."""
    cmds = []
    for i in range(n):
        p = d / f"job{i}.sh"
        p.write_text("#!/bin/bash\ntrue\n")
        cmds.append(f"sbatch --parsable --job-name={RAW_NAME} --output={d}/job{i}.out {p}")
    return cmds


def raw_round(side: str, cmds: list[str], t: Target, env: dict[str, str], poll: float,
              timeout: float, sshd: SshdLog) -> RawResult:
    mark = sshd.mark()
    ids: set[str] = set()
    errors = 0
    lat: list[float] = []
    client = t.client() if side == "reused" else None  # opened before the clock
    ports = {client_port(client)} if client is not None else None
    try:
        t0 = time.perf_counter()
        for c in cmds:
            s = time.perf_counter()
            if client is not None:
                rc, out = exec_one(client, t.prefix() + c)
            else:
                res = subprocess.run(t.ssh_argv(t.prefix() + c), capture_output=True,
                                     text=True, check=False)
                rc, out = res.returncode, res.stdout
            lat.append((time.perf_counter() - s) * 1000)
            job_id = out.strip().split(";")[0]
            if rc != 0 or not job_id.isdigit():
                errors += 1
                continue
            ids.add(job_id)
        submit_s = time.perf_counter() - t0
    finally:
        if client is not None:
            client.close()
    e2e = wait_gone(ids, env, t0, poll, timeout)
    return RawResult(side, len(cmds), submit_s, e2e, errors, sshd.logins_since(mark, ports),
                     lat)


@dataclass
class NativeChain:
    total_s: float | None
    starts: list[float] = field(default_factory=list)
    """Each job's start (its own clock; Slurm runs on this machine)."""


def native_chain(n: int, t: Target, d: Path, timeout: float) -> NativeChain:
    """Slurm's own floor for a chain: N ``echo`` jobs chained with ``--dependency=afterok``,
    all submitted at once over one reused connection (no client in the loop at all).
    Seconds from the first sbatch until the last job ended, and each job's start."""
    client = t.client()
    prev = ""
    try:
        t0 = time.time()
        for i in range(n):
            p = d / f"chain{i}.sh"
            p.write_text(f"#!/bin/bash\nakb_s=$(date +%s.%N)\necho step {i}\n"
                         f"echo $akb_s $(date +%s.%N) > {d}/chain{i}.t\n")
            dep = f" --dependency=afterok:{prev}" if prev else ""
            rc, out = exec_one(client, f"{t.prefix()}sbatch --parsable --job-name={RAW_NAME}"
                                       f"{dep} --output={d}/chain{i}.out {p}")
            prev = out.strip().split(";")[0]
            if rc != 0 or not prev.isdigit():
                return NativeChain(None)
    finally:
        client.close()
    last = d / f"chain{n - 1}.t"
    deadline = time.monotonic() + timeout
    while not (last.exists() and last.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not last.exists():
        return NativeChain(None)
    stamps = [[float(x) for x in (d / f"chain{i}.t").read_text().split()] for i in range(n)]
    return NativeChain(stamps[-1][1] - t0, [st[0] for st in stamps])


def spacing(starts: list[float]) -> str:
    """Seconds between consecutive starts of a chain's jobs: median, max, and how many steps
    took more than 1.5 s (missed one scheduler tick of slurmctld, 1 s)."""
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False) if a == a and b == b]
    if not gaps:
        return "-"
    slow = sum(1 for g in gaps if g > 1.5)
    return (f"start-to-start median {statistics.median(gaps):.2f} s, max {max(gaps):.2f} s, "
            f"{slow} of {len(gaps)} steps > 1.5 s")


# -- akobridge -------------------------------------------------------------------------------
class RemoteCounter:
    """Counts and times every round trip of an SSHTransport (each ``_request`` is one command
    sent to the persistent remote shell and its answer), labelled by the public call that
    made it, and every connection opened."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.requests = 0
        self.by_label: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self.open_s: list[float] = []
        self.ports: set[int] = set()
        self._label = "?"
        inner_request, inner_open = transport._request, transport._open

        def request(script: str, retry: bool) -> Any:
            s = time.perf_counter()
            try:
                return inner_request(script, retry)
            finally:
                self.requests += 1
                self.by_label[self._label] += 1
                self.seconds[self._label] += time.perf_counter() - s

        def open_() -> None:
            s = time.perf_counter()
            try:
                inner_open()
            finally:
                self.open_s.append(time.perf_counter() - s)
                if transport._client is not None:
                    self.ports.add(client_port(transport._client))

        transport._request, transport._open = request, open_
        for name in ("run", "run_many", "read_files", "write_files"):
            setattr(transport, name, self._labelled(name, getattr(transport, name)))

    def _labelled(self, name: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kw: Any) -> Any:
            first = args[0] if args else None
            if name == "run" and first:
                label = f"run {first[0]}"
            elif name == "run_many" and first:
                label = f"run_many {first[0][0]}"
            else:
                label = name
            outer, self._label = self._label, label
            try:
                return inner(*args, **kw)
            finally:
                self._label = outer
        return call

    def snapshot(self) -> tuple[int, Counter[str]]:
        return self.requests, Counter(self.by_label)


@dataclass
class CycleStats:
    """Per cycle of Bridge.run: round trips, controller calls, and whether it submitted."""

    trips: list[int] = field(default_factory=list)
    submitting: list[bool] = field(default_factory=list)
    controller: dict[str, list[int]] = field(
        default_factory=lambda: {c: [] for c in CONTROLLER_CALLS})
    labels: Counter[str] = field(default_factory=Counter)

    def follow_trips(self) -> list[int]:
        return [t for t, s in zip(self.trips, self.submitting, strict=True) if not s]

    def submit_trips(self) -> list[int]:
        return [t for t, s in zip(self.trips, self.submitting, strict=True) if s]


@dataclass
class BridgeResult:
    submit_s: float | None
    done_s: float | None
    gone_s: float | None
    state: str
    activities: int
    attempts: int
    connects: int
    logins: Logins
    connect_s: float | None
    cycles: CycleStats
    remote_s_submit: dict[str, float]
    jobs_in_sacct: int | None = None
    steps: list[tuple[float, float, float]] = field(default_factory=list)
    profile: str = ""


def ssh_cluster(base: ClusterConfig, jobs: Path, conf: str, poll: float | None,
                marker: float | None) -> ClusterConfig:
    upd: dict[str, Any] = {}
    if poll is not None:
        upd["poll_interval"] = poll
    if marker is not None:
        upd["marker_interval"] = marker
    return base.model_copy(update={"workdir": str(jobs), "env": {**base.env, "SLURM_CONF": conf},
                                   "slurm": base.slurm.model_copy(update=upd)})


def echo_yaml(n: int, chain: bool) -> str:
    acts = []
    for i in range(n):
        dep = f"      dependsOn: [s{i - 1}]\n" if chain and i else ""
        acts.append(f'    - name: s{i}\n      run: "echo step {i} on $(hostname)"\n{dep}')
    return f"name: {'chain' if chain else 'fanout'}\nspec:\n  activities:\n{''.join(acts)}"


def sacct_jobs(prefix: str, env: dict[str, str], expect: int, timeout: float = 30.0) -> int:
    """Slurm jobs whose name starts with ``prefix`` (sacct, last hour), once accounting has
    caught up: at least ``expect`` of them, slurmdbd's queue empty, and two equal reads."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        out = sh(["sacct", "-X", "-n", "-P", "-S", "now-1hour", "-o", "JobName"], env)
        count = sum(1 for line in out.splitlines() if line.startswith(prefix))
        if count >= expect and count == last and not dbd_queue(env):
            return count
        if time.monotonic() > deadline:
            return count
        last = count
        time.sleep(0.5)


def bridge_round(yaml_text: str, cluster: ClusterConfig, env: dict[str, str], state: Path,
                 idle: float, poll: float, timeout: float, sshd: SshdLog, *,
                 preopen: bool, count_jobs: bool = False, profile: bool = False) -> BridgeResult:
    """One workflow through a fresh in-process Bridge, driven by ``Bridge.run``.

    ``preopen``: open the SSH connection before the clock (a running daemon has it open);
    otherwise the first cycle opens it inside the clock.
    """
    mark = sshd.mark()
    store = Store(state / "akobridge.db")
    bridge = Bridge(store, Clusters([cluster]), state)
    wf: Workflow = parse_akoflow(yaml_text).workflow.model_copy(update={"runtime": cluster.name})
    db = store.db
    rt = bridge.runtime(cluster.name)
    transport = rt.transport  # type: ignore[attr-defined]
    counter = RemoteCounter(transport)
    if preopen:
        transport.connect()
    stats = CycleStats()
    calls_before = Counter(rt.calls)  # type: ignore[attr-defined]
    trips_before, labels_before = counter.snapshot()
    prof = cProfile.Profile() if profile else None
    submit_s: float | None = None
    remote_submit: dict[str, float] = {}
    wf_id = -1

    def missing_ids() -> int:
        return int(db.execute("SELECT count(*) FROM activities WHERE workflow_id=?"
                              " AND job_id IS NULL AND state NOT IN ('SKIPPED')",
                              (wf_id,)).fetchone()[0])

    def on_cycle() -> None:
        nonlocal calls_before, trips_before, labels_before, submit_s, remote_submit
        trips, labels = counter.snapshot()
        calls = Counter(rt.calls)  # type: ignore[attr-defined]
        delta = calls - calls_before
        stats.trips.append(trips - trips_before)
        stats.submitting.append(delta["sbatch"] > 0)
        stats.labels += labels - labels_before
        for c in CONTROLLER_CALLS:
            stats.controller[c].append(delta[c])
        calls_before, trips_before, labels_before = calls, trips, labels
        if submit_s is None and missing_ids() == 0:
            submit_s = time.perf_counter() - t0
            remote_submit = dict(counter.seconds)

    try:
        if prof:
            prof.enable()
        t0 = time.perf_counter()
        wf_id = bridge.submit(wf)
        try:
            bridge.run([wf_id], idle_s=idle, on_cycle=on_cycle, timeout_s=timeout)
        except TimeoutError:
            print(f"  ! bridge round timed out after {timeout:g} s", flush=True)
        done_s = time.perf_counter() - t0
        if prof:
            prof.disable()
        row = store.workflow(wf_id)
        final = row.state.value if row else "?"
        attempts = db.execute(
            "SELECT t.job_id, t.submitted_at, t.started_at, t.finished_at FROM attempts t"
            " JOIN activities a ON a.id=t.activity_id WHERE a.workflow_id=? ORDER BY a.position",
            (wf_id,)).fetchall()
        job_ids = {str(r[0]) for r in attempts if r[0]}
        logins = sshd.logins_since(mark, counter.ports)
        gone_s = wait_gone(job_ids, env, t0, poll, timeout)
        steps = []
        for r in attempts:  # (submitted, started, finished) as datetimes → seconds
            ts = [datetime.fromisoformat(x).timestamp() if x else float("nan") for x in r[1:]]
            steps.append((ts[0], ts[1], ts[2]))
        n_acts = len(wf.steps)
        jobs = sacct_jobs(f"akb-{store.instance}-{wf_id}-", env, len(attempts)) \
            if count_jobs else None
    finally:
        if prof:
            prof.disable()
        bridge.close()
        store.close()
    text = profile_text(prof, 18)
    return BridgeResult(submit_s, done_s, gone_s, final, n_acts, len(attempts),
                        transport.connects, logins,
                        counter.open_s[0] if counter.open_s else None, stats, remote_submit,
                        jobs, steps, text)


# -- report ----------------------------------------------------------------------------------
def _row(label: str, best: float | None, med: float | None, spec: str = ".2f",
         goal: str = "") -> None:
    print(f"{label:<50}{fmt(best, spec):>9}{fmt(med, spec):>9}   {goal}".rstrip())


def report_throughput(n: int, sample: int, reused: list[RawResult], fresh: list[RawResult],
                      bridges: list[BridgeResult]) -> dict[str, float]:
    print()
    print(f"per round (N={n}; fresh ssh: first {sample} jobs timed, jobs/s extrapolated)")
    print(f"  {'round':<6}{'side':<11}{'jobs':>5}{'submit s':>9}{'jobs/s':>8}{'ms/job':>8}"
          f"{'p50 ms':>8}{'done s':>8}{'left squeue':>12}{'logins':>7}  notes")
    for i in range(max(len(reused), len(fresh), len(bridges))):
        for r in (x[i] for x in (reused, fresh) if i < len(x)):
            print(f"  {i + 1:<6}{r.side:<11}{r.jobs:>5}{r.submit_s:>9.2f}{r.rate:>8.1f}"
                  f"{r.submit_s / r.jobs * 1000:>8.1f}{median(r.sbatch_ms):>8.1f}{'':>8}"
                  f"{fmt(r.e2e_s):>12}{r.logins.text():>7}  "
                  f"{f'{r.errors} sbatch errors' if r.errors else ''}")
        if i < len(bridges):
            b = bridges[i]
            rate = n / b.submit_s if b.submit_s else None
            print(f"  {i + 1:<6}{'akobridge':<11}{n:>5}{fmt(b.submit_s):>9}{fmt(rate, '.1f'):>8}"
                  f"{fmt(b.submit_s / n * 1000 if b.submit_s else None, '.1f'):>8}{'':>8}"
                  f"{fmt(b.done_s):>8}{fmt(b.gone_s):>12}{b.logins.text():>7}  {b.state}, "
                  f"{len(b.cycles.trips)} cycles, {b.attempts} jobs")

    print("  logins: sshd 'Accepted publickey' lines during the phase; a(+b) = a from this "
          "process's own connection(s) (by client port), b from other processes using the lab "
          "sshd at the same time (their rounds are noisy); fresh ssh: all lines (no ports known)")
    ru = [r.rate for r in reused]
    fr = [r.rate for r in fresh]
    br = [n / b.submit_s for b in bridges if b.submit_s]
    ratio_r = (max(br) / max(ru), median(br) / median(ru)) if br and ru else (float("nan"),) * 2
    ratio_f = (max(br) / max(fr), median(br) / median(fr)) if br and fr else (float("nan"),) * 2
    print()
    print(f"{'':<50}{'best':>9}{'median':>9}   goal")
    _row("reused connection, exec_command per sbatch, jobs/s", max(ru), median(ru), ".1f")
    _row("fresh ssh process per sbatch, jobs/s", max(fr), median(fr), ".2f")
    _row("akobridge over SSH, activities/s", max(br, default=None), median(br), ".1f")
    _row("ratio akobridge / reused connection", *ratio_r, ".2f",
         f">= 0.90   {verdict(ratio_r[0] >= 0.9)} (best) / {verdict(ratio_r[1] >= 0.9)} (median)")
    _row("ratio akobridge / fresh ssh", *ratio_f, ".1f",
         f">= 10     {verdict(ratio_f[0] >= 10)} (best) / {verdict(ratio_f[1] >= 10)} (median)")
    done = [b.done_s for b in bridges if b.done_s is not None]
    gone = [b.gone_s for b in bridges if b.gone_s is not None]
    _row("akobridge end-to-end s (workflow done)", min(done, default=None), median(done))
    _row("akobridge end-to-end s (all left squeue)", min(gone, default=None), median(gone))
    _row("reused loop end-to-end s (all left squeue)",
         min((r.e2e_s for r in reused if r.e2e_s), default=None),
         median([r.e2e_s for r in reused if r.e2e_s]))
    return {"reused": ratio_r[1], "fresh": ratio_f[1], "reused_best": ratio_r[0],
            "fresh_best": ratio_f[0]}


def report_connections(bridges: list[BridgeResult]) -> None:
    print()
    print("akobridge over SSH: connections, round trips and controller calls "
          "(all throughput rounds)")
    conns = [b.connects for b in bridges]
    ours = [b.logins.ours for b in bridges if b.logins.ours is not None]
    total = [b.logins.total for b in bridges if b.logins.total is not None]
    ok = all(c == 1 for c in conns + ours) and len(ours) == len(bridges)
    print(f"  SSH connections opened per round: transport.connects={conns}; sshd 'Accepted "
          f"publickey' lines from this process's connection={ours}, from anyone={total}   "
          f"goal 1   {verdict(ok)}")
    stats = CycleStats()
    for b in bridges:
        stats.trips += b.cycles.trips
        stats.submitting += b.cycles.submitting
        stats.labels += b.cycles.labels
        for c in CONTROLLER_CALLS:
            stats.controller[c] += b.cycles.controller[c]
    fol, sub = stats.follow_trips(), stats.submit_trips()

    def mm(xs: list[int]) -> str:
        return f"max {max(xs)}, mean {sum(xs) / len(xs):.2f} over {len(xs)} cycles" if xs \
            else "-"

    print(f"  remote commands (round trips) per poll cycle, following only: {mm(fol)}")
    print(f"  remote commands per cycle that submitted:                    {mm(sub)}")
    print(f"    (a cycle submits in chunks of {SUBMIT_CHUNK}: per chunk one write_files and one "
          "run_many of its sbatch calls, plus that cycle's exit-code read)")
    print("  round trips by call: " + ", ".join(
        f"{k} {v}" for k, v in stats.labels.most_common()))
    for c in CONTROLLER_CALLS:
        xs = stats.controller[c]
        goal = f"goal <= 1   {verdict(max(xs, default=0) <= 1)}" if c != "scontrol" else ""
        print(f"  {c:<8} calls per cycle: max {max(xs, default=0)}, mean "
              f"{sum(xs) / max(1, len(xs)):.2f}   {goal}".rstrip())
    b0 = [b for b in bridges if b.submit_s and b.remote_s_submit]
    if b0:
        print("  where the submission time went (median over rounds, ms per activity):")
        n = b0[0].activities
        keys = sorted({k for b in b0 for k in b.remote_s_submit})
        for k in keys:
            ms = median([b.remote_s_submit.get(k, 0) / n * 1000 for b in b0])
            print(f"    remote {k:<20} {ms:7.2f}")
        own = [(b.submit_s - sum(b.remote_s_submit.values())) / n * 1000 for b in b0
               if b.submit_s]
        print(f"    bridge's own work (and idle) {median(own):7.2f}")


@dataclass
class Shape:
    key: str
    label: str
    chain: bool
    wall_goal: float
    login_goal: int | None
    exact_jobs: bool


SHAPES = [
    Shape("independent", "{n} independent echo", False, 5.0, 1, True),
    Shape("chain", "chain of {n} echo", True, 20.0, 1, True),
]


def report_shapes(n: int, results: dict[str, list[BridgeResult]],
                  floors: list[NativeChain]) -> bool:
    ok_all = True
    label = {s.key: s.label.format(n=n) for s in SHAPES}
    print()
    print("AkoFlow engine shapes over SSH through akobridge (submit() → workflow done, SSH "
          "connection opened inside the clock)")
    print(f"  {'shape':<22}{'run':>4}{'wall s':>8}{'logins':>8}{'conns':>6}{'jobs':>6}"
          f"{'trips':>7}{'squeue':>7}{'sacct':>6}{'cycles':>7}  state")
    for shape in SHAPES:
        for i, b in enumerate(results.get(shape.key, []), 1):
            c = b.cycles
            print(f"  {label[shape.key]:<22}{i:>4}{fmt(b.done_s):>8}{b.logins.text():>8}"
                  f"{b.connects:>6}{fmt(b.jobs_in_sacct, 'd'):>6}{sum(c.trips):>7}"
                  f"{sum(c.controller['squeue']):>7}{sum(c.controller['sacct']):>6}"
                  f"{len(c.trips):>7}  {b.state}")
    print("  logins a(+b): a from the bridge's own connection(s), b from other processes "
          "during the run; conns = transport.connects; trips = remote round trips")
    print()
    print(f"  {'':<30}{'akobridge (every run / worst)':>30}   {'AkoFlow engine':>18}   goal")
    for shape in SHAPES:
        rs = results.get(shape.key, [])
        if not rs:
            continue
        ak = AKOFLOW[shape.key]
        walls = [b.done_s if b.state == "COMPLETED" and b.done_s else float("inf") for b in rs]
        ok = max(walls) <= shape.wall_goal
        ok_all &= ok
        runs = " / ".join(fmt(w) for w in walls)
        print(f"  {label[shape.key] + ': wall s':<30}{runs:>30}   {ak['wall']:>18}   "
              f"<= {shape.wall_goal:g} s  {verdict(ok)}")
        logins = [b.logins.best if b.logins.best is not None else 10**6 for b in rs]
        goal = ""
        if shape.login_goal is not None:
            ok = max(logins) <= shape.login_goal and all(b.connects == 1 for b in rs)
            ok_all &= ok
            goal = f"{shape.login_goal} login  {verdict(ok)}"
        print(f"  {label[shape.key] + ': SSH logins':<30}{max(logins):>30}   {ak['logins']:>18}   "
              f"{goal}".rstrip())
        jobs = [b.jobs_in_sacct if b.jobs_in_sacct is not None else -1 for b in rs]
        worst = max(jobs, key=lambda j: abs(j - n))
        goal = ""
        if shape.exact_jobs:
            ok = all(j == n for j in jobs)
            ok_all &= ok
            goal = f"exactly {n}  {verdict(ok)}"
        print(f"  {label[shape.key] + ': Slurm jobs':<30}{worst:>30}   {ak['jobs']:>18}   "
              f"{goal}".rstrip())
        connect = [b.connect_s for b in rs if b.connect_s is not None]
        if connect:
            print(f"  {label[shape.key] + ': of which connect s':<30}{max(connect):>30.2f}")
    for i, b in enumerate(results.get("chain", []), 1):
        steps = b.steps
        if len(steps) < 2 or not b.done_s:
            continue
        dispatch = [s[1] - s[0] for s in steps]
        runs = [s[2] - s[1] for s in steps]
        hand = [steps[k][0] - steps[k - 1][2] for k in range(1, len(steps))]
        print(f"  chain run {i}: {b.done_s / len(steps):.2f} s per step; medians: Slurm dispatch "
              f"(job id → job started) {median(dispatch) * 1000:.0f} ms, job run "
              f"{median(runs) * 1000:.0f} ms, bridge hand-over (job ended → next job id) "
              f"{median(hand) * 1000:.0f} ms (max {max(hand) * 1000:.0f}); "
              f"{spacing([s[1] for s in steps])}")
    for i, f in enumerate(floors, 1):
        print(f"  Slurm's floor, run {i}: {n} jobs chained with --dependency=afterok, all "
              f"submitted at once (no client in the loop): {fmt(f.total_s)} s from the first "
              f"sbatch to the last job's end; {spacing(f.starts)}")
    walls = [b.done_s for b in results.get("chain", []) if b.done_s]
    fl = [f.total_s for f in floors if f.total_s]
    if walls and fl:
        print(f"  chain: akobridge / Slurm's floor (median over runs) "
              f"{median(walls) / median(fl):.2f}")
    reconnects = [b.connects - 1 for rs in results.values() for b in rs if b.connects > 1]
    if reconnects:
        print(f"  ! the bridge reconnected {sum(reconnects)} time(s): its sshd session was "
              "closed or killed from outside (e.g. tests/test_ssh.py running at the same time "
              "kills every sshd session); those runs are not representative")
    return ok_all


# -- main ------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="jobs / activities per throughput round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of every side (alternating)")
    ap.add_argument("--fresh-sample", type=int, default=40,
                    help="jobs timed for the fresh-ssh side (jobs/s is extrapolated)")
    ap.add_argument("--shape-n", type=int, default=20, help="activities in the AkoFlow shapes")
    ap.add_argument("--shape-runs", type=int, default=2, help="runs of each AkoFlow shape")
    ap.add_argument("--cluster", type=Path, default=REPO / "configs" / "devslurm-ssh.yaml")
    ap.add_argument("--slurm-conf", default=str(LAB / "slurm.conf"))
    ap.add_argument("--poll-interval", type=float, default=None,
                    help="override slurm.poll_interval (default: the config's)")
    ap.add_argument("--marker-interval", type=float, default=None,
                    help="override slurm.marker_interval (default: the config's)")
    ap.add_argument("--idle", type=float, default=0.25,
                    help="Bridge.run idle sleep between cycles (its default, as the daemon)")
    ap.add_argument("--raw-poll", type=float, default=0.2,
                    help="squeue interval while waiting for jobs to leave the queue")
    ap.add_argument("--drain-timeout", type=float, default=300.0)
    ap.add_argument("--settle", type=float, default=2.0,
                    help="pause after the queue is empty and accounting has caught up")
    ap.add_argument("--timeout", type=float, default=600.0, help="max seconds per phase")
    ap.add_argument("--no-chain-floor", action="store_true",
                    help="skip the reference chain of Slurm --dependency jobs (Slurm's floor)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-shapes", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="always run the extra cProfile'd rounds (they run anyway on a MISS)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    logs.configure("WARNING")
    env = slurm_env(args.slurm_conf)
    if not sh(["sinfo", "--noheader", "--format=%T"], env).strip():
        print(f"no Slurm cluster answers with SLURM_CONF={args.slurm_conf}: "
              "run `bash tests/cluster/setup.sh` first", file=sys.stderr)
        return 2
    base = load_cluster(args.cluster)
    if base.transport != "ssh" or base.ssh is None:
        print(f"{args.cluster}: not an ssh cluster config", file=sys.stderr)
        return 2
    target = Target.of(base)
    sshd = SshdLog(SSHD_LOG)
    jobs_root = Path(base.workdir or LAB / "jobs")
    jobs_root.mkdir(parents=True, exist_ok=True)  # sshd runs on this machine: same filesystem
    tmp = Path(tempfile.mkdtemp(prefix="akb-sshbench-", dir=jobs_root))
    slurm_cfg = ssh_cluster(base, tmp, args.slurm_conf, args.poll_interval,
                            args.marker_interval).slurm
    try:
        exec_ms, fresh_ms = probe_latency(target, 10)
    except (OSError, paramiko.SSHException) as exc:
        print(f"cannot reach sshd at {target.host}:{target.port}: {exc}", file=sys.stderr)
        return 2

    print("akobridge over SSH: submission and the AkoFlow engine's shapes")
    for line in machine_facts(env, args.slurm_conf):
        print(f"  {line}")
    print(f"  ssh              {target.user}@{target.host}:{target.port} (sshd log {SSHD_LOG}); "
          f"`true` takes {exec_ms:.0f} ms per exec_command on a reused connection, "
          f"{fresh_ms:.0f} ms per fresh ssh process (median; the login shell's start-up)")
    print(f"  cluster config   {args.cluster.name}: poll_interval={slurm_cfg.poll_interval} s "
          f"(squeue at most this often), marker_interval={slurm_cfg.marker_interval} s, "
          f"Bridge.run idle sleep {args.idle} s (10 ms after a cycle that changed something)")
    print("                   note: the exit-code files are read in ONE round trip on every "
          "cycle (runtimes/slurm/runtime.py poll(); marker_interval is not consulted there), "
          f"so their cadence is the idle sleep, {args.idle} s")
    print(f"  N={args.n}, rounds={args.rounds} (reused, fresh, akobridge; reversed every other "
          f"round), fresh-ssh sample {min(args.fresh_sample, args.n)} jobs; shapes: "
          f"{args.shape_n} activities x {args.shape_runs} runs; tmp={tmp}", flush=True)

    reused: list[RawResult] = []
    fresh: list[RawResult] = []
    bridges: list[BridgeResult] = []
    shapes: dict[str, list[BridgeResult]] = {}
    missed = False
    try:
        if not args.skip_throughput:
            for rnd in range(1, args.rounds + 1):
                order = ["reused", "fresh", "akobridge"]
                if rnd % 2 == 0:
                    order.reverse()
                for side in order:
                    settle(env, args.drain_timeout, f"before {side} round {rnd}", args.settle)
                    print(f"round {rnd}: {side:<10} (load {os.getloadavg()[0]:4.2f}) ...",
                          end=" ", flush=True)
                    d = tmp / f"{side}-{rnd}"
                    d.mkdir()
                    if side == "akobridge":
                        cluster = ssh_cluster(base, d / "jobs", args.slurm_conf,
                                              args.poll_interval, args.marker_interval)
                        b = bridge_round(workflow_yaml(args.n), cluster, env, d, args.idle,
                                         args.raw_poll, args.timeout, sshd, preopen=True)
                        bridges.append(b)
                        rate = args.n / b.submit_s if b.submit_s else None
                        print(f"{fmt(rate, '6.1f')} activities/s, workflow {b.state} after "
                              f"{fmt(b.done_s)} s, {len(b.cycles.trips)} cycles", flush=True)
                        continue
                    m = args.n if side == "reused" else min(args.fresh_sample, args.n)
                    r = raw_round(side, trivial_scripts(m, d), target, env, args.raw_poll,
                                  args.timeout, sshd)
                    (reused if side == "reused" else fresh).append(r)
                    print(f"{r.rate:6.1f} jobs/s over {m} jobs, {r.logins.text()} logins",
                          flush=True)
            ratios = report_throughput(args.n, min(args.fresh_sample, args.n), reused, fresh,
                                       bridges)
            report_connections(bridges)
            missed |= not (ratios["reused"] >= 0.9 and ratios["fresh"] >= 10)

        if not args.skip_shapes:
            floors: list[NativeChain] = []
            kinds: list[Shape | None] = [*SHAPES, None]  # None: Slurm's native chain
            for rnd in range(1, args.shape_runs + 1):
                for shape in kinds if rnd % 2 else kinds[::-1]:
                    if shape is None and args.no_chain_floor:
                        continue
                    key = shape.key if shape else "native"
                    settle(env, args.drain_timeout, f"before {key} run {rnd}", args.settle)
                    name = (shape.label.format(n=args.shape_n) if shape
                            else f"Slurm chain of {args.shape_n}")
                    print(f"shape {rnd}: {name:<20} (load {os.getloadavg()[0]:4.2f}) ...",
                          end=" ", flush=True)
                    d = tmp / f"{key}-{rnd}"
                    d.mkdir()
                    if shape is None:
                        f = native_chain(args.shape_n, target, d, args.timeout)
                        floors.append(f)
                        print(f"{fmt(f.total_s)} s (reference, --dependency=afterok)",
                              flush=True)
                        continue
                    cluster = ssh_cluster(base, d / "jobs", args.slurm_conf, args.poll_interval,
                                          args.marker_interval)
                    b = bridge_round(echo_yaml(args.shape_n, shape.chain), cluster, env, d,
                                     args.idle, args.raw_poll, args.timeout, sshd,
                                     preopen=False, count_jobs=True)
                    shapes.setdefault(shape.key, []).append(b)
                    print(f"{b.state} after {fmt(b.done_s)} s, {b.logins.text()} logins, "
                          f"{fmt(b.jobs_in_sacct, 'd')} jobs", flush=True)
            missed |= not report_shapes(args.shape_n, shapes, floors)

        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\nload average at the end: {load}")

        if not args.no_profile and (args.profile or missed):
            profile_rounds(args, base, env, tmp, sshd)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def profile_rounds(args: argparse.Namespace, base: ClusterConfig, env: dict[str, str],
                   tmp: Path, sshd: SshdLog) -> None:
    """Unscored: one throughput round and one chain under cProfile, with the round trips."""
    runs = [("throughput", workflow_yaml(args.n), True)]
    if not args.skip_shapes:
        runs.append(("chain", echo_yaml(args.shape_n, True), False))
    for name, yaml_text, preopen in runs:
        settle(env, args.drain_timeout, f"before the profiled {name} round", args.settle)
        d = tmp / f"profile-{name}"
        d.mkdir()
        cluster = ssh_cluster(base, d / "jobs", args.slurm_conf, args.poll_interval,
                              args.marker_interval)
        b = bridge_round(yaml_text, cluster, env, d, args.idle, args.raw_poll, args.timeout,
                         sshd, preopen=preopen, profile=True)
        trips = sum(b.cycles.trips)
        print(f"\nprofile ({name}, not scored): submission {fmt(b.submit_s)} s, done "
              f"{fmt(b.done_s)} s, {len(b.cycles.trips)} cycles, {trips} round trips "
              f"({', '.join(f'{k} {v}' for k, v in b.cycles.labels.most_common())}); "
              "top functions by cumulative time:")
        print(b.profile.rstrip())


if __name__ == "__main__":
    sys.exit(main())

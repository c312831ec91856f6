"""``akobridge cluster check``: is a cluster ready for the bridge?

Connects (over SSH: verifies the host key), then runs every probe in ONE batch
(``transport.run_many``: one round trip over SSH): ``sbatch --version``, ``squeue``, ``sacct``,
the container engine, the workdir and image cache (created if missing, written to), the
partition, the prologue. Each check is a row ``(check, ok, detail)``; ``ok`` is ``None`` for a
warning or a check that does not apply.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from runtimes.base import RuntimeFailure
from runtimes.config import ClusterConfig
from runtimes.transport import Completed, LocalTransport, Transport, TransportError

Row = tuple[str, bool | None, str]

ORDER = ["connection", "ssh connection", "host key", "sbatch", "squeue", "accounting",
         "partition", "container engine", "workdir", "image cache", "prologue"]

_WRITABLE = 'mkdir -p -- "$1" && p="$1/.akb-check-$$" && : > "$p" && rm -f -- "$p"'


def open_transport(cluster: ClusterConfig) -> Transport:
    """The cluster's transport; over SSH with a single connection attempt (no backoff)."""
    if cluster.transport == "ssh":
        from runtimes.ssh import SSHTransport

        assert cluster.ssh is not None
        once = cluster.ssh.model_copy(update={"reconnect_attempts": 1})
        return SSHTransport(cluster.model_copy(update={"ssh": once}))
    return LocalTransport(cluster.env)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _why(res: Completed) -> str:
    text = " ".join((res.stderr or res.stdout).split())
    return f"exit {res.returncode}: {text[:300]}" if text else f"exit {res.returncode}"


@dataclass
class _Probe:
    name: str
    argv: list[str]
    judge: Callable[[Completed], Row]


@dataclass
class ClusterCheck:
    """The checks of one cluster config over one transport (see :meth:`run`)."""

    cluster: ClusterConfig
    transport: Transport
    round_trips: int = 0
    commands: list[str] = field(default_factory=list)

    def run(self) -> list[Row]:
        """Connect, then run every probe in one batch; the rows in a fixed order."""
        rows = self._connect()
        if any(ok is False for _, ok, _ in rows):
            return rows
        probes = self._probes()
        argvs = [p.argv for p in probes]
        self.commands = [shlex.join(a) for a in argvs]
        try:
            self.round_trips += 1
            results = self.transport.run_many(argvs)
        except TransportError as exc:
            return [*rows, ("connection", False, str(exc))]
        for probe, res in zip(probes, results, strict=True):
            rows.append(probe.judge(res))
        rows.extend(self._skipped())
        return sorted(rows, key=lambda r: ORDER.index(r[0]) if r[0] in ORDER else len(ORDER))

    def summary(self) -> str:
        """The connections and remote commands the check used (the table's last line)."""
        n = len(self.commands)
        trips = f"{self.round_trips} round trip{'s' if self.round_trips != 1 else ''}"
        if self.cluster.transport == "ssh":
            return (f"ssh: {self.transport.connects} connection(s) opened, {n} remote commands "
                    f"in {trips}")
        return f"local transport: no SSH connection, {n} commands run here in one batch"

    # -- connection -------------------------------------------------------------------------
    def _connect(self) -> list[Row]:
        c = self.cluster
        if c.transport != "ssh":
            return [("connection", True, "local transport: commands run on this machine")]
        from runtimes.ssh import HostKeyError, SSHTransport

        assert c.ssh is not None
        where = f"{c.ssh.user + '@' if c.ssh.user else ''}{c.ssh.host}:{c.ssh.port}"
        if c.ssh.proxy_jump:
            where += f" via {c.ssh.proxy_jump}"
        pin = c.ssh.host_key_fingerprint
        trust = f"pinned {pin}" if pin else (c.ssh.known_hosts or "~/.ssh/known_hosts")
        try:
            if isinstance(self.transport, SSHTransport):
                self.transport.connect()
        except HostKeyError as exc:
            return [("ssh connection", False, f"{where}: refused, see host key"),
                    ("host key", False, str(exc))]
        except TransportError as exc:
            return [("ssh connection", False, str(exc))]
        return [("ssh connection", True, f"{where}, authenticated"),
                ("host key", True, f"verified ({trust})")]

    # -- the batch --------------------------------------------------------------------------
    def _workdir(self) -> str:
        return self.cluster.workdir or ""

    def _probes(self) -> list[_Probe]:
        c = self.cluster
        probes: list[_Probe] = []
        if c.kind == "slurm":
            probes += [
                _Probe("sbatch", ["sbatch", "--version"], self._sbatch),
                _Probe("squeue", ["squeue", "--me", "-h", "-o", "%i"], self._squeue),
            ]
            if c.slurm.accounting != "none":
                probes.append(_Probe("accounting", ["sacct", "-n", "-X", "-S", "now-1hour",
                                                    "-o", "JobID"], self._sacct))
            if c.slurm.partition:
                probes.append(_Probe("partition", ["sinfo", "-h", "-p", c.slurm.partition,
                                                   "-o", "%P"], self._partition))
        if c.container.engine != "none":
            version = f"{c.container.engine} --version"
            script = f"{c.prologue}\n{version}" if c.prologue.strip() else version
            probes.append(_Probe("container engine", ["bash", "-c", script], self._engine))
        if self._workdir():
            probes.append(_Probe("workdir", ["bash", "-c", _WRITABLE, "akb-check",
                                             self._workdir()], self._dir("workdir")))
        if c.container.engine != "none":
            cache = c.container.image_cache or f"{self._workdir()}/images"
            probes.append(_Probe("image cache", ["bash", "-c", _WRITABLE, "akb-check", cache],
                                 self._dir("image cache")))
        if c.prologue.strip():
            probes.append(_Probe("prologue", ["bash", "-c", c.prologue], self._prologue))
        return probes

    def _skipped(self) -> list[Row]:
        c = self.cluster
        rows: list[Row] = []
        if c.kind == "slurm" and c.slurm.accounting == "none":
            rows.append(("accounting", None, "not checked: slurm.accounting is none "
                                             "(scontrol and exit-code files instead)"))
        if c.container.engine == "none":
            rows.append(("container engine", None, "not checked: container.engine is none"))
        if not self._workdir():
            rows.append(("workdir", None, "not set: <state dir>/jobs on this machine"))
        return rows

    def _sbatch(self, res: Completed) -> Row:
        if not res.ok:
            return ("sbatch", False, _why(res))
        detail = _first_line(res.stdout)
        if self.cluster.slurm.backend == "pyslurm":
            from runtimes.slurm.pyslurm_backend import (
                check_pyslurm,
                parse_slurm_version,
                pyslurm_release,
            )

            try:
                check_pyslurm(parse_slurm_version(res.stdout), pyslurm_release())
            except RuntimeFailure as exc:
                return ("sbatch", False, f"{detail}; {exc}")
            detail += "; pyslurm matches"
        return ("sbatch", True, detail)

    def _squeue(self, res: Completed) -> Row:
        if not res.ok:
            return ("squeue", False, _why(res))
        n = len([ln for ln in res.stdout.splitlines() if ln.strip()])
        limit = self.cluster.slurm.max_jobs_in_queue
        return ("squeue", True, f"{n} of your jobs queued (max_jobs_in_queue {limit})")

    def _sacct(self, res: Completed) -> Row:
        text = f"{res.stdout}\n{res.stderr}".lower()
        if res.ok and "disabled" not in text:
            return ("accounting", True, "sacct works")
        why = "accounting storage is disabled" if "disabled" in text else _why(res)
        if self.cluster.slurm.accounting == "sacct":
            return ("accounting", False, f"slurm.accounting is sacct but {why}")
        return ("accounting", None, f"{why}; final states come from scontrol and exit-code "
                                    "files (set slurm.accounting: none to skip sacct)")

    def _partition(self, res: Completed) -> Row:
        name = self.cluster.slurm.partition
        found = [p.rstrip("*") for p in res.stdout.split()]
        if res.ok and name in found:
            return ("partition", True, name or "")
        return ("partition", False, f"partition {name!r} not found" +
                (f" ({_why(res)})" if not res.ok else ""))

    def _engine(self, res: Completed) -> Row:
        engine = self.cluster.container.engine
        if res.ok:
            return ("container engine", True, _first_line(res.stdout) or engine)
        hint = " (does the prologue load its module?)" if res.returncode == 127 else ""
        return ("container engine", False, f"`{engine} --version` failed: {_why(res)}{hint}")

    def _dir(self, name: str) -> Callable[[Completed], Row]:
        def judge(res: Completed) -> Row:
            path = res.argv[-1]
            if res.ok:
                return (name, True, f"{path} is writable")
            return (name, False, f"{path} cannot be created or written: {_why(res)}")
        return judge

    def _prologue(self, res: Completed) -> Row:
        if res.ok:
            return ("prologue", True, "runs (exit 0)")
        return ("prologue", False, f"fails: {_why(res)}")


def check_cluster(cluster: ClusterConfig, transport: Transport | None = None) -> list[Row]:
    """Run the checks of ``cluster`` (on ``transport``, else a new one that is closed after)."""
    own = transport is None
    t = transport or open_transport(cluster)
    try:
        return ClusterCheck(cluster, t).run()
    finally:
        if own:
            t.close()


def passed(rows: Sequence[Row]) -> bool:
    """Every required check passed (warnings do not count)."""
    return all(ok is not False for _, ok, _ in rows)

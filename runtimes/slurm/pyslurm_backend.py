"""The optional pyslurm backend (``slurm.backend: pyslurm``, local transport only).

pyslurm talks to slurmctld through libslurm in this process, so it only works when its
major.minor equals Slurm's (pyslurm 22.5.x for Slurm 22.05). :func:`check_pyslurm` refuses
any other combination with a message saying what to do; ``open_runtime`` calls it first.

:class:`PyslurmRuntime` replaces two things of the CLI runtime: the submission (one
``JobSubmitDescription(...).submit()`` per job instead of ``sbatch``) and the queue query
(one ``pyslurm.Jobs.load()`` per poll instead of ``squeue``); sacct, scancel, markers and logs
stay the CLI runtime's. It uses the "new" API of pyslurm >= 22.5.2 (``pyslurm.Jobs``,
``pyslurm.JobSubmitDescription``), not the old ``pyslurm.job().get()`` one, which reported
wrong exit codes.

UNTESTED against a real pyslurm: none matching this machine's Slurm 22.05 can be installed
from the registries (PyPI has 17.11, 18.8 and 25.11.x only; 25.11 refuses to build against
22.05). The version guard is tested, and the runtime's logic is tested with a stand-in module
that has the same API shape (tests/test_pyslurm_guard.py); the attribute names come from
pyslurm's source and documentation, not from a run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from runtimes.base import JobRequest, RuntimeFailure, Submitted, write_job_files
from runtimes.config import ClusterConfig
from runtimes.jobdir import SCRIPT_FILE
from runtimes.slurm import commands as cmd
from runtimes.slurm.runtime import SlurmRuntime
from runtimes.transport import Transport

_VERSION = re.compile(r"(?<![\d.])(\d+)\.(\d+)(?:\.\d+)?")

# ``#SBATCH --option`` → JobSubmitDescription attribute (what render.py can emit).
_SUBMIT_ATTR = {
    "job-name": "name", "output": "standard_output", "error": "standard_error",
    "chdir": "working_directory", "cpus-per-task": "cpus_per_task", "mem": "memory_per_node",
    "mem-per-cpu": "memory_per_cpu", "time": "time_limit", "comment": "comment",
    "partition": "partitions", "account": "account", "qos": "qos",
    "constraint": "constraints", "nodelist": "required_nodes", "gres": "gres_per_node",
}
_SUBMIT_FLAG = {"no-requeue": ("is_requeueable", False), "requeue": ("is_requeueable", True)}


def _major_minor(text: str) -> tuple[int, int] | None:
    m = _VERSION.search(text)
    return (int(m[1]), int(m[2])) if m else None


def parse_slurm_version(text: str) -> str:
    """``slurm-wlm 22.05.8`` (``sbatch --version``) → ``22.05``."""
    mm = _major_minor(text)
    if mm is None:
        raise RuntimeFailure(f"cannot read a Slurm release from `sbatch --version`: {text!r}")
    return f"{mm[0]}.{mm[1]:02d}"


def parse_pyslurm_version(text: str) -> str:
    """``22.5.3`` → ``22.5`` (pyslurm drops Slurm's leading zero: 22.5 is for 22.05)."""
    mm = _major_minor(text)
    if mm is None:
        raise ValueError(f"not a pyslurm version: {text!r}")
    return f"{mm[0]}.{mm[1]}"


def slurm_release(transport: Transport) -> str:
    """Major.minor of the Slurm the transport reaches, e.g. ``22.05``."""
    res = transport.run(["sbatch", "--version"])
    if not res.ok:
        raise RuntimeFailure(
            f"cannot tell the Slurm release: `sbatch --version` failed: "
            f"{(res.stderr or res.stdout).strip()}"
        )
    return parse_slurm_version(res.stdout)


def pyslurm_release() -> str | None:
    """Major.minor of the installed pyslurm (``22.5``), ``None`` if it is not installed."""
    try:
        module = importlib.import_module("pyslurm")
        version = str(getattr(module, "__version__", ""))
    except ImportError:  # installed but unloadable (e.g. libslurm missing) still has a version
        version = ""
    if not version:
        try:
            version = importlib.metadata.version("pyslurm")
        except importlib.metadata.PackageNotFoundError:
            return None
    return parse_pyslurm_version(version)


def check_pyslurm(slurm: str, pyslurm: str | None) -> None:
    """Refuse (:class:`RuntimeFailure`) unless pyslurm's major.minor equals Slurm's."""
    want = _major_minor(slurm)
    if want is None:
        raise RuntimeFailure(f"not a Slurm release: {slurm!r}")
    have = _major_minor(pyslurm) if pyslurm else None
    if have == want:
        return
    found = f"pyslurm {pyslurm} is installed" if pyslurm else "pyslurm is not installed"
    raise RuntimeFailure(
        f"slurm.backend: pyslurm needs pyslurm {want[0]}.{want[1]}.x for Slurm "
        f"{want[0]}.{want[1]:02d} but {found}; use slurm.backend: cli or install a pyslurm "
        "built for this Slurm"
    )


def sbatch_options(script: str) -> list[tuple[str, str | None]]:
    """The ``#SBATCH --name[=value]`` lines at the head of a job script, in order."""
    out: list[tuple[str, str | None]] = []
    for line in script.splitlines()[1:]:
        if not line.startswith("#"):
            break
        if line.startswith("#SBATCH "):
            name, eq, value = line[len("#SBATCH "):].strip().partition("=")
            out.append((name.removeprefix("--"), value if eq else None))
    return out


def submit_description(script: str, script_path: str) -> dict[str, Any] | None:
    """JobSubmitDescription keyword arguments for a job script, ``None`` if it uses an
    option this backend does not map (that job then goes through ``sbatch``)."""
    kwargs: dict[str, Any] = {"script": script_path}
    for name, value in sbatch_options(script):
        if name in _SUBMIT_FLAG and value is None:
            attr, flag = _SUBMIT_FLAG[name]
            kwargs[attr] = flag
        elif name in _SUBMIT_ATTR and value is not None:
            kwargs[_SUBMIT_ATTR[name]] = int(value) if name == "cpus-per-task" else value
        else:
            return None
    return kwargs


def _timestamp(value: object) -> datetime | None:
    if isinstance(value, int | float) and value > 0:
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        return cmd.parse_time(value)
    return None


class PyslurmRuntime(SlurmRuntime):
    """The CLI runtime with submission and queue queries through pyslurm (see module doc)."""

    def __init__(
        self, cluster: ClusterConfig, transport: Transport, module: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(cluster, transport, clock)
        if module is None:
            os.environ.update(cluster.env)  # libslurm reads SLURM_CONF in this very process
            try:
                module = importlib.import_module("pyslurm")
            except ImportError as exc:
                raise RuntimeFailure(
                    f"slurm.backend: pyslurm: cannot import pyslurm ({exc}); use "
                    "slurm.backend: cli"
                ) from None
        if not all(hasattr(module, n) for n in ("JobSubmitDescription", "Jobs")):
            raise RuntimeFailure(
                "slurm.backend: pyslurm needs pyslurm >= 22.5.2 (pyslurm.Jobs and "
                "pyslurm.JobSubmitDescription); use slurm.backend: cli"
            )
        self.pyslurm = module
        self._uid = os.getuid()

    def submit(self, requests: Sequence[JobRequest]) -> list[Submitted]:
        """Write the job directories, then one ``JobSubmitDescription.submit()`` per job."""
        direct: list[tuple[JobRequest, dict[str, Any]]] = []
        via_cli: list[JobRequest] = []
        for req in requests:
            kwargs = submit_description(req.script, f"{req.jobdir}/{SCRIPT_FILE}")
            if kwargs is None:
                via_cli.append(req)
            else:
                direct.append((req, kwargs))
        done = {s.token: s for s in super().submit(via_cli)} if via_cli else {}
        try:
            write_job_files(self.transport, [req for req, _ in direct], SCRIPT_FILE)
        except OSError as exc:
            for req, _ in direct:
                done[req.token] = Submitted(req.token, None, f"cannot write job directory: {exc}")
            direct = []
        for req, kwargs in direct:
            with self._lock:
                self.calls["pyslurm.submit"] += 1
            try:
                job_id = self.pyslurm.JobSubmitDescription(**kwargs).submit()
            except Exception as exc:  # pyslurm.RPCError, ValueError, ...
                done[req.token] = Submitted(req.token, None, f"pyslurm: {exc}")
            else:
                done[req.token] = Submitted(req.token, str(job_id))
        return [done[r.token] for r in requests]

    def _squeue(self) -> dict[str, cmd.QueueRow]:
        """This user's jobs from one ``pyslurm.Jobs.load()`` (one controller RPC)."""
        with self._lock:
            self.calls["pyslurm.Jobs.load"] += 1
        try:
            jobs = self.pyslurm.Jobs.load()
        except Exception:  # keep the last view, like a failed squeue
            self._last_squeue = self._last_slot = self._clock()
            return self._queue
        self._last_squeue = self._last_slot = self._clock()
        rows: dict[str, cmd.QueueRow] = {}
        for job in jobs.values():
            if job.user_id != self._uid:
                continue
            state, word = cmd.slurm_state(str(job.state or ""))
            if state is None:
                continue
            reason = job.state_reason
            rows[str(job.id)] = cmd.QueueRow(
                str(job.id), str(job.name or ""), state, word,
                None if reason in (None, "", "None") else str(reason),
                _timestamp(job.start_time),
                _timestamp(job.end_time) if state.terminal else None,
            )
        self._queue = rows
        return rows

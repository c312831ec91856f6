"""How commands and files reach a cluster: the ``local`` transport runs them here.

Slurm command building and parsing (``runtimes.slurm``) only talk to a :class:`Transport`,
so the same code can drive a cluster over SSH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class Completed:
    """The outcome of one command."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class TransportError(Exception):
    """The cluster could not be reached (after the reconnect attempts); the message says why."""


class TransportRefused(TransportError):
    """The cluster answered but refused us (authentication, an unknown or changed host key):
    retrying cannot help; a person has to act. The message says what to do."""


class ConnectionLost(TransportError):
    """The connection broke while a command ran: whether it took effect is unknown."""


class CommandTimedOut(TransportError):
    """A remote command outlived its timeout and was stopped; it is not run again (whether
    it took effect is unknown)."""


class Transport(ABC):
    """Run commands and move files on the machine that talks to Slurm."""

    connects: int = 0
    """How many connections this transport has opened (0 for the local one)."""

    @abstractmethod
    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float = 60.0) -> Completed:
        """Run ``argv`` (never through a shell) and return its outcome."""

    @abstractmethod
    def run_many(self, argvs: Sequence[Sequence[str]], *, concurrency: int = 1,
                 retry: bool = True) -> list[Completed]:
        """Run several commands (a remote transport sends them in one round trip).

        With ``retry=False`` a broken connection raises :class:`ConnectionLost` instead of
        running the commands again (for commands that must not run twice, like sbatch).
        """

    @abstractmethod
    def stream(self, argv: Sequence[str], *, stdin: BinaryIO | None = None,
               stdout: BinaryIO | None = None, timeout: float = 3600.0) -> Completed:
        """Run ``argv`` feeding ``stdin`` and copying its output to ``stdout`` (bulk data)."""

    @abstractmethod
    def write_files(self, files: Mapping[str, bytes], *, mode: int = 0o644) -> None:
        """Create each file (and its parent directories) with exactly these bytes."""

    @abstractmethod
    def read_files(self, paths: Iterable[str]) -> dict[str, bytes | None]:
        """The contents of each path, ``None`` for a missing file."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection, if any."""


class LocalTransport(Transport):
    """Commands as subprocesses, files through the local filesystem."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = {**os.environ, **(env or {})}
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float = 60.0) -> Completed:
        try:
            proc = subprocess.run(
                list(argv), input=stdin, capture_output=True, timeout=timeout,
                env=self._env, check=False,
            )
        except FileNotFoundError:
            return Completed(tuple(argv), 127, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired:
            return Completed(tuple(argv), 124, "", f"{argv[0]}: timed out after {timeout:g} s")
        return Completed(
            tuple(argv), proc.returncode,
            proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"),
        )

    def run_many(self, argvs: Sequence[Sequence[str]], *, concurrency: int = 1,
                 retry: bool = True) -> list[Completed]:
        if concurrency <= 1 or len(argvs) <= 1:
            return [self.run(a) for a in argvs]
        if self._pool is None or self._pool_size != concurrency:
            self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="akb-local")
            self._pool_size = concurrency
        return list(self._pool.map(self.run, argvs))

    def stream(self, argv: Sequence[str], *, stdin: BinaryIO | None = None,
               stdout: BinaryIO | None = None, timeout: float = 3600.0) -> Completed:
        with subprocess.Popen(
            list(argv), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=self._env,
        ) as proc:
            if stdin is not None:
                assert proc.stdin is not None
                shutil.copyfileobj(stdin, proc.stdin)
                proc.stdin.close()
            if stdout is not None:
                assert proc.stdout is not None
                shutil.copyfileobj(proc.stdout, stdout)
            assert proc.stderr is not None
            err = proc.stderr.read().decode("utf-8", "replace")
            rc = proc.wait(timeout)
        return Completed(tuple(argv), rc, "", err)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def write_files(self, files: Mapping[str, bytes], *, mode: int = 0o644) -> None:
        made: set[Path] = set()
        for name, data in files.items():
            path = Path(name)
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)

    def read_files(self, paths: Iterable[str]) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        for name in paths:
            try:
                out[name] = Path(name).read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                out[name] = None
        return out

"""How commands and files reach a cluster: the ``local`` transport runs them here.

Slurm command building and parsing (``runtimes.slurm``) only talk to a :class:`Transport`,
so the same code can drive a cluster over SSH.
"""

from __future__ import annotations

import os
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


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


class Transport(ABC):
    """Run commands and move small files on the machine that talks to Slurm."""

    @abstractmethod
    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float = 60.0) -> Completed:
        """Run ``argv`` (never through a shell) and return its outcome."""

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

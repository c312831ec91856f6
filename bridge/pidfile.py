"""``serve --pidfile``: a file naming the running daemon's pid, for cron and ``kill -TERM``.

The file holds the pid and a newline, and is always complete: it is written to a temporary
file and linked or renamed into place. The process keeps that file open with an exclusive
``flock`` for its whole life, so a live holder is recognised whatever its command line, and
two processes starting at the same instant cannot both take it. A file whose pid is dead, or
belongs to a process that is not an akobridge (pid reuse after a reboot), or to another user,
is stale and replaced. The file is removed when the holder exits the context.

This is a convenience for running without systemd; the state directory's own lock
(``bridge.owner``) remains what keeps two drivers off one state dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

_RETRY_S = 5.0  # how long to wait for another process that is replacing a stale file


class PidFileBusy(RuntimeError):
    """The pid file names a running akobridge."""

    def __init__(self, path: Path, pid: int | None, command: str | None = None,
                 running: bool = True) -> None:
        self.path, self.pid, self.command = path, pid, command
        what = f" ({command})" if command else ""
        if running:
            text = (f"pid file {path} names pid {pid}, a running akobridge{what}: stop it "
                    f"first (kill -TERM {pid}) or give another --pidfile")
        else:
            text = (f"pid file {path} (pid {pid}) is locked by a process that is still "
                    "running (a child of that pid?): stop it or give another --pidfile")
        super().__init__(text)


def read_pid(path: str | os.PathLike[str]) -> int | None:
    """The pid a pid file names, or ``None`` (absent, empty, not a number)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    return _parse(text)


def _parse(text: str) -> int | None:
    try:
        pid = int(text.strip())
    except ValueError:
        return None
    return pid if pid > 0 else None


def _is_own_live_process(pid: int) -> bool:
    """Alive and run by this user (another user's process cannot be this file's daemon)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # gone meanwhile, or no /proc to ask
    except OSError:
        return True


def process_command(pid: int) -> str | None:
    """The command line of ``pid`` from /proc (``None`` if unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)[:200]


def is_akobridge(pid: int) -> bool:
    """Whether ``pid`` runs akobridge (its script, or ``python -m bridge``)."""
    if not Path("/proc/self/cmdline").exists():
        return True  # no /proc to ask: assume it is, rather than start a second daemon
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if any(os.path.basename(a).startswith("akobridge") for a in argv[:3]):
        return True
    return any(a == "-m" and b == "bridge" for a, b in zip(argv, argv[1:], strict=False))


def _try_lock(fd: int) -> bool | None:
    """Exclusive non-blocking flock: ``True`` taken, ``False`` held elsewhere, ``None`` n/a."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # e.g. ENOLCK on a filesystem without locks: rely on the pid check
        return None
    return True


def _read_fd(fd: int) -> int | None:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return _parse(os.pread(fd, 64, 0).decode())
    return None


class PidFile:
    """Hold a pid file for this process (a context manager; the file is removed on exit)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self._fd: int | None = None
        self._pid: int | None = None

    def acquire(self) -> PidFile:
        """Write this process's pid, or raise :class:`PidFileBusy` naming the running one."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        deadline = time.monotonic() + _RETRY_S
        while True:
            if self._attempt(deadline):
                return self
            time.sleep(0.05)

    def _attempt(self, deadline: float) -> bool:
        """One try; ``False`` when the file changed under us (try again)."""
        try:
            old = _open_existing(self.path)
        except FileNotFoundError:
            return self._create()
        try:
            locked = _try_lock(old)
            pid = _read_fd(old)
            if locked is False:  # a live PidFile holder
                if pid is not None and _is_own_live_process(pid):
                    raise PidFileBusy(self.path, pid, process_command(pid))
                if time.monotonic() > deadline:
                    raise PidFileBusy(self.path, pid, running=False)
                return False  # another process is replacing a stale file right now
            if not _same_file(old, self.path):
                return False
            if (pid is not None and pid != os.getpid() and _is_own_live_process(pid)
                    and is_akobridge(pid)):
                raise PidFileBusy(self.path, pid, process_command(pid))
            fd, tmp = self._write_tmp()
            try:
                os.replace(tmp, self.path)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            self._hold(fd)
            return True
        finally:
            os.close(old)

    def _create(self) -> bool:
        fd, tmp = self._write_tmp()
        try:
            os.link(tmp, self.path)  # atomic: fails if another process created it first
        except FileExistsError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._hold(fd)
        return True

    def _write_tmp(self) -> tuple[int, Path]:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fsync(fd)
            _try_lock(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return fd, tmp

    def _hold(self, fd: int) -> None:
        self._fd, self._pid = fd, os.getpid()

    def release(self) -> None:
        """Remove the file (if it is still ours) and drop the lock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._pid == os.getpid() and _same_file(fd, self.path):
                with contextlib.suppress(OSError):
                    self.path.unlink()
        finally:
            os.close(fd)

    def __enter__(self) -> PidFile:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _open_existing(path: Path) -> int:
    """Open for the lock (write mode: NFS needs it for an exclusive lock), else read-only."""
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

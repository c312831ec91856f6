"""Spool-directory intake: AkoFlow YAML files dropped into ``<spool>/incoming`` are submitted
and moved to ``accepted/<id>-<name>``, or to ``rejected/<name>`` beside ``<name>.error``.

Producers write a dotfile (``.name.yaml.tmp``) and rename it to ``name.yaml``; a file whose
mtime is younger than the settle time is left for a later scan as well (docs/spool.md).

Crash safety: a file is submitted under the intake key
``spool:<name>:<sha256 of content>:<inode>.<ctime>`` and moved only after the commit. A bridge
killed between the two submits the unchanged file again on its next scan, and the store
returns the workflow it already holds under that key (one workflow, never two). A rejection
writes ``<name>.error`` first and moves the YAML second, so a crash between the two leaves
the file in ``incoming/`` to be judged again, into the same place. The same file dropped
again later (a new inode and ctime) is a new submission.

Only the rejection types (``ValueError`` by default: :class:`bridge.spec.SpecError`,
:class:`bridge.runner.SubmissionError`) reject a file; any other error (a locked database, a
full disk) leaves it in ``incoming/`` for the next scan.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import structlog

from bridge.metrics import WORKFLOWS_ACCEPTED
from bridge.spec import parse_akoflow

if TYPE_CHECKING:
    from bridge.runner import Bridge
    from bridge.spec.model import Workflow

log = structlog.get_logger("akobridge.spool")

SubmitFn = Callable[[str, str, str], int]
"""``submit(yaml_text, file_name, intake_key) -> workflow id``; raises to refuse."""

MAX_BYTES = 1 << 20
SETTLE_S = 1.0
INTERVAL_S = 1.0
MAX_FILES = 256
"""Files taken per scan at the most (the rest wait for the next one, at once)."""
SUBDIRS = ("incoming", "accepted", "rejected")
SUFFIXES = (".yaml", ".yml")
NAME_MAX = 255
REASON_MAX = 32_000
"""Characters of a reason kept in a ``.error`` file."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_SYMLINK = "is a symbolic link: the spool takes regular files only and never follows links"


class SpoolError(Exception):
    """The spool directory cannot be used (unsafe permissions, another reader, not a dir)."""


@dataclass(frozen=True)
class Outcome:
    """What a scan did with one file of ``incoming/``."""

    name: str
    status: Literal["accepted", "rejected", "deferred"]
    workflow_id: int | None = None
    reason: str | None = None
    """Why it was rejected or deferred."""
    path: Path | None = None
    """Where the file is now (None: it vanished or was replaced before it could be moved)."""


class _Reject(Exception):
    """The file is refused; the message is the reason."""

    def __init__(self, reason: str, key: str) -> None:
        super().__init__(reason)
        self.key = key


class _Defer(Exception):
    """``submit`` failed with an error that is no rejection (kept in ``__cause__``)."""


class _Changed(Exception):
    """The name now refers to another file: judged again on the next scan."""


class SpoolIntake:
    """Takes the files of one spool directory (an exclusive lock on ``incoming/``); use it
    from one thread at a time (``submit`` runs on the thread that scans)."""

    def __init__(
        self, spool_dir: Path, submit: SubmitFn, *,
        rejections: tuple[type[BaseException], ...] = (ValueError,),
        max_bytes: int = MAX_BYTES, settle_s: float = SETTLE_S, max_files: int = MAX_FILES,
    ) -> None:
        """Create the missing directories (mode 0700), check them and take the lock; raise
        :class:`SpoolError` when the spool cannot be used safely."""
        self.root = Path(spool_dir)
        self.submit = submit
        self.rejections = rejections
        self.max_bytes = max_bytes
        self.settle_s = settle_s
        self.max_files = max_files
        self._fds: dict[str, int] = {}
        self._seen: dict[str, tuple[tuple[int, int, int], float]] = {}
        self._deferred: dict[str, str] = {}
        self._scan_error: str | None = None
        self._backlog = False
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fds["root"] = os.open(self.root, _DIR_FLAGS)
            self._check_dir("root", self.root)
            for sub in SUBDIRS:
                self._open_subdir(sub)
            devices = {os.fstat(self._fds[sub]).st_dev for sub in SUBDIRS}
            if len(devices) > 1:
                raise SpoolError(f"{self.root}: incoming/, accepted/ and rejected/ must be on "
                                 "one filesystem (files are moved by rename)")
            self._lock()
        except OSError as exc:
            self.close()
            raise SpoolError(f"{self.root}: cannot use the spool: {exc.strerror or exc}") from exc
        except BaseException:
            self.close()
            raise

    # -- set-up -------------------------------------------------------------------------------
    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def accepted(self) -> Path:
        return self.root / "accepted"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    def _open_subdir(self, sub: str) -> None:
        path = self.root / sub
        with contextlib.suppress(FileExistsError):
            os.mkdir(sub, 0o700, dir_fd=self._fds["root"])
        try:
            self._fds[sub] = os.open(sub, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=self._fds["root"])
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise SpoolError(f"{path}: must be a directory (not a symbolic link or a "
                                 "file)") from None
            raise
        self._check_dir(sub, path)

    def _lock(self) -> None:
        """One reader per spool: an exclusive ``flock`` on ``incoming/`` (released when the
        process dies). A filesystem without ``flock`` on directories (some NFS) is warned
        about, not refused."""
        try:
            fcntl.flock(self._fds["incoming"], fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpoolError(f"{self.incoming}: another akobridge process takes files from "
                             "this spool (its lock is held)") from None
        except OSError as exc:
            log.warning("cannot lock the spool: make sure only one bridge reads it",
                        path=str(self.incoming), error=exc.strerror or str(exc))

    def _check_dir(self, which: str, path: Path) -> None:
        st = os.fstat(self._fds[which])
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            raise SpoolError(
                f"{path}: writable by every user without the sticky bit, so anyone could "
                f"remove or replace the files in it; run `chmod o-w {path}` (or "
                f"`chmod 1733 {path}` for a drop box every user may write to)")
        if st.st_uid not in (os.geteuid(), 0):
            log.warning("spool directory owned by another user", path=str(path),
                        owner=st.st_uid, bridge_user=os.geteuid())

    def close(self) -> None:
        """Release the lock and the directories."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> SpoolIntake:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- scanning -----------------------------------------------------------------------------
    def run(self, stop: threading.Event, interval_s: float = INTERVAL_S) -> None:
        """Scan every ``interval_s`` until ``stop`` is set; a failed scan is logged (once per
        distinct error) and the next one tried."""
        while not stop.is_set():
            try:
                self.scan_once()
                self._scan_error = None
            except Exception as exc:
                if self._scan_error != str(exc):
                    log.exception("spool scan failed", spool=str(self.root))
                self._scan_error = str(exc)
                self._backlog = False
            if not self._backlog:
                stop.wait(interval_s)

    def scan_once(self) -> list[Outcome]:
        """Take the settled ``*.yaml``/``*.yml`` files of ``incoming/`` (at most
        ``max_files``, by name, those that failed last time at the end); dotfiles, other
        names and subdirectories are left alone."""
        with os.scandir(self._fds["incoming"]) as listing:
            entries = [e for e in listing
                       if _wanted(e.name) and not e.is_dir(follow_symlinks=False)]
        names = {e.name for e in entries}
        for kept in (self._seen, self._deferred):
            for name in [n for n in kept if n not in names]:
                del kept[name]
        entries.sort(key=lambda e: (e.name in self._deferred, e.name))  # failing ones last
        outcomes = []
        for entry in entries[: self.max_files]:
            outcome = self._take(entry.name)
            if outcome is not None:
                outcomes.append(outcome)
        self._backlog = len(entries) > self.max_files and any(
            o.status != "deferred" for o in outcomes)
        return outcomes

    def _take(self, name: str) -> Outcome | None:
        try:
            st = os.stat(name, dir_fd=self._fds["incoming"], follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and not self._settled(name, st):
                return None
            try:
                wf_id = self._judge(name, st)
            except _Reject as rejection:
                return self._reject(name, st, rejection.key, str(rejection))
            return self._accept(name, st, wf_id)
        except (FileNotFoundError, _Changed):
            self._seen.pop(name, None)
            return None
        except _Defer as exc:
            return self._defer(name, exc.__cause__ or exc)
        except Exception as exc:
            return self._defer(name, exc)

    def _settled(self, name: str, st: os.stat_result) -> bool:
        """Older than the settle time, or unchanged for that long (a clock-skewed mtime)."""
        if self.settle_s <= 0 or time.time() - st.st_mtime >= self.settle_s:
            return True
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        now = time.monotonic()
        seen = self._seen.get(name)
        if seen is None or seen[0] != signature:
            self._seen[name] = (signature, now)
            return False
        return now - seen[1] >= self.settle_s

    def _judge(self, name: str, st: os.stat_result) -> int:
        """Read and submit: the workflow id, or :class:`_Reject`."""
        ident = f"{st.st_ino}.{st.st_ctime_ns}"
        key = f"spool:{_shown(name)}:-:{ident}"
        if not name.isprintable():
            raise _Reject("the file name has control characters or is not UTF-8; rename it", key)
        if stat.S_ISLNK(st.st_mode):
            raise _Reject(_SYMLINK, key)
        if not stat.S_ISREG(st.st_mode):
            raise _Reject("is not a regular file", key)
        data = self._read(name, st, key)
        key = f"spool:{name}:{hashlib.sha256(data).hexdigest()}:{ident}"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Reject(f"is not UTF-8 text (byte {exc.start}: {exc.reason})", key) from None
        try:
            wf_id = int(self.submit(text, name, key))
        except self.rejections as exc:
            raise _Reject(str(exc).strip() or type(exc).__name__, key) from exc
        except Exception as exc:
            raise _Defer() from exc
        return wf_id

    def _read(self, name: str, st: os.stat_result, key: str) -> bytes:
        """The content, opened without following links and checked to be the file listed."""
        self._check_size(st.st_size, key)
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=self._fds["incoming"])
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Reject(_SYMLINK, key) from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise _Reject(f"cannot be read by the bridge's user ({exc.strerror}); make "
                              "it readable before renaming it into incoming/", key) from None
            raise
        try:
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                raise _Changed()
            if fst.st_nlink > 1:
                raise _Reject(f"has {fst.st_nlink} hard links: write the file, then rename it "
                              "into incoming/ (a link could expose another file)", key)
            self._check_size(fst.st_size, key)
            chunks, size = [], 0
            while size <= self.max_bytes:
                chunk = os.read(fd, self.max_bytes + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            self._check_size(size, key)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _check_size(self, size: int, key: str) -> None:
        if size > self.max_bytes:
            raise _Reject(f"is {size} bytes, over the spool's limit of {self.max_bytes} bytes",
                          key)

    # -- moving -------------------------------------------------------------------------------
    def _still(self, name: str, st: os.stat_result) -> bool:
        """Does ``name`` still refer to the file that was judged?"""
        try:
            now = os.stat(name, dir_fd=self._fds["incoming"], follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)

    def _accept(self, name: str, st: os.stat_result, wf_id: int) -> Outcome:
        self._deferred.pop(name, None)
        if not self._still(name, st):
            log.warning("spool file accepted but gone or replaced before its move", file=name,
                        workflow=wf_id)
            return Outcome(name, "accepted", wf_id)
        target = self._free("accepted", f"{wf_id}-{name}", room=0)
        self._move(name, "accepted", target)
        log.info("spool file accepted", file=name, workflow=wf_id, moved_to=f"accepted/{target}")
        return Outcome(name, "accepted", wf_id, path=self.accepted / target)

    def _reject(self, name: str, st: os.stat_result, key: str, reason: str) -> Outcome:
        if not self._still(name, st):
            raise _Changed()
        base = self._rejected_base(name, key)
        if len(reason) > REASON_MAX:
            reason = f"{reason[:REASON_MAX]}\n… ({len(reason) - REASON_MAX} more characters)"
        when = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        text = f"{reason.rstrip()}\n\nfile: {_shown(name)}\nrejected at: {when}\nkey: {key}\n"
        self._write_error(base, text)
        self._move(name, "rejected", base)
        self._deferred.pop(name, None)
        log.warning("spool file rejected", file=name, reason=reason,
                    moved_to=f"rejected/{base}")
        return Outcome(name, "rejected", reason=reason, path=self.rejected / base)

    def _defer(self, name: str, exc: BaseException) -> Outcome:
        reason = f"{type(exc).__name__}: {exc}"
        if self._deferred.get(name) != reason:
            log.warning("spool file kept in incoming/ for the next scan", file=name,
                        error=reason, exc_info=exc)
            self._deferred[name] = reason
        return Outcome(name, "deferred", reason=reason, path=self.incoming / name)

    def _rejected_base(self, name: str, key: str) -> str:
        """The first free name in ``rejected/``, or the one whose ``.error`` an earlier try
        of this very file wrote before it was stopped."""
        for n in count(1):
            base = _variant(name, n, room=len(".error.tmp") + 1)
            if self._exists("rejected", base):
                continue
            try:
                fd = os.open(f"{base}.error", _READ_FLAGS, dir_fd=self._fds["rejected"])
            except FileNotFoundError:
                return base
            except OSError:
                continue
            try:
                earlier = os.read(fd, 2 * REASON_MAX + 4096).decode("utf-8", "replace")
            finally:
                os.close(fd)
            if f"\nkey: {key}\n" in earlier:
                return base
        raise AssertionError("unreachable")

    def _free(self, sub: str, name: str, room: int) -> str:
        for n in count(1):
            candidate = _variant(name, n, room)
            if not self._exists(sub, candidate):
                return candidate
        raise AssertionError("unreachable")

    def _exists(self, sub: str, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self._fds[sub], follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _write_error(self, base: str, text: str) -> None:
        """``<base>.error`` by write, fsync and rename (durable before the YAML moves)."""
        tmp = f".{base}.error.tmp"
        rejected = self._fds["rejected"]
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644, dir_fd=rejected)
        try:
            data = text.encode("utf-8", "backslashreplace")
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, f"{base}.error", src_dir_fd=rejected, dst_dir_fd=rejected)
        os.fsync(rejected)

    def _move(self, name: str, sub: str, target: str) -> None:
        os.replace(name, target, src_dir_fd=self._fds["incoming"], dst_dir_fd=self._fds[sub])
        os.fsync(self._fds[sub])
        os.fsync(self._fds["incoming"])


def bridge_submitter(bridge: Bridge,
                     check: Callable[[Workflow], None] | None = None) -> SubmitFn:
    """A ``submit`` for :class:`SpoolIntake`: the workflow already stored under the key, or
    parse (:class:`~bridge.spec.SpecError`), ``check`` (e.g. the URL policy; raise
    ``ValueError`` to reject) and :meth:`Bridge.submit` with the key. Call it on the thread
    that owns ``bridge.store``."""

    def submit(text: str, name: str, key: str) -> int:
        existing = bridge.store.workflow_by_intake_key(key)
        if existing is not None:  # stored before a crash; the cluster config may differ now
            return existing
        parsed = parse_akoflow(text, source=f"incoming/{name}")
        for warning in parsed.warnings:
            log.info("spool file warning", file=name, warning=str(warning))
        if check is not None:
            check(parsed.workflow)
        wf_id = bridge.submit(parsed.workflow, intake_key=key)
        WORKFLOWS_ACCEPTED.labels("spool").inc()
        return wf_id

    return submit


def _wanted(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(SUFFIXES)


def _variant(name: str, n: int, room: int) -> str:
    """``name`` (n = 1) or ``stem~n.ext``, its stem cut so that it fits NAME_MAX - room bytes."""
    stem, ext = os.path.splitext(name)
    tail = (f"~{n}" if n > 1 else "") + ext
    limit = NAME_MAX - room - len(os.fsencode(tail))
    raw = os.fsencode(stem)
    if len(raw) > limit:
        stem = os.fsdecode(raw[:limit])
    return stem + tail


def _shown(name: str) -> str:
    """A file name fit for one line of text (escaped when it is not printable UTF-8)."""
    return name if name.isprintable() else repr(os.fsencode(name))[2:-1]


__all__ = ["MAX_BYTES", "SETTLE_S", "Outcome", "SpoolError", "SpoolIntake", "SubmitFn",
           "bridge_submitter"]

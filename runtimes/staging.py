"""Data staging for AkoFlow ``volumes: ["A:B"]``: A on the bridge host <-> B on the cluster.

One remote command lists the cluster tree (GNU ``find -printf``), ``os.walk`` lists the local
one; a file is sent when it is new or its size, integer mtime or permission bits differ. The
changed files then travel as ONE tar stream through :meth:`Transport.stream` (a separate
channel on the SSH connection), permissions and mtimes kept; file ownership is not (the
receiving user owns them).

Only regular files are staged: symbolic links, devices, FIFOs and empty directories are
skipped (logged). Downloads refuse tar members with an absolute path or a ``..`` segment,
and never write through a symlink out of the local tree. Names must be UTF-8.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from math import floor
from typing import BinaryIO, NamedTuple, TypeVar

import structlog

from runtimes.transport import LocalTransport, Transport

log = structlog.get_logger("akobridge.staging")

P = TypeVar("P")
C = TypeVar("C")

_LIST = (
    'if [ -d "$1" ]; then find -H "$1" -type f -printf \'%s\\t%T@\\t%m\\t%P\\0\'; fi'
)
"""List the regular files under ``$1``: size, mtime, octal mode, relative path; NUL-ended."""
_UNTAR = 'mkdir -p -- "$1" && tar -C "$1" --no-same-owner -xpf -'
_TAR = (
    'l=$(mktemp) || exit 2; trap \'rm -f "$l"\' EXIT; cat > "$l" || exit 2; '
    'tar -C "$1" --hard-dereference --null -T "$l" -cf -'
)
"""Tar the NUL-separated names read from stdin (all read first: no pipe deadlock)."""


class FileInfo(NamedTuple):
    """One regular file: size in bytes, mtime in whole seconds, permission bits."""

    size: int
    mtime: int
    mode: int


@dataclass(frozen=True)
class StageReport:
    files_total: int
    """Files in the source tree."""
    files_sent: int
    """Files that were copied (new or changed)."""
    bytes_sent: int


class StagingError(OSError):
    """A transfer failed or a tar stream was refused; the message says why."""


# -- listing -------------------------------------------------------------------------------
def list_argv(root: str) -> list[str]:
    """The one remote command that lists ``root`` (no output if it does not exist)."""
    return ["bash", "-c", _LIST, "_", root]


def parse_listing(text: str) -> dict[str, FileInfo]:
    """What :func:`list_argv` printed, as relative path -> :class:`FileInfo`."""
    files: dict[str, FileInfo] = {}
    for record in text.split("\0"):
        parts = record.split("\t", 3)
        if len(parts) != 4 or not parts[3]:
            continue
        size, mtime, mode, rel = parts
        try:
            files[rel] = FileInfo(int(size), floor(Decimal(mtime)), int(mode, 8))
        except (ValueError, InvalidOperation):
            log.warning("unreadable listing line", line=record[:200])
    return files


def list_remote(transport: Transport, root: str) -> dict[str, FileInfo]:
    """The regular files under ``root`` on the cluster (empty when it does not exist)."""
    res = transport.run(list_argv(root), timeout=600.0)
    if not res.ok:
        raise StagingError(f"cannot list {root}: {res.stderr.strip() or res.returncode}")
    return parse_listing(res.stdout)


def list_local(root: str) -> dict[str, FileInfo]:
    """The regular files under ``root`` here; symlinks and special files are skipped."""
    files: dict[str, FileInfo] = {}
    skipped = 0
    for dirpath, dirnames, filenames in os.walk(root):
        skipped += sum(os.path.islink(os.path.join(dirpath, d)) for d in dirnames)
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                skipped += 1
                continue
            rel = os.path.relpath(path, root)
            files[rel] = FileInfo(st.st_size, st.st_mtime_ns // 1_000_000_000,
                                  stat.S_IMODE(st.st_mode))
    if skipped:
        log.info("staging skips symlinks and special files", root=root, skipped=skipped)
    return files


def changed(source: dict[str, FileInfo], target: dict[str, FileInfo]) -> list[str]:
    """Files of ``source`` that are missing from ``target`` or differ there, sorted."""
    return sorted(rel for rel, info in source.items() if target.get(rel) != info)


# -- the two directions --------------------------------------------------------------------
def _same_local(transport: Transport, a: str, b: str) -> bool:
    return isinstance(transport, LocalTransport) and os.path.normpath(a) == os.path.normpath(b)


def stage_in(transport: Transport, source: str, target: str) -> StageReport:
    """Copy the tree at `source` on the bridge host to `target` on the cluster: only files that
    are new or changed (size, mtime or permissions differ), permissions and mtimes kept."""
    if _same_local(transport, source, target):
        return StageReport(len(list_local(os.path.normpath(source))), 0, 0)
    if not os.path.isdir(source):
        raise FileNotFoundError(
            f"volume source {source} does not exist on the bridge host (or is not a directory)"
        )
    local = list_local(source)
    todo = changed(local, list_remote(transport, target))
    if not todo:
        return StageReport(len(local), 0, 0)
    argv = ["bash", "-c", _UNTAR, "_", target]
    try:
        _, res = _piped(lambda w: _write_tar(source, todo, w),
                        lambda r: transport.stream(argv, stdin=r))
    except OSError as exc:  # the remote end quit early ("Broken pipe"): ask it why
        why = transport.run(["mkdir", "-p", "--", target])
        detail = why.stderr.strip() if not why.ok else str(exc)
        raise StagingError(f"upload to {target} failed: {detail}") from exc
    if not res.ok:
        raise StagingError(f"upload to {target} failed: {res.stderr.strip() or res.returncode}")
    sent = sum(local[rel].size for rel in todo)
    log.info("staged in", source=source, target=target, files=len(todo), bytes=sent)
    return StageReport(len(local), len(todo), sent)


def stage_out(transport: Transport, target: str, source: str) -> StageReport:
    """Bring the cluster tree `target` back to `source` on the bridge host, same rules
    (new/changed files only)."""
    if _same_local(transport, source, target):
        return StageReport(len(list_local(os.path.normpath(source))), 0, 0)
    remote = list_remote(transport, target)
    todo = changed(remote, list_local(source) if os.path.isdir(source) else {})
    files, sent = download(transport, target, todo, source)
    log.info("staged out", target=target, source=source, files=files, bytes=sent)
    return StageReport(len(remote), files, sent)


def download(transport: Transport, remote_root: str, names: Sequence[str],
             local_root: str) -> tuple[int, int]:
    """Fetch ``names`` (relative to ``remote_root``) into ``local_root`` with one tar stream:
    (files written, bytes written)."""
    if not names:
        return 0, 0
    os.makedirs(local_root, exist_ok=True)
    listing = b"".join(b"./" + os.fsencode(n) + b"\0" for n in names)
    argv = ["bash", "-c", _TAR, "_", remote_root]
    res, got = _piped(
        lambda w: transport.stream(argv, stdin=io.BytesIO(listing), stdout=w),
        lambda r: extract_tar(r, local_root),
    )
    if res.returncode == 1:  # GNU tar: "file changed as we read it" and the like
        log.warning("tar warnings while downloading", root=remote_root, stderr=res.stderr)
    elif not res.ok:
        raise StagingError(
            f"download from {remote_root} failed: {res.stderr.strip() or res.returncode}"
        )
    return got


# -- tar streams ---------------------------------------------------------------------------
SAFE_MODE = 0o777
"""Permission bits a staged file keeps: never setuid, setgid or sticky (a file from the
cluster must not become a setuid program on the bridge host, nor the other way round)."""


def _write_tar(root: str, names: Iterable[str], out: BinaryIO) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel in names:
            with open(os.path.join(root, rel), "rb") as f:
                st = os.fstat(f.fileno())
                info = tarfile.TarInfo(rel)
                info.size = st.st_size
                info.mtime = st.st_mtime_ns // 1_000_000_000
                info.mode = stat.S_IMODE(st.st_mode) & SAFE_MODE
                tar.addfile(info, f)


def _safe_name(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts:
        raise StagingError(f"refusing tar member {name!r}: absolute path or '..' segment")
    return "/".join(parts)


def _no_symlink_between(root: str, rel: str, name: str) -> None:
    """Refuse to write through a symlinked directory inside ``root`` (it could lead out)."""
    path = root
    for part in rel.split("/")[:-1]:
        path = os.path.join(path, part)
        if os.path.islink(path):
            raise StagingError(f"refusing tar member {name!r}: {path} is a symlink")


def extract_tar(stream: BinaryIO, root: str) -> tuple[int, int]:
    """Write the regular files of a tar stream under ``root`` (modes and mtimes kept):
    (files, bytes). Unsafe member names raise :class:`StagingError`; other kinds are skipped."""
    files = size = 0
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            rel = _safe_name(member.name)
            if not member.isreg():
                if not member.isdir():
                    log.info("download skips a non-regular file", name=member.name)
                continue
            dest = os.path.join(root, rel)
            parent = os.path.dirname(dest)
            _no_symlink_between(root, rel, member.name)
            os.makedirs(parent, exist_ok=True)
            data = tar.extractfile(member)
            assert data is not None
            fd, tmp = tempfile.mkstemp(prefix=".akb-stage-", dir=parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    while chunk := data.read(1 << 20):
                        f.write(chunk)
                os.chmod(tmp, member.mode & SAFE_MODE)
                os.utime(tmp, (member.mtime, member.mtime))
                os.replace(tmp, dest)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            files += 1
            size += member.size
    return files, size


def _piped(produce: Callable[[BinaryIO], P], consume: Callable[[BinaryIO], C]) -> tuple[P, C]:
    """Run ``produce`` (writing) in a thread and ``consume`` (reading) here, joined by a pipe.

    If the consumer stops early, the rest is drained so the producer (e.g. a remote tar on
    its channel) always runs to its end; a refusal (:class:`StagingError`) wins over the
    producer's error, which wins over the consumer's other errors.
    """
    r, w = os.pipe()
    reader, writer = os.fdopen(r, "rb"), os.fdopen(w, "wb")
    produced: list[P] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            produced.append(produce(writer))
        except BaseException as exc:  # handed to the caller below
            failed.append(exc)
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    thread = threading.Thread(target=run, name="akb-staging", daemon=True)
    thread.start()
    error: Exception | None = None
    try:
        result = consume(reader)
    except Exception as exc:
        error = exc
    except BaseException:
        reader.close()
        raise
    with contextlib.suppress(OSError):
        while reader.read(1 << 20):
            pass
    thread.join()
    reader.close()
    if isinstance(error, StagingError):
        raise error
    if failed:
        raise failed[0]
    if error is not None:
        raise error
    return produced[0], result


__all__ = [
    "FileInfo", "StageReport", "StagingError", "download", "extract_tar",
    "list_local", "list_remote", "stage_in", "stage_out",
]

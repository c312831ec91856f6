"""The ``ssh`` transport: one paramiko connection per cluster for the bridge's whole life.

Every command, file read and file write goes through ONE long-lived remote shell on that
connection, so the login shell's start-up (``.bashrc``, module systems: 140 ms and more) is
paid once, not per command; a batch of commands is one round trip. Bulk data (staging) uses
extra channels on the same connection. The socket has TCP_NODELAY (paramiko otherwise adds
~40 ms per exchange), keepalives are on, and a broken connection is re-opened with
exponential backoff and jitter. Host keys are always verified: against a known_hosts file or
a pinned SHA256 fingerprint; an unknown or changed key refuses the connection.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import random
import secrets
import shlex
import shutil
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import paramiko
import structlog

from runtimes.config import ClusterConfig, SSHSettings
from runtimes.transport import Completed, ConnectionLost, Transport, TransportError

log = structlog.get_logger("akobridge.ssh")

_PRELUDE = r"""
akb_t=$(mktemp -d) || exit 1
trap 'rm -rf "$akb_t"' EXIT
akb_req() {
  printf '%s' "$2" | base64 -d > "$akb_t/s"
  bash "$akb_t/s" < /dev/null > "$akb_t/o" 2> "$akb_t/e"
  printf 'AKB-RES %s %s %s %s\n' "$1" "$?" "$(base64 -w0 < "$akb_t/o")" \
    "$(base64 -w0 < "$akb_t/e")"
}
exec 2> /dev/null
printf 'AKB-READY\n'
"""
_ONE = r"""akb_one() {
  "$@" > "$akb_o" 2> "$akb_e" < /dev/null
  printf 'AKB-ONE %s %s %s\n' "$?" "$(base64 -w0 < "$akb_o")" "$(base64 -w0 < "$akb_e")"
}
akb_o=$(mktemp) akb_e=$(mktemp)
trap 'rm -f "$akb_o" "$akb_e"' EXIT
"""


class HostKeyError(TransportError):
    """The server's host key is unknown or has changed: the connection was refused."""


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:…`` as ``ssh-keygen -lf`` prints it."""
    import hashlib

    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _host_id(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class _Verify(paramiko.MissingHostKeyPolicy):
    """Refuse keys that are not in known_hosts (or do not match the pinned fingerprint)."""

    def __init__(self, settings: SSHSettings, known_hosts: Path, host: str, port: int) -> None:
        self.pinned = settings.host_key_fingerprint
        self.known_hosts, self.host, self.port = known_hosts, host, port

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        offered = fingerprint(key)
        if self.pinned is not None:
            if offered.rstrip("=") == self.pinned.rstrip("="):
                return
            raise HostKeyError(
                f"host key of {_host_id(self.host, self.port)} is {offered}, not the pinned "
                f"ssh.host_key_fingerprint {self.pinned}: refusing to connect. If the server's "
                "key really changed, check it with its administrators and update the pin."
            )
        raise HostKeyError(_unknown_key(self.host, self.port, key, self.known_hosts))


def _unknown_key(host: str, port: int, key: paramiko.PKey, known_hosts: Path) -> str:
    offered = fingerprint(key)
    return (
        f"host key of {_host_id(host, port)} ({key.get_name()} {offered}) is not "
        f"in {known_hosts}: refusing to connect. Check the fingerprint with the "
        f"cluster's administrators, then trust it with `ssh-keyscan -p {port} "
        f"{host} >> {known_hosts}` or pin it as ssh.host_key_fingerprint: {offered}"
    )


class SSHTransport(Transport):
    """Commands and files on a remote login node over one persistent SSH connection."""

    def __init__(self, cluster: ClusterConfig,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if cluster.ssh is None:
            raise TransportError(f"cluster {cluster.name}: transport ssh needs an ssh: section")
        self.name = cluster.name
        self.settings = cluster.ssh
        self.env = dict(cluster.env)
        self.connects = 0
        self._sleep = sleep
        self._lock = threading.RLock()
        self._client: paramiko.SSHClient | None = None
        self._jump: paramiko.SSHClient | None = None
        self._chan: paramiko.Channel | None = None
        self._buf = b""

    # -- connection -------------------------------------------------------------------------
    def _known_hosts(self) -> Path:
        return Path(self.settings.known_hosts or "~/.ssh/known_hosts").expanduser()

    def _new_client(self, host: str, port: int) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        known = self._known_hosts()
        if self.settings.host_key_fingerprint is None and known.exists():
            client.load_host_keys(str(known))
        client.set_missing_host_key_policy(_Verify(self.settings, known, host, port))
        return client

    def _open(self) -> None:
        """Connect, verify the host key, authenticate, start the remote shell."""
        s = self.settings
        sock: socket.socket | paramiko.Channel
        if s.proxy_jump:
            sock = self._open_jump(s.proxy_jump)
        else:
            sock = socket.create_connection((s.host, s.port), timeout=s.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = self._new_client(s.host, s.port)
        try:
            client.connect(
                s.host, s.port, username=s.user or _local_user(), sock=sock,
                key_filename=os.path.expanduser(s.key_file) if s.key_file else None,
                allow_agent=s.use_agent, look_for_keys=s.key_file is None,
                timeout=s.connect_timeout, banner_timeout=s.connect_timeout,
                auth_timeout=s.connect_timeout,
            )
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            known_type = exc.expected_key.get_name()
            if known_type != exc.key.get_name():  # as OpenSSH: a new key type is unknown
                raise HostKeyError(
                    _unknown_key(s.host, s.port, exc.key, self._known_hosts())
                    + f" ({self._known_hosts()} has only a key of another type, {known_type})"
                ) from None
            raise HostKeyError(
                f"host key of {_host_id(s.host, s.port)} has CHANGED (now "
                f"{fingerprint(exc.key)}): refusing to connect, this may be an attack. If the "
                f"change is expected, remove the old line from {self._known_hosts()} "
                f"(`ssh-keygen -R '{_host_id(s.host, s.port)}' -f {self._known_hosts()}`) and "
                "trust the new key."
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise TransportError(
                f"cluster {self.name}: authentication as {s.user or _local_user()} failed "
                f"({exc}); check ssh.user and ssh.key_file"
            ) from None
        transport = client.get_transport()
        assert transport is not None
        if s.keepalive:
            transport.set_keepalive(int(max(1, s.keepalive)))
        self._client = client
        self.connects += 1
        self._start_shell()
        log.info("ssh connected", cluster=self.name, host=s.host, port=s.port,
                 connects=self.connects)

    def _open_jump(self, spec: str) -> paramiko.Channel:
        user, _, rest = spec.rpartition("@")
        host, _, port_text = rest.partition(":")
        port = int(port_text or 22)
        jump = self._new_client(host, port)
        sock = socket.create_connection((host, port), timeout=self.settings.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = self.settings
        jump.connect(host, port, username=user or s.user or _local_user(), sock=sock,
                     key_filename=os.path.expanduser(s.key_file) if s.key_file else None,
                     allow_agent=s.use_agent, look_for_keys=s.key_file is None,
                     timeout=s.connect_timeout)
        self._jump = jump
        transport = jump.get_transport()
        assert transport is not None
        return transport.open_channel("direct-tcpip", (s.host, s.port), ("127.0.0.1", 0))

    def _start_shell(self) -> None:
        assert self._client is not None
        transport = self._client.get_transport()
        assert transport is not None
        chan = transport.open_session()
        chan.settimeout(self.settings.command_timeout)
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.env.items())
        chan.exec_command("exec bash --noprofile --norc")
        chan.sendall((exports + _PRELUDE).encode())
        self._chan, self._buf = chan, b""
        self._read_until(b"AKB-READY\n")

    def _drop(self) -> None:
        for c in (self._client, self._jump):
            if c is not None:
                with contextlib.suppress(Exception):  # closing a broken connection
                    c.close()
        self._client = self._jump = self._chan = None

    def _ensure(self) -> None:
        """A working connection, re-opened with exponential backoff and jitter if needed."""
        if self._chan is not None and not self._chan.closed and self._alive():
            return
        self._drop()
        s = self.settings
        for attempt in range(1, s.reconnect_attempts + 1):
            try:
                self._open()
                return
            except HostKeyError:
                raise
            except (OSError, paramiko.SSHException, EOFError, TransportError) as exc:
                self._drop()
                if attempt == s.reconnect_attempts:
                    raise TransportError(
                        f"cluster {self.name}: cannot connect to {s.host}:{s.port} after "
                        f"{attempt} attempts: {exc}"
                    ) from None
                delay = min(s.reconnect_max_delay, 0.5 * 2 ** (attempt - 1))
                delay *= random.uniform(0.5, 1.0)
                log.warning("ssh connect failed, retrying", cluster=self.name, error=str(exc),
                            attempt=attempt, delay=round(delay, 2))
                self._sleep(delay)

    def _alive(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return transport is not None and transport.is_active()

    # -- the remote shell protocol ----------------------------------------------------------
    def _read_until(self, marker: bytes) -> bytes:
        assert self._chan is not None
        while marker not in self._buf:
            data = self._chan.recv(65536)
            if not data:
                raise EOFError("the remote shell ended")
            self._buf += data
        head, _, self._buf = self._buf.partition(marker)
        return head

    def _request(self, script: str, retry: bool) -> Completed:
        """Run a bash script in the remote shell: (exit status, stdout, stderr)."""
        with self._lock:
            for attempt in (1, 2):
                self._ensure()
                assert self._chan is not None
                rid = secrets.token_hex(4)
                payload = base64.b64encode(script.encode()).decode()
                try:
                    self._chan.sendall(f"akb_req {rid} {payload}\n".encode())
                    self._read_until(f"AKB-RES {rid} ".encode())
                    line = self._read_until(b"\n").decode()
                except (OSError, EOFError, paramiko.SSHException, TimeoutError) as exc:
                    self._drop()
                    if not retry:
                        raise ConnectionLost(
                            f"cluster {self.name}: connection lost during a command: {exc}"
                        ) from None
                    if attempt == 2:
                        raise TransportError(f"cluster {self.name}: {exc}") from None
                    log.warning("ssh connection lost, reconnecting", cluster=self.name,
                                error=str(exc))
                    continue
                rc, out, err = (line.split(" ") + ["", ""])[:3]
                return Completed(("bash", "-s"), int(rc), _b64(out), _b64(err))
        raise AssertionError("unreachable")

    # -- Transport --------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the connection now (it otherwise opens on first use)."""
        with self._lock:
            self._ensure()

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float = 60.0) -> Completed:
        command = shlex.join(argv)
        if stdin is not None:
            encoded = base64.b64encode(stdin).decode()
            command = f"printf '%s' {encoded} | base64 -d | {command}"
        res = self._request(command + "\n", retry=True)
        return Completed(tuple(argv), res.returncode, res.stdout, res.stderr)

    def run_many(self, argvs: Sequence[Sequence[str]], *, concurrency: int = 1,
                 retry: bool = True) -> list[Completed]:
        if not argvs:
            return []
        script = _ONE + "".join(f"akb_one {shlex.join(a)}\n" for a in argvs)
        res = self._request(script, retry=retry)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("AKB-ONE ")]
        out: list[Completed] = []
        for argv, line in zip(argvs, lines, strict=False):
            _, rc, o, e = (line.split(" ") + ["", ""])[:4]
            out.append(Completed(tuple(argv), int(rc), _b64(o), _b64(e)))
        for argv in argvs[len(out):]:  # the batch stopped early (e.g. killed)
            out.append(Completed(tuple(argv), 255, "", res.stderr or "batch ended early"))
        return out

    def write_files(self, files: Mapping[str, bytes], *, mode: int = 0o644) -> None:
        """All files in one tar, unpacked by one remote ``tar`` (a round trip, 3 processes)."""
        if not files:
            return
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for path, data in files.items():
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size, info.mode, info.mtime = len(data), mode, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        payload = base64.b64encode(buf.getvalue()).decode()
        res = self._request(f"printf '%s' {payload} | base64 -d | tar -C / --no-same-owner "
                            "-xf - || exit 1\n", retry=True)
        if not res.ok:
            raise OSError(f"cluster {self.name}: cannot write files: {res.stderr.strip()}")

    def read_files(self, paths: Iterable[str]) -> dict[str, bytes | None]:
        wanted = list(dict.fromkeys(paths))
        if not wanted:
            return {}
        script = "".join(
            f"if [ -f {shlex.quote(p)} ]; then printf 'F %s\\n' \"$(base64 -w0 < "
            f"{shlex.quote(p)})\"; else echo M; fi\n" for p in wanted
        )
        res = self._request(script, retry=True)
        out: dict[str, bytes | None] = {}
        for path, line in zip(wanted, res.stdout.splitlines(), strict=False):
            out[path] = base64.b64decode(line[2:]) if line.startswith("F") else None
        return out

    def stream(self, argv: Sequence[str], *, stdin: BinaryIO | None = None,
               stdout: BinaryIO | None = None, timeout: float = 3600.0) -> Completed:
        """A separate channel on the same connection, for bulk data (tar streams)."""
        with self._lock:
            self._ensure()
            assert self._client is not None
            transport = self._client.get_transport()
            assert transport is not None
            chan = transport.open_session()
        chan.settimeout(timeout)
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        chan.exec_command((f"env {exports} " if exports else "") + shlex.join(argv))
        if stdin is not None:
            writer = chan.makefile_stdin("wb")
            shutil.copyfileobj(stdin, writer, 1 << 20)
            writer.flush()
            chan.shutdown_write()
        if stdout is not None:
            reader = chan.makefile("rb")
            shutil.copyfileobj(reader, stdout, 1 << 20)
        err = chan.makefile_stderr("rb").read().decode("utf-8", "replace")
        rc = chan.recv_exit_status()
        chan.close()
        return Completed(tuple(argv), rc, "", err)

    def close(self) -> None:
        with self._lock:
            self._drop()


def _b64(text: str) -> str:
    return base64.b64decode(text).decode("utf-8", "replace") if text else ""


def _local_user() -> str:
    import getpass

    return getpass.getuser()

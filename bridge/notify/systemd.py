"""The systemd notify protocol (``sd_notify``) without libsystemd: datagrams to NOTIFY_SOCKET.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for
an abstract socket) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.
:meth:`Notifier.from_env` reads them once and removes them from the environment, so that no
child (sbatch, ssh, a local job) inherits them and speaks for the daemon.

The daemon sends ``READY=1`` (:meth:`Notifier.ready`) only once the store is open and the API
listens, ``STOPPING=1`` when shutdown begins, ``RELOADING=1`` at the start of a SIGHUP reload
and ``READY=1`` again when it is done.

Watchdog: call :meth:`Notifier.watchdog` (or :meth:`Notifier.watchdog_if_due` on every turn)
from the daemon's main loop, the loop that drives the work, never from a side thread or timer
of its own: a thread that pings on a clock keeps pinging while the loop it should vouch for is
stuck, and systemd never restarts the hung daemon. If the work runs in several loops, the
main loop pings only while each of them has reported progress recently.

Without ``NOTIFY_SOCKET`` (not under systemd) every method is a no-op. Sending never raises:
the first failure is logged (structlog, ``sd_notify failed``), later ones are counted only.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import MutableMapping

import structlog

log = structlog.get_logger("akobridge.systemd")

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"


def _socket_address(value: str) -> str | bytes | None:
    """The ``sendto`` address for a NOTIFY_SOCKET value; ``None`` if not a supported form."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # relative paths and vsock: are not supported


def _watchdog_usec(environ: MutableMapping[str, str]) -> int | None:
    """WATCHDOG_USEC if it is meant for this process (WATCHDOG_PID absent or ours)."""
    try:
        usec = int(environ.get(ENV_WATCHDOG_USEC, ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = environ.get(ENV_WATCHDOG_PID)
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec


class Notifier:
    """Tells systemd about this daemon's state (``sd_notify``); a no-op when not under it."""

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self._sendto = _socket_address(address) if address else None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self.failures = 0
        self._last_ping: float | None = None
        if address and self._sendto is None:
            log.warning("sd_notify disabled: unsupported NOTIFY_SOCKET", socket=address)

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID, then remove them from ``environ``."""
        env = os.environ if environ is None else environ
        address = env.get(ENV_SOCKET) or None
        usec = _watchdog_usec(env)
        for name in (ENV_SOCKET, ENV_WATCHDOG_USEC, ENV_WATCHDOG_PID):
            env.pop(name, None)
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere (NOTIFY_SOCKET was set and usable)."""
        return self._sendto is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Seconds between two pings (half of WATCHDOG_USEC); ``None`` without a watchdog."""
        if not self.enabled or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; ``True`` if it was sent."""
        if self._sendto is None or not fields:
            return False
        data = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # a full socket must not stall the main loop
                sock.sendto(data, self._sendto)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:
                log.warning("sd_notify failed", socket=self.address, error=str(exc),
                            field=fields[0].partition("=")[0])
            return False
        return True

    def ready(self, status: str | None = None) -> None:
        """READY=1: start-up (or a reload) is complete; with an optional STATUS= line."""
        self.notify("READY=1", *([_status(status)] if status is not None else []))

    def stopping(self, status: str | None = None) -> None:
        """STOPPING=1: shutdown has begun."""
        self.notify("STOPPING=1", *([_status(status)] if status is not None else []))

    def reloading(self) -> None:
        """RELOADING=1 with MONOTONIC_USEC (systemd >= 253 expects it); send ready() after."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def status(self, text: str) -> None:
        """STATUS=: one line shown by ``systemctl status``."""
        self.notify(_status(text))

    def extend_timeout(self, seconds: float) -> None:
        """EXTEND_TIMEOUT_USEC=: a slow start-up or stop needs ``seconds`` more."""
        self.notify(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1_000_000))}")

    def watchdog(self) -> None:
        """WATCHDOG=1 (only when a watchdog is set for this process). Call from the main loop."""
        if self.watchdog_interval_s is None:
            return
        self._last_ping = time.monotonic()
        self.notify("WATCHDOG=1")

    def watchdog_if_due(self) -> bool:
        """Ping if ``watchdog_interval_s`` has passed since the last ping; call every turn."""
        interval = self.watchdog_interval_s
        if interval is None:
            return False
        if self._last_ping is not None and time.monotonic() - self._last_ping < interval:
            return False
        self.watchdog()
        return True


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.splitlines())

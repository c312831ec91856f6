"""systemd integration: the sd_notify protocol against real NOTIFY_SOCKET datagram sockets,
the pid file of ``serve --pidfile``, ``systemd-analyze`` on the shipped units, and the real
daemon under a NOTIFY_SOCKET (READY after /healthz, watchdog pings, reload, SIGTERM)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from bridge.notify.systemd import Notifier
from bridge.pidfile import PidFile, PidFileBusy, is_akobridge, read_pid
from conftest import REPO

PY = sys.executable
AKOBRIDGE = Path(PY).parent / "akobridge"
UNITS = REPO / "systemd"


# --------------------------------------------------------------------------------------------
# A real NOTIFY_SOCKET: an AF_UNIX datagram socket that also reports each sender's pid
# --------------------------------------------------------------------------------------------

@dataclass
class Message:
    text: str
    pid: int
    at: float

    @property
    def fields(self) -> dict[str, str]:
        return dict(line.partition("=")[::2] for line in self.text.split("\n"))


class NotifySocket:
    """What systemd listens on: ``address`` is the NOTIFY_SOCKET value."""

    def __init__(self, kind: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir: str | None = None
        if kind == "path":
            self._dir = tempfile.mkdtemp(prefix="akbn", dir="/tmp")  # short: 108-byte limit
            self.address = os.path.join(self._dir, "notify")
            self.sock.bind(self.address)
        else:
            name = f"akb-notify-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self.sock.bind(b"\0" + name.encode())
            self.address = "@" + name
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def recv(self, timeout: float) -> Message | None:
        """The next datagram with its sender's pid (SCM_CREDENTIALS), or None after timeout."""
        self.sock.settimeout(timeout)
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return None
        pid = -1
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        return Message(data.decode(), pid, time.monotonic())

    def drain(self, quiet: float = 0.3) -> list[Message]:
        out = []
        while (m := self.recv(quiet)) is not None:
            out.append(m)
        return out

    def close(self) -> None:
        self.sock.close()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


class Collector(threading.Thread):
    """Receives every datagram of ``sock`` as it arrives (arrival times stay true)."""

    def __init__(self, sock: NotifySocket) -> None:
        super().__init__(daemon=True)
        self.sock, self.done = sock, threading.Event()
        self.messages: list[Message] = []

    def run(self) -> None:
        while not self.done.is_set():
            if (m := self.sock.recv(0.05)) is not None:
                self.messages.append(m)

    def stop(self) -> None:
        self.done.set()
        self.join()

    def wait_for(self, key: str, timeout: float, start: int = 0) -> int:
        """Index of the first message from ``start`` on that carries ``key``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, m in enumerate(self.messages[start:], start):
                if key in m.fields:
                    return i
            time.sleep(0.01)
        raise AssertionError(f"no {key} within {timeout} s: {[m.text for m in self.messages]}")


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> Iterator[NotifySocket]:
    s = NotifySocket(request.param)
    yield s
    s.close()


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def with_own_watchdog_pid(argv: list[str]) -> list[str]:
    """Run ``argv`` with WATCHDOG_PID set to its own pid, as systemd sets it (sh, then exec)."""
    return ["/bin/sh", "-c", 'export WATCHDOG_PID=$$; exec "$0" "$@"', *argv]


def run_child(code: str, env: dict[str, str], sock: NotifySocket,
              own_pid: bool = False) -> tuple[dict[str, object], int, list[Message]]:
    """Run Python ``code`` in a child while receiving on ``sock``: the child's last stdout
    line as JSON, its pid, and the datagrams (stamped when they arrived)."""
    got = Collector(sock)
    got.start()
    argv = [PY, "-c", textwrap.dedent(code)]
    proc = subprocess.Popen(with_own_watchdog_pid(argv) if own_pid else argv, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=30)
    time.sleep(0.1)  # the last datagrams
    got.stop()
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), proc.pid, got.messages


LIFECYCLE = """
    import json, os, subprocess, sys, time
    from bridge.notify.systemd import Notifier
    n = Notifier.from_env()
    grandchild = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('NOTIFY_SOCKET'), "
         "os.environ.get('WATCHDOG_USEC'), os.environ.get('WATCHDOG_PID'))"],
        capture_output=True, text=True).stdout.split()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.ready("serving on unix:/run/akobridge/api.sock")
    n.status("2 workflows running")
    n.watchdog()
    n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.ready("reloaded")
    n.stopping()
    print(json.dumps({"interval": n.watchdog_interval_s, "enabled": n.enabled,
                      "env": [os.environ.get(k) for k in
                              ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")],
                      "grandchild": grandchild, "before": before, "after": after,
                      "failures": n.failures}))
"""


def test_lifecycle_messages_reach_the_socket(notify_socket: NotifySocket) -> None:
    env = child_env(NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC="30000000")
    info, pid, msgs = run_child(LIFECYCLE, env, notify_socket, own_pid=True)
    assert [m.text.split("\n")[0] for m in msgs] == [
        "READY=1", "STATUS=2 workflows running", "WATCHDOG=1", "RELOADING=1", "READY=1",
        "STOPPING=1"]
    assert msgs[0].text == "READY=1\nSTATUS=serving on unix:/run/akobridge/api.sock"
    assert msgs[4].text == "READY=1\nSTATUS=reloaded"
    reload = msgs[3].fields
    assert set(reload) == {"RELOADING", "MONOTONIC_USEC"}
    assert info["before"] <= int(reload["MONOTONIC_USEC"]) <= info["after"]  # type: ignore[operator]
    assert {m.pid for m in msgs} == {pid}  # sent by the main process itself (NotifyAccess=main)
    assert info["interval"] == 15.0 and info["enabled"] is True and info["failures"] == 0
    assert info["env"] == [None, None, None]  # gone from the daemon's environment ...
    assert info["grandchild"] == ["None", "None", "None"]  # ... so no child inherits it


WATCHDOG_LOOP = """
    import json, time
    from bridge.notify.systemd import Notifier
    n = Notifier.from_env()
    sent, end = 0, time.monotonic() + 1.3
    while time.monotonic() < end:          # a main loop turning every 5 ms
        sent += n.watchdog_if_due()
        time.sleep(0.005)
    print(json.dumps({"interval": n.watchdog_interval_s, "sent": sent}))
"""


def test_watchdog_pings_at_half_the_watchdog_interval(notify_socket: NotifySocket) -> None:
    env = child_env(NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC="400000")
    info, pid, msgs = run_child(WATCHDOG_LOOP, env, notify_socket, own_pid=True)
    assert info["interval"] == 0.2
    assert all(m.text == "WATCHDOG=1" and m.pid == pid for m in msgs)
    assert len(msgs) == info["sent"] and 6 <= len(msgs) <= 7  # at 0, 0.2, ... 1.2 s
    gaps = [b.at - a.at for a, b in zip(msgs, msgs[1:], strict=False)]
    assert min(gaps) >= 0.18 and max(gaps) < 0.4, gaps  # never more often; never late


WATCHDOG_PROBE = """
    import json
    from bridge.notify.systemd import Notifier
    n = Notifier.from_env()
    n.watchdog()
    due = n.watchdog_if_due()
    n.ready()
    print(json.dumps({"interval": n.watchdog_interval_s, "due": due}))
"""


def test_watchdog_meant_for_another_pid_is_ignored(notify_socket: NotifySocket) -> None:
    env = child_env(NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC="400000",
                    WATCHDOG_PID=str(os.getpid()))  # this test's pid, not the child's
    info, _, msgs = run_child(WATCHDOG_PROBE, env, notify_socket)
    assert info == {"interval": None, "due": False}
    assert [m.text for m in msgs] == ["READY=1"]  # no WATCHDOG=1 at all


def test_watchdog_without_watchdog_pid_applies(notify_socket: NotifySocket) -> None:
    env = child_env(NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC="400000")
    info, _, msgs = run_child(WATCHDOG_PROBE, env, notify_socket)
    assert info == {"interval": 0.2, "due": False}  # just pinged by watchdog()
    assert [m.text for m in msgs] == ["WATCHDOG=1", "READY=1"]


@pytest.mark.parametrize("usec", ["", "0", "-5", "soon"])
def test_no_or_bad_watchdog_usec_means_no_watchdog(usec: str) -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": usec}
    assert Notifier.from_env(env).watchdog_interval_s is None
    assert env == {}


def test_everything_is_a_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")

    def no_socket(*_a: object, **_k: object) -> None:
        raise AssertionError("a socket was opened without NOTIFY_SOCKET")

    monkeypatch.setattr(socket, "socket", no_socket)
    n = Notifier.from_env()
    assert not n.enabled and n.watchdog_interval_s is None
    assert "WATCHDOG_USEC" not in os.environ
    n.ready("x")
    n.status("y")
    n.reloading()
    n.watchdog()
    assert n.watchdog_if_due() is False
    n.extend_timeout(10)
    n.stopping()
    assert n.notify("READY=1") is False and n.failures == 0


def test_send_errors_never_raise_and_are_logged_once(tmp_path: Path) -> None:
    gone = tmp_path / "no-such-socket"
    env = {"NOTIFY_SOCKET": str(gone), "WATCHDOG_USEC": "1000000"}
    n = Notifier.from_env(env)
    with structlog.testing.capture_logs() as logs:
        n.ready("serving")
        n.watchdog()
        n.stopping()
    assert n.failures == 3
    assert [e["event"] for e in logs] == ["sd_notify failed"]
    assert logs[0]["socket"] == str(gone) and "No such file" in logs[0]["error"]


def test_a_full_socket_does_not_block_the_caller(notify_socket: NotifySocket) -> None:
    n = Notifier(notify_socket.address, 1_000_000)  # the receiver never reads
    start = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        for _ in range(5000):
            n.watchdog()
    assert time.monotonic() - start < 5
    assert n.failures > 0 and len(logs) == 1
    assert "temporarily unavailable" in logs[0]["error"]


@pytest.mark.parametrize("value", ["vsock:2:1234", "relative/socket", "@"])
def test_unsupported_socket_forms_disable_notify(value: str) -> None:
    with structlog.testing.capture_logs() as logs:
        n = Notifier.from_env({"NOTIFY_SOCKET": value})
    assert not n.enabled
    n.ready()
    assert n.failures == 0 and logs[0]["event"] == "sd_notify disabled: unsupported NOTIFY_SOCKET"


def test_status_text_stays_on_one_line(notify_socket: NotifySocket) -> None:
    Notifier(notify_socket.address).status("first\nREADY=1")
    assert [m.text for m in notify_socket.drain(0.1)] == ["STATUS=first READY=1"]


# --------------------------------------------------------------------------------------------
# PidFile
# --------------------------------------------------------------------------------------------

def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture()
def live_akobridge() -> Iterator[int]:
    """A live process whose command line is akobridge's (argv[0] = 'akobridge')."""
    proc = subprocess.Popen(["bash", "-c", "exec -a akobridge sleep 60"])
    deadline = time.monotonic() + 5
    while not is_akobridge(proc.pid):
        assert time.monotonic() < deadline, "the stand-in never exec'd"
        time.sleep(0.01)
    yield proc.pid
    proc.kill()
    proc.wait()


def test_pidfile_holds_the_pid_and_is_removed_on_exit(tmp_path: Path) -> None:
    path = tmp_path / "dot-akobridge" / "serve.pid"  # the directory is created
    with PidFile(path) as pf:
        assert path.read_text() == f"{os.getpid()}\n" and read_pid(path) == os.getpid()
        assert pf.path == path
        assert sorted(os.listdir(path.parent)) == ["serve.pid"]  # no temporary file left
    assert not path.exists()
    with pytest.raises(RuntimeError, match="boom"), PidFile(path):
        raise RuntimeError("boom")
    assert not path.exists()


def test_pidfile_refuses_a_live_akobridge_naming_it(tmp_path: Path,
                                                    live_akobridge: int) -> None:
    path = tmp_path / "serve.pid"
    path.write_text(f"{live_akobridge}\n")
    with pytest.raises(PidFileBusy) as err:
        PidFile(path).acquire()
    assert err.value.pid == live_akobridge
    assert f"names pid {live_akobridge}, a running akobridge (akobridge 60)" in str(err.value)
    assert f"kill -TERM {live_akobridge}" in str(err.value)
    assert path.read_text() == f"{live_akobridge}\n"  # untouched


HOLDER = """
    import signal, sys, time
    from bridge.pidfile import PidFile
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with PidFile(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
"""


def test_pidfile_held_by_another_process_is_refused_and_kill_from_it_stops_it(
        tmp_path: Path) -> None:
    path = tmp_path / "serve.pid"
    holder = subprocess.Popen([PY, "-c", textwrap.dedent(HOLDER), str(path)], env=child_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert read_pid(path) == holder.pid
        # its command line is `python -c ...`: refused for its lock, not its name
        with pytest.raises(PidFileBusy, match=f"names pid {holder.pid}, a running akobridge"):
            PidFile(path).acquire()
        # the documented way to stop it
        subprocess.run(["sh", "-c", f'kill -TERM "$(cat {path})"'], check=True)
        assert holder.wait(timeout=10) == 0
    finally:
        holder.kill()
        holder.wait()
    assert not path.exists()


@pytest.mark.parametrize("content", ["dead", "not-akobridge", "garbage", "empty", "ours"])
def test_stale_pidfile_is_replaced(tmp_path: Path, content: str) -> None:
    path = tmp_path / "serve.pid"
    other = subprocess.Popen(["sleep", "60"])  # a live process that is not an akobridge
    try:
        path.write_text({"dead": f"{dead_pid()}\n", "not-akobridge": f"{other.pid}\n",
                         "garbage": "12ab\n", "empty": "", "ours": f"{os.getpid()}\n"}[content])
        with PidFile(path):
            assert read_pid(path) == os.getpid()
        assert not path.exists()
    finally:
        other.kill()
        other.wait()


def test_pidfile_of_another_users_process_is_stale(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to start a process as another user")
    proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "bash", "-c", "exec -a akobridge sleep 60"])
    try:
        time.sleep(0.2)
        path = tmp_path / "serve.pid"
        path.write_text(f"{proc.pid}\n")
        with PidFile(path):
            assert read_pid(path) == os.getpid()
    finally:
        proc.kill()
        proc.wait()


RACER = """
    import json, os, sys, time
    from bridge.pidfile import PidFile, PidFileBusy
    path, go = sys.argv[1], sys.argv[2]
    while not os.path.exists(go):
        time.sleep(0.001)
    try:
        with PidFile(path):
            print("ok", flush=True)
            time.sleep(1.5)
    except PidFileBusy as exc:
        print("busy", exc.pid, flush=True)
"""


@pytest.mark.parametrize("start", ["absent", "stale"])
def test_processes_starting_together_take_the_pidfile_once(tmp_path: Path, start: str) -> None:
    path, go = tmp_path / "serve.pid", tmp_path / "go"
    if start == "stale":
        path.write_text(f"{dead_pid()}\n")
    racers = [subprocess.Popen([PY, "-c", textwrap.dedent(RACER), str(path), str(go)],
                               env=child_env(), stdout=subprocess.PIPE, text=True)
              for _ in range(8)]
    time.sleep(0.5)  # all of them waiting for the start signal
    go.touch()
    results = {r.pid: r.communicate(timeout=30)[0].split() for r in racers}
    winners = [pid for pid, out in results.items() if out == ["ok"]]
    assert len(winners) == 1, results
    assert all(out == ["busy", str(winners[0])] for pid, out in results.items()
               if pid != winners[0]), results
    assert not path.exists()


def test_release_leaves_a_file_that_is_no_longer_ours(tmp_path: Path) -> None:
    path = tmp_path / "serve.pid"
    pf = PidFile(path).acquire()
    path.unlink()
    path.write_text("4242\n")  # replaced by hand meanwhile
    pf.release()
    assert path.read_text() == "4242\n"


# --------------------------------------------------------------------------------------------
# The shipped units: systemd-analyze
# --------------------------------------------------------------------------------------------

def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze not found: install the `systemd` package "
                    "(tests/cluster/setup.sh does)")
    return exe


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (a key may repeat)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def runnable_copy(unit: str, tmp_path: Path) -> Path:
    """The shipped unit with ExecStart's program replaced by this venv's akobridge script
    (verify checks that it exists and is executable); every other line unchanged."""
    assert AKOBRIDGE.exists(), AKOBRIDGE
    text = (UNITS / unit).read_text()
    new, count = re.subn(r"(?m)^ExecStart=\S+", f"ExecStart={AKOBRIDGE}", text)
    assert count == 1
    out = tmp_path / unit
    out.write_text(new)
    return out


def verify(unit: Path, user: bool, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0"}
    argv = [systemd_analyze(), "verify", "--man=no", str(unit)]
    if user:  # a user manager needs a runtime dir even offline
        xdg = tmp_path / "xdg"
        xdg.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(xdg)
        argv.insert(1, "--user")
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize(("unit", "user"), [("akobridge.service", False),
                                            ("akobridge-user.service", True)])
def test_systemd_analyze_verify_passes(unit: str, user: bool, tmp_path: Path) -> None:
    res = verify(runnable_copy(unit, tmp_path), user, tmp_path)
    output = (res.stdout + res.stderr).strip()
    assert res.returncode == 0, output
    assert output == "", output  # not even a warning ("Unknown key ..., ignoring")


def test_systemd_analyze_verify_really_checks(tmp_path: Path) -> None:
    """The check above is not vacuous: verify reports a bad key and a missing binary."""
    copy = runnable_copy("akobridge.service", tmp_path)
    copy.write_text(copy.read_text().replace("[Service]\n", "[Service]\nWachdogSec=30\n"))
    res = verify(copy, False, tmp_path)
    assert "Unknown key 'WachdogSec' in section [Service]" in res.stderr
    shipped = tmp_path / "shipped" / "akobridge.service"
    shipped.parent.mkdir()
    shutil.copy(UNITS / "akobridge.service", shipped)
    if not Path("/usr/local/bin/akobridge").exists():
        res = verify(shipped, False, tmp_path)
        assert res.returncode != 0 and "/usr/local/bin/akobridge is not executable" in res.stderr


def test_system_unit_has_the_documented_settings() -> None:
    s = unit_settings(UNITS / "akobridge.service")
    expected = {
        "Type": "notify", "NotifyAccess": "main",
        "ExecStart": "/usr/local/bin/akobridge serve --config /etc/akobridge/bridge.yaml",
        "ExecReload": "/bin/kill -HUP $MAINPID", "WatchdogSec": "30",
        "Restart": "on-failure", "RestartSec": "5", "TimeoutStopSec": "30",
        "KillMode": "mixed", "User": "akobridge", "Group": "akobridge",
        "StateDirectory": "akobridge", "RuntimeDirectory": "akobridge",
        "RuntimeDirectoryMode": "0750", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/akobridge", "ProtectHome": "read-only",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
        "RestrictRealtime": "yes", "SystemCallArchitectures": "native", "UMask": "0077",
        "WantedBy": "multi-user.target",
    }
    assert {k: s.get(k) for k in expected} == {k: [v] for k, v in expected.items()}


def test_system_unit_exposure_stays_low(tmp_path: Path) -> None:
    """``systemd-analyze security`` (offline) rates the unit 'OK' (at most 5.0 of 10)."""
    res = subprocess.run([systemd_analyze(), "security", "--offline=yes", "--threshold=50",
                          "--no-pager", str(runnable_copy("akobridge.service", tmp_path))],
                         capture_output=True, text=True, timeout=60)
    summary = res.stdout.strip().splitlines()[-1]
    assert res.returncode == 0, summary
    assert "Overall exposure level for akobridge.service" in summary


# --------------------------------------------------------------------------------------------
# The real daemon under a NOTIFY_SOCKET
# --------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bridge_yaml(tmp_path: Path, name: str, state_dir: str = "state",
                clusters_dir: str = "clusters") -> tuple[Path, int]:
    port = free_port()
    cfg = tmp_path / name / "bridge.yaml"
    cfg.parent.mkdir(parents=True)
    (cfg.parent / clusters_dir).expanduser().mkdir(parents=True)
    cfg.write_text(textwrap.dedent(f"""\
        state_dir: {state_dir}
        clusters_dir: {clusters_dir}
        api:
          listen: ["127.0.0.1:{port}"]
          allow_loopback_without_token: true
        """))
    return cfg, port


def healthz(port: int, timeout: float) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",  # noqa: S310
                                timeout=timeout) as resp:
        return int(resp.status)


def test_real_daemon_speaks_the_notify_protocol(tmp_path: Path) -> None:
    sock = NotifySocket("path")
    got = Collector(sock)
    got.start()
    cfg, port = bridge_yaml(tmp_path, "a")
    pidfile = tmp_path / "dot-akobridge" / "serve.pid"
    env = child_env(NOTIFY_SOCKET=sock.address, WATCHDOG_USEC="2000000")  # WatchdogSec=2
    argv = [str(AKOBRIDGE), "serve", "--config", str(cfg), "--pidfile", str(pidfile)]
    with (tmp_path / "serve.log").open("w") as out:
        daemon = subprocess.Popen(with_own_watchdog_pid(argv), env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        i_ready = got.wait_for("READY", timeout=60)
        assert healthz(port, timeout=1) == 200  # READY=1 only once the API answers
        assert read_pid(pidfile) == daemon.pid

        # a second daemon (its own state dir and port) is refused by the pid file, naming it
        cfg_b, _ = bridge_yaml(tmp_path, "b")
        second = subprocess.run([str(AKOBRIDGE), "serve", "--config", str(cfg_b),
                                 "--pidfile", str(pidfile)], env=child_env(),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and f"names pid {daemon.pid}" in second.stderr, second

        time.sleep(max(0.0, got.messages[i_ready].at + 4 - time.monotonic()))
        # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again
        daemon.send_signal(signal.SIGHUP)
        i_reload = got.wait_for("RELOADING", timeout=20, start=i_ready + 1)
        i_reready = got.wait_for("READY", timeout=20, start=i_reload + 1)
        assert healthz(port, timeout=5) == 200
        # SIGTERM: STOPPING=1, exit 0, pid file gone
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, (tmp_path / "serve.log").read_text()
        assert not pidfile.exists()
        i_stop = got.wait_for("STOPPING", timeout=5, start=i_reready + 1)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        got.stop()
        sock.close()

    msgs = got.messages
    assert {m.pid for m in msgs} == {daemon.pid}  # the main process itself (NotifyAccess=main)
    assert "READY" not in {k for m in msgs[:i_ready] for k in m.fields}
    reload = msgs[i_reload].fields
    assert int(reload["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert set(msgs[i_stop].fields) >= {"STOPPING"} and i_stop == max(
        i for i, m in enumerate(msgs) if "WATCHDOG" not in m.fields)  # nothing but pings after
    # watchdog pings from the main loop from READY=1 on, never a watchdog interval (1 s) apart
    pings = [m.at for m in msgs[i_ready:i_stop] if "WATCHDOG" in m.fields]
    gaps = [b - a for a, b in zip([msgs[i_ready].at, *pings], pings, strict=False)]
    assert len(pings) >= 4 and max(gaps) <= 1.0, gaps


DOC = REPO / "docs" / "running-without-systemd.md"


def documented_crontab() -> dict[str, str]:
    """The crontab block of docs/running-without-systemd.md: PATH, @reboot, */5 commands."""
    block = re.search(r"```crontab\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None
    out = {}
    for line in block.group(1).splitlines():
        if line.startswith("PATH="):
            out["PATH"] = line.removeprefix("PATH=")
        elif line.startswith("@reboot"):
            out["@reboot"] = line.removeprefix("@reboot").strip()
        elif line.startswith("*/5 * * * *"):
            out["*/5"] = line.removeprefix("*/5 * * * *").strip()
    return out


def wait_serving(pidfile: Path, port: int, not_pid: int | None = None) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pid = read_pid(pidfile)
        if pid is not None and pid != not_pid:
            try:
                if healthz(port, timeout=1) == 200:
                    return pid
            except OSError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"no daemon serving on {port} with a pid file")


def test_documented_crontab_runs_one_daemon_and_restarts_a_dead_one(tmp_path: Path) -> None:
    cron = documented_crontab()
    assert cron["@reboot"] == cron["*/5"]
    stop = re.search(r"^kill -TERM .*serve\.pid\)\"", DOC.read_text(), re.M)
    assert stop is not None
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    (home / ".local" / "bin" / "akobridge").symlink_to(AKOBRIDGE)
    (home / ".akobridge").mkdir()  # the one-time setup
    _, port = bridge_yaml(home / ".config", "akobridge", state_dir="~/.local/share/akobridge",
                          clusters_dir="~/.config/akobridge/clusters")
    env = {"HOME": str(home), "PATH": cron["PATH"], "LANG": "C.UTF-8"}  # what cron gives
    pidfile, log = home / ".akobridge" / "serve.pid", home / ".akobridge" / "serve.log"
    runs: list[subprocess.Popen[bytes]] = []

    def tick() -> subprocess.Popen[bytes]:
        runs.append(subprocess.Popen(["/bin/sh", "-c", cron["*/5"]], env=env,
                                     start_new_session=True))
        return runs[-1]

    try:
        first = tick()
        pid = wait_serving(pidfile, port)
        again = tick()  # the next */5 run while it is up: returns at once, starts nothing
        assert again.wait(timeout=20) == 1 and read_pid(pidfile) == pid
        os.kill(pid, signal.SIGKILL)  # a crash
        first.wait(timeout=20)
        assert read_pid(pidfile) == pid  # stale now
        restarted = tick()
        new_pid = wait_serving(pidfile, port, not_pid=pid)
        subprocess.run(["/bin/sh", "-c", stop.group(0)], env=env, check=True, timeout=20)
        assert restarted.wait(timeout=30) == 0
        assert not pidfile.exists() and new_pid != pid
    finally:
        for r in runs:
            if r.poll() is None:
                os.killpg(r.pid, signal.SIGKILL)
                r.wait()
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events.count("serving") == 2 and events[-1] == "stopping", events

"""The everyday commands as real subprocesses on the ``local`` runtime: one owner per state
dir, ``logs``, ``cancel``, ``retry``, failure details, ``--json``, progress that scales, and the
webhook wait at the end of ``run``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import Cli, no_traceback, table_rows

from conftest import REPO, Receiver


@pytest.fixture()
def cli(tmp_path: Path) -> Cli:
    (tmp_path / "clusters").mkdir()
    return Cli(tmp_path / "state", tmp_path / "clusters", tmp_path)


SLOW = """\
name: slow
spec:
  runtime: local
  activities:
    - name: nap
      run: sleep {nap}
    - name: after
      run: echo after
      dependsOn: [nap]
"""

QUICK = """\
name: quick
spec:
  runtime: local
  activities:
    - name: one
      run: echo one
"""


def popen(cli: Cli, *args: str | Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AKOBRIDGE_") and k not in ("COLUMNS", "LINES")}
    env.update(PYTHONIOENCODING="utf-8", COLUMNS="200")
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "--state-dir", str(cli.state), "--clusters-dir",
         str(cli.clusters), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def wait_until(cond: object, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or cond}")


def activity_states(cli: Cli, wf_id: int) -> dict[str, str]:
    import sqlite3
    from contextlib import closing

    if not (cli.state / "akobridge.db").exists():
        return {}
    try:  # the run may have created the file but not yet its tables
        with closing(sqlite3.connect(f"file:{cli.state / 'akobridge.db'}?mode=ro",
                                     uri=True)) as db:
            return dict(db.execute("SELECT name, state FROM activities WHERE workflow_id=?",
                                   (wf_id,)).fetchall())
    except sqlite3.OperationalError:
        return {}


def attempts_of(cli: Cli, wf_id: int, name: str) -> list[tuple[int, str | None, str]]:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(f"file:{cli.state / 'akobridge.db'}?mode=ro", uri=True)) as db:
        return db.execute(
            "SELECT t.number, t.job_id, t.state FROM attempts t JOIN activities a"
            " ON a.id=t.activity_id WHERE a.workflow_id=? AND a.name=? ORDER BY t.number",
            (wf_id, name)).fetchall()


def started(cli: Cli, wf_id: int, name: str) -> bool:
    return activity_states(cli, wf_id).get(name) == "RUNNING"


def pid_alive(job_id: str) -> bool:
    pid = int(job_id.removeprefix("local-"))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


# --- one owner per state dir ------------------------------------------------------------------


def test_a_second_run_on_the_same_state_dir_is_refused_naming_the_owner(cli: Cli) -> None:
    first = popen(cli, "run", cli.write("slow.yaml", SLOW.format(nap=10)), "--webhook-wait", "0")
    try:
        wait_until(lambda: (cli.state / "owner.json").exists() and cli.workflows(),
                   what="the first run to own the state dir")
        second = cli("run", cli.write("quick.yaml", QUICK))
        assert second.returncode == 2, second.stderr
        no_traceback(second)
        assert f"pid {first.pid}" in second.stderr, second.stderr
        assert "in use by" in second.stderr
        assert cli.workflows() == [(1, "slow", "RUNNING")]  # the second stored nothing
        for args in (["resume"], ["retry", "1"]):
            res = cli(*args)
            assert res.returncode == 2 and f"pid {first.pid}" in res.stderr, (args, res.stderr)
            no_traceback(res)
        assert first.wait(timeout=30) == 0, first.stderr
    finally:
        first.kill()
        first.wait()
    assert cli.workflows() == [(1, "slow", "COMPLETED")]
    assert not (cli.state / "owner.json").exists()


def test_run_follows_only_its_workflow_and_resume_follows_the_others(cli: Cli) -> None:
    first = popen(cli, "run", cli.write("slow.yaml", SLOW.format(nap=2)), "--webhook-wait", "0")
    wait_until(lambda: started(cli, 1, "nap"), what="nap to run")
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=30)
    assert first.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr

    res = cli("run", cli.write("quick.yaml", QUICK), "--webhook-wait", "0", columns=200)
    assert res.returncode == 0, res.stderr
    assert list(table_rows(res.stdout)) == ["one"]  # only its own workflow is shown...
    time.sleep(2.5)  # ...and driven: nap has ended by now, but nobody recorded it
    assert cli.workflows() == [(1, "slow", "RUNNING"), (2, "quick", "COMPLETED")]
    assert attempts_of(cli, 1, "after") == []

    res = cli("resume", "--webhook-wait", "0", columns=200)
    assert res.returncode == 0, res.stderr
    assert cli.workflows() == [(1, "slow", "COMPLETED"), (2, "quick", "COMPLETED")]
    assert [n for n, *_ in attempts_of(cli, 1, "nap")] == [1]  # not run twice


# --- logs -------------------------------------------------------------------------------------

CHATTY = """\
name: chatty
spec:
  runtime: local
  activities:
    - name: ticker
      run: |
        for i in 1 2 3 4 5 6; do echo "tick $i"; echo "warn $i" >&2; sleep 0.3; done
    - name: boom
      run: |
        echo "about to fail"
        for i in 1 2 3 4 5 6 7; do echo "err line $i" >&2; done
        exit 7
"""


def test_logs_print_and_follow_a_jobs_output(cli: Cli) -> None:
    run = popen(cli, "run", cli.write("chatty.yaml", CHATTY), "--webhook-wait", "0")
    try:
        wait_until(lambda: cli.workflows(), what="the workflow to be stored")
        follow = cli("logs", "1", "ticker", "-f", timeout=60)  # returns when ticker ends
        assert follow.returncode == 0, follow.stderr
        assert follow.stdout == "".join(f"tick {i}\n" for i in range(1, 7))
        assert run.wait(timeout=60) == 1
    finally:
        run.kill()
        run.wait()
    err = cli("logs", "1", "ticker", "--err")
    assert err.returncode == 0 and err.stdout == "".join(f"warn {i}\n" for i in range(1, 7))
    out = cli("logs", "1", "boom", "--attempt", "1")
    assert out.returncode == 0 and out.stdout == "about to fail\n"
    for args, message in [
        (["logs", "1", "boom", "--attempt", "2"], "has no attempt 2 (attempts: 1)"),
        (["logs", "1", "nosuch"], "no activity 'nosuch' in workflow 1 (activities: ticker, "
                                  "boom)"),
        (["logs", "7", "boom"], "no workflow with id 7"),
    ]:
        res = cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert message in res.stderr, res.stderr
        no_traceback(res)


# --- failure details, status --json, artifacts --json -----------------------------------------


def test_failure_details_and_json_output(cli: Cli) -> None:
    res = cli("run", cli.write("chatty.yaml", CHATTY), "--webhook-wait", "0", columns=200)
    assert res.returncode == 1, res.stderr
    lines = res.stdout.splitlines()
    head = lines.index("✗ boom: FAILED (exit code 7, job " + table_rows(res.stdout)["boom"][4]
                       + ", attempt 1)")
    jobdir = lines[head + 1].removeprefix("  job dir: ")
    assert lines[head + 1].startswith("  job dir: ") and Path(jobdir, "local.err").exists()
    assert lines[head + 2] == "  last lines of stderr:"
    assert lines[head + 3:head + 8] == [f"  │ err line {i}" for i in range(3, 8)]  # the tail
    assert lines[-1].startswith("workflow #1 chatty: FAILED (1 done · 1 failed) in ")

    status = cli("status", "1", columns=200)
    assert status.returncode == 0, status.stderr
    assert "  │ err line 7" in status.stdout and f"  job dir: {jobdir}" in status.stdout

    listing = cli("status", "--json")
    assert listing.returncode == 0, listing.stderr
    [wf] = json.loads(listing.stdout)
    assert (wf["id"], wf["name"], wf["state"]) == (1, "chatty", "FAILED")

    one = json.loads(cli("status", "1", "--json").stdout)
    assert one["counts"]["done"] == 1 and one["counts"]["failed"] == 1
    acts = {a["name"]: a for a in one["activities"]}
    boom = acts["boom"]
    assert (boom["state"], boom["exit_code"]) == ("FAILED", 7)
    assert boom["stderr_tail"] == [f"err line {i}" for i in range(3, 8)]
    assert boom["attempts"][0]["jobdir"] == jobdir and boom["attempts"][0]["exit_code"] == 7
    assert acts["ticker"]["stderr_tail"] is None and acts["ticker"]["duration_s"] > 1

    arts = cli("artifacts", "1", "--json")
    assert arts.returncode == 0, arts.stderr
    paths = {a["path"] for a in json.loads(arts.stdout)}
    assert f"{jobdir}/local.err" in paths


# --- retry, cancel ----------------------------------------------------------------------------

FLAKY = """\
name: flaky
spec:
  runtime: local
  activities:
    - name: first
      run: echo first >> {log}
    - name: shaky
      run: |
        echo shaky >> {log}
        test -e {flag}
      dependsOn: [first]
    - name: last
      run: echo last >> {log}
      dependsOn: [shaky]
"""


def test_retry_reruns_only_what_did_not_complete(cli: Cli) -> None:
    log, flag = cli.tmp / "ran.log", cli.tmp / "flag"
    wf = cli.write("flaky.yaml", FLAKY.format(log=log, flag=flag))
    res = cli("run", wf, "--webhook-wait", "0", columns=200)
    assert res.returncode == 1, res.stderr
    assert {n: r[1] for n, r in table_rows(res.stdout).items()} == {
        "first": "COMPLETED", "shaky": "FAILED", "last": "SKIPPED"}
    first_job = table_rows(res.stdout)["first"][4]

    flag.touch()
    again = cli("retry", "1", "--webhook-wait", "0", columns=200)
    assert again.returncode == 0, again.stderr
    assert "retrying workflow #1 flaky: shaky, last" in again.stderr
    rows = table_rows(again.stdout)
    assert {n: (r[1], r[5]) for n, r in rows.items()} == {
        "first": ("COMPLETED", "1"), "shaky": ("COMPLETED", "2"), "last": ("COMPLETED", "1")}
    assert rows["first"][4] == first_job  # kept, not run again
    assert log.read_text().splitlines() == ["first", "shaky", "shaky", "last"]

    for args, message in [(["retry", "1"], "nothing to retry: every activity of workflow 1"),
                          (["retry", "5"], "no workflow with id 5")]:
        res = cli(*args)
        assert res.returncode == 2, res.stderr
        assert message in res.stderr, res.stderr
        no_traceback(res)


TWO_NAPS = """\
name: naps
spec:
  runtime: local
  webhooks:
    - name: rec
      url: {url}
  activities:
    - name: nap-a
      run: sleep 60
    - name: nap-b
      run: sleep 60
    - name: after-a
      run: echo after
      dependsOn: [nap-a]
"""


def test_cancel_without_an_owner_stops_the_jobs_and_sends_webhooks(
        cli: Cli, receiver: Receiver) -> None:
    run = popen(cli, "run", cli.write("naps.yaml", TWO_NAPS.format(url=receiver.url)),
                "--webhook-wait", "0")
    wait_until(lambda: started(cli, 1, "nap-a") and started(cli, 1, "nap-b"),
               what="both naps to run")
    run.send_signal(signal.SIGINT)  # leaves the jobs running and nobody owning the state dir
    assert run.wait(timeout=30) == 130
    [(_, job_a, _)] = attempts_of(cli, 1, "nap-a")
    [(_, job_b, _)] = attempts_of(cli, 1, "nap-b")
    assert job_a and job_b and pid_alive(job_a) and pid_alive(job_b)

    res = cli("cancel", "1", "nap-a", "--webhook-wait", "10", columns=200)
    assert res.returncode == 0, res.stderr
    no_traceback(res)
    rows = table_rows(res.stdout)
    assert list(rows) == ["nap-a"] and rows["nap-a"][1] == "CANCELLED"
    assert "`akobridge resume 1` runs its other activities" in res.stdout
    wait_until(lambda: not pid_alive(job_a), timeout=10, what="nap-a's process to end")
    assert pid_alive(job_b)  # only what was asked
    states = activity_states(cli, 1)
    assert states["nap-a"] == "CANCELLED" and states["nap-b"] == "RUNNING"
    assert states["after-a"] in ("PENDING", "SKIPPED")  # nothing new started
    assert attempts_of(cli, 1, "after-a") == []
    got = receiver.wait_for(1, timeout=10)
    assert [(r.body["data"]["Name"], r.body["data"]["State"]) for r in got][:1] == [
        ("nap-a", "CANCELLED")]

    res = cli("cancel", "1", "--webhook-wait", "10", columns=200)
    assert res.returncode == 0, res.stderr
    assert table_rows(res.stdout)["nap-b"][1] == "CANCELLED"
    wait_until(lambda: not pid_alive(job_b), timeout=10, what="nap-b's process to end")
    assert cli.workflows()[0][2] != "RUNNING"
    assert receiver.wait_for(4, timeout=10)[-1].body["type"] == "WORKFLOW_DONE"

    again = cli("cancel", "1")
    assert again.returncode == 0 and "nothing to cancel" in again.stdout


def test_cancel_while_a_run_owns_the_state_dir(cli: Cli) -> None:
    run = popen(cli, "run", cli.write("naps.yaml", TWO_NAPS.format(url="http://127.0.0.1:9/")),
                "--webhook-wait", "0")
    try:
        wait_until(lambda: started(cli, 1, "nap-a") and started(cli, 1, "nap-b"),
                   what="both naps to run")
        res = cli("cancel", "1")
        assert res.returncode == 0, res.stderr
        assert f"pid {run.pid}" in res.stdout and "nap-a, nap-b, after-a" in res.stdout
        out, _ = run.communicate(timeout=30)
        assert run.returncode == 1
        assert {n: r[1] for n, r in table_rows(out).items()} == {
            "nap-a": "CANCELLED", "nap-b": "CANCELLED", "after-a": "CANCELLED"}
    finally:
        run.kill()
        run.wait()


# --- progress that scales ---------------------------------------------------------------------


def test_a_large_workflow_ends_with_a_summary_not_every_row(cli: Cli) -> None:
    steps = "".join(f"    - name: s{i:02d}\n      run: 'true'\n" for i in range(40))
    steps += "    - name: bad\n      run: 'echo nope >&2; exit 4'\n"
    wf = cli.write("many.yaml", f"name: many\nspec:\n  runtime: local\n  activities:\n{steps}")
    res = cli("run", wf, "--webhook-wait", "0", columns=200)
    assert res.returncode == 1, res.stderr
    assert list(table_rows(res.stdout)) == ["bad"]  # only what did not complete
    assert "  │ nope" in res.stdout
    assert res.stdout.splitlines()[-1].startswith("workflow #1 many: FAILED (40 done · 1 failed)")


# --- webhooks at the end of run ---------------------------------------------------------------


@pytest.fixture()
def black_hole() -> Iterator[str]:
    """A URL whose server accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    stop.set()
    thread.join()
    for c in conns:
        c.close()
    sock.close()


def two_hooks(cli: Cli, *urls: str) -> Path:
    hooks = "".join(f"    - name: h{i}\n      url: {u}\n" for i, u in enumerate(urls))
    return cli.write("hooks.yaml", QUICK.replace("  runtime: local\n",
                                                 f"  runtime: local\n  webhooks:\n{hooks}"))


def test_a_black_holed_webhook_does_not_delay_the_others_and_run_says_what_it_waits_for(
        cli: Cli, receiver: Receiver, black_hole: str) -> None:
    t0 = time.monotonic()
    res = cli("run", two_hooks(cli, black_hole, receiver.url), "--webhook-wait", "4",
              columns=200)
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert [r.body["type"] for r in receiver.requests] == ["ACTIVITY_COMPLETED",
                                                           "WORKFLOW_DONE"]
    port = black_hole.split("/")[2]
    assert f"waiting up to 4 s for 2 webhook deliveries to {port}…" in res.stderr, res.stderr
    assert f"2 webhook deliveries to {port} still pending; `akobridge resume`" in res.stderr
    assert res.stdout.splitlines()[-1].startswith("workflow #1 quick: COMPLETED")
    assert took < 12, took


def test_ctrl_c_during_the_webhook_wait_still_prints_the_final_table(
        cli: Cli, black_hole: str) -> None:
    run = popen(cli, "run", two_hooks(cli, black_hole), "--webhook-wait", "60")
    assert run.stderr is not None
    seen = []
    for line in run.stderr:
        seen.append(line)
        if "waiting up to 60 s" in line:
            break
    run.send_signal(signal.SIGINT)
    out, rest = run.communicate(timeout=20)
    stderr = "".join(seen) + rest
    assert run.returncode == 0, stderr  # the workflow completed; only the wait was cut
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert "stopped waiting for webhooks" in stderr
    assert "still pending; `akobridge resume`" in stderr
    assert table_rows(out)["one"][1] == "COMPLETED"
    assert out.splitlines()[-1].startswith("workflow #1 quick: COMPLETED")


def test_resume_delivers_the_pending_webhooks(cli: Cli) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there during the run
    url = f"http://127.0.0.1:{port}/hook"
    res = cli("run", two_hooks(cli, url), "--webhook-wait", "0")
    assert res.returncode == 0, res.stderr
    assert f"2 webhook deliveries to 127.0.0.1:{port} still pending" in res.stderr

    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    got: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.append(json.loads(body)["type"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        again = cli("resume", "--webhook-wait", "10")
    finally:
        server.shutdown()
        server.server_close()
    assert again.returncode == 0, again.stderr
    assert f"delivering 2 pending webhook deliveries to 127.0.0.1:{port}" in again.stderr
    assert "delivered 2 of 2 webhook deliveries" in again.stdout
    assert got == ["ACTIVITY_COMPLETED", "WORKFLOW_DONE"]
    res = cli("resume")
    assert "nothing to resume" in res.stdout


# --- log lines and the live view on a terminal ------------------------------------------------


class Terminal:
    """Just enough of a VT100 to replay what rich's live view writes: printable characters with
    line wrap, CR, LF, cursor up/down/column, erase line; colours and modes ignored."""

    def __init__(self, cols: int) -> None:
        self.cols = cols
        self.rows: list[list[str]] = [[]]
        self.wrapped = [False]  # row i continues row i-1 (the terminal wrapped it)
        self.row = self.col = 0

    def _goto(self, row: int) -> None:
        self.row = max(0, row)
        while len(self.rows) <= self.row:
            self.rows.append([])
            self.wrapped.append(False)

    def feed(self, text: str) -> None:
        import re

        pos = 0
        tokens = r"\x1b\[([?0-9;]*)([A-Za-z])|\x1b\][^\x07]*\x07|\x1b.|[\r\n]|[^\x1b\r\n]+"
        for m in re.finditer(tokens, text):
            token = m.group(0)
            if m.group(2):
                arg = m.group(1).lstrip("?")
                n = int(arg) if arg.isdigit() else 1
                final = m.group(2)
                if final == "A":
                    self._goto(self.row - n)
                elif final == "B":
                    self._goto(self.row + n)
                elif final == "G":
                    self.col = n - 1
                elif final == "K":
                    line = self.rows[self.row]
                    if arg == "2":
                        self.rows[self.row] = []
                        self.wrapped[self.row] = False
                    else:
                        del line[self.col:]
            elif token == "\r":
                self.col = 0
            elif token == "\n":
                self._goto(self.row + 1)
                self.col = 0
            elif not token.startswith("\x1b"):
                for ch in token:
                    if self.col >= self.cols:
                        self._goto(self.row + 1)
                        self.rows[self.row] = []
                        self.wrapped[self.row] = True
                        self.col = 0
                    line = self.rows[self.row]
                    line.extend(" " * (self.col - len(line)))
                    if self.col < len(line):
                        line[self.col] = ch
                    else:
                        line.append(ch)
                    self.col += 1
            pos = m.end()
        assert pos == len(text) or not text[pos:].strip()

    def lines(self) -> list[str]:
        """The logical lines on screen (rows the terminal wrapped are joined again)."""
        out: list[str] = []
        for row, wrapped in zip(self.rows, self.wrapped, strict=True):
            text = "".join(row)
            if wrapped and out:
                out[-1] += text
            else:
                out.append(text.rstrip())
        return out


def run_on_a_terminal(cli: Cli, *args: str | Path, cols: int = 80) -> str:
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, cols, 0, 0))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AKOBRIDGE_") and k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env.update(TERM="xterm-256color", PYTHONIOENCODING="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "--state-dir", str(cli.state), "--clusters-dir",
         str(cli.clusters), *map(str, args)],
        stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode("utf-8", errors="replace")


STAGGERED = "name: staggered\nspec:\n  runtime: local\n  activities:\n" + "".join(
    f"    - name: step-{i}\n      run: sleep {0.3 * i:.1f}\n" for i in range(1, 7))


def test_log_lines_on_a_terminal_appear_whole_above_the_live_view(cli: Cli) -> None:
    import re

    raw = run_on_a_terminal(cli, "-v", "run", cli.write("staggered.yaml", STAGGERED),
                            "--webhook-wait", "0", cols=80)
    plain = re.sub(r"\x1b\[[?0-9;]*[A-Za-z]", "", raw)
    emitted = plain.count("job state")
    assert emitted >= 6, plain  # info lines were logged while the live view was up
    screen = Terminal(80)
    screen.feed(raw)
    shown = [line for line in screen.lines() if "job state" in line]
    assert len(shown) == emitted, "\n".join(screen.lines())  # none overwritten by the view
    for line in shown:  # each one whole on its line: neither cut nor wrapped by rich
        assert re.fullmatch(r"\S+ \[info\s*\] job state\s+.*token=akb-\S+", line), line
        assert len(line) > 80  # longer than the terminal: the test means something
    lines = screen.lines()
    assert any(line.startswith("workflow #1 staggered: COMPLETED") for line in lines)
    assert any(line.startswith("workflow 'staggered' is #1 on local (state: ")
               and line.endswith("akobridge.db)") for line in lines), lines  # not wrapped

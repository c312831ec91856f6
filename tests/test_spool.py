"""Spool-directory intake (bridge/spool.py) with a real store and a real Bridge on the local
runtime: good files to accepted/<id>-<name>, bad ones to rejected/ with a .error naming the
problem, half-written and foreign files left alone, symlinks never followed, and nothing lost
or doubled when the intake is killed with SIGKILL at random moments."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.metrics import REGISTRY
from bridge.runner import Bridge
from bridge.spool import SpoolError, SpoolIntake, bridge_submitter
from bridge.store import Store
from conftest import REPO
from runtimes.config import Clusters

HELLO = (REPO / "examples" / "hello.yaml").read_text()
BAD_YAML = "name: broken\nspec: [unclosed\n"
BAD_SPEC = ("name: bad\nspec:\n  runtime: local\n  activities:\n    - name: a\n"
            "      run: echo\n      cpuLimit: lots\n")
MARS = "name: far\nspec:\n  runtime: mars\n  activities:\n    - name: a\n      run: echo\n"


def named(name: str, text: str = HELLO) -> str:
    return text.replace("name: hello", f"name: {name}", 1)


class Crash(BaseException):
    """Stands for the process dying at this instant (not an Exception: nothing catches it)."""


@pytest.fixture()
def bridge(tmp_path: Path) -> Iterator[Bridge]:
    state = tmp_path / "state"
    store = Store(state / "akobridge.db")
    made = Bridge(store, Clusters([]), state)
    yield made
    made.close()
    store.close()


@pytest.fixture()
def spool(tmp_path: Path, bridge: Bridge) -> Iterator[Callable[..., SpoolIntake]]:
    """``make(**options)``: an intake on ``tmp_path/spool`` submitting to ``bridge`` (settle
    time 0 unless given); every one made is closed at the end."""
    made: list[SpoolIntake] = []

    def make(submit: Callable[[str, str, str], int] | None = None, **kw: Any) -> SpoolIntake:
        kw.setdefault("settle_s", 0)
        intake = SpoolIntake(tmp_path / "spool", submit or bridge_submitter(bridge), **kw)
        made.append(intake)
        return intake

    yield make
    for intake in made:
        intake.close()


def drop(intake: SpoolIntake, name: str, text: str, age_s: float = 10.0) -> Path:
    """Write-then-rename into incoming/, the mtime ``age_s`` in the past."""
    tmp = intake.incoming / f".{name}.tmp"
    tmp.write_text(text)
    if age_s:
        past = time.time() - age_s
        os.utime(tmp, (past, past))
    target = intake.incoming / name
    tmp.rename(target)
    return target


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def accepted_count() -> float:
    return REGISTRY.get_sample_value("akobridge_workflows_accepted_total",
                                     {"intake": "spool"}) or 0.0


def workflow_count(store: Store) -> int:
    return int(store.db.execute("SELECT COUNT(*) FROM workflows").fetchone()[0])


# -- one file at a time ------------------------------------------------------------------------

def test_good_file_accepted_with_its_workflow_id(spool: Callable[..., SpoolIntake],
                                                 bridge: Bridge) -> None:
    intake = spool()
    drop(intake, "hello.yaml", HELLO)
    before = accepted_count()
    [outcome] = intake.scan_once()
    assert outcome.status == "accepted" and outcome.workflow_id is not None
    wf_id = outcome.workflow_id
    assert outcome.path == intake.accepted / f"{wf_id}-hello.yaml"
    assert outcome.path.read_text() == HELLO
    assert listing(intake.incoming) == [] and listing(intake.rejected) == []
    row = bridge.store.workflow(wf_id)
    assert row is not None and row.name == "hello" and row.runtime == "local"
    assert [a.name for a in bridge.store.activities(wf_id)] == [
        "greet", "count-words", "count-lines", "summary"]
    sha = hashlib.sha256(HELLO.encode()).hexdigest()
    [key] = [r[0] for r in bridge.store.db.execute("SELECT intake_key FROM workflows")]
    assert key.startswith(f"spool:hello.yaml:{sha}:")
    assert bridge.store.workflow_by_intake_key(key) == wf_id
    assert accepted_count() == before + 1
    assert intake.scan_once() == []


@pytest.mark.parametrize(("text", "expected"), [
    (BAD_YAML, "line 3: YAML syntax error"),
    (BAD_SPEC, "spec.activities[0].cpuLimit (line 7): not a CPU quantity"),
    (MARS, "spec.runtime: no cluster config named 'mars'"),
    ("name: [a, b]\n", "name (line 1): expected a string"),
    ("", "the document is empty"),
], ids=["bad-yaml", "invalid-spec", "unknown-runtime", "wrong-type", "empty"])
def test_bad_file_rejected_with_the_reason(spool: Callable[..., SpoolIntake], bridge: Bridge,
                                           text: str, expected: str) -> None:
    intake = spool()
    drop(intake, "wf.yml", text)
    [outcome] = intake.scan_once()
    assert outcome.status == "rejected" and expected in (outcome.reason or "")
    assert listing(intake.rejected) == ["wf.yml", "wf.yml.error"]
    assert (intake.rejected / "wf.yml").read_text() == text
    error = (intake.rejected / "wf.yml.error").read_text()
    assert error.startswith(expected) or f"\n{expected}" in error or expected in error
    assert "\nfile: wf.yml\n" in error and "\nrejected at: 20" in error
    assert listing(intake.incoming) == [] and listing(intake.accepted) == []
    assert workflow_count(bridge.store) == 0


def test_not_utf8_and_odd_names_rejected(spool: Callable[..., SpoolIntake]) -> None:
    intake = spool()
    (intake.incoming / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    (intake.incoming / "two\nlines.yaml").write_text(HELLO)
    by_name = {o.name: o for o in intake.scan_once()}
    assert by_name["latin1.yaml"].status == "rejected"
    assert "is not UTF-8 text (byte 9" in (by_name["latin1.yaml"].reason or "")
    assert by_name["two\nlines.yaml"].status == "rejected"
    error = (intake.rejected / "two\nlines.yaml.error").read_text()
    assert "control characters" in error and "\nfile: two\\nlines.yaml\n" in error


def test_half_written_and_foreign_files_left_alone(spool: Callable[..., SpoolIntake]) -> None:
    intake = spool()
    names = [".wf.yaml.tmp", "wf.yaml.tmp", "wf.yaml.part", ".hidden.yaml", "notes.txt",
             "wf.json"]
    for name in names:
        (intake.incoming / name).write_text(HELLO)
    (intake.incoming / "sub.yaml").mkdir()
    (intake.incoming / "sub.yaml" / "inner.yaml").write_text(HELLO)
    assert intake.scan_once() == []
    assert listing(intake.incoming) == sorted([*names, "sub.yaml"])
    assert listing(intake.incoming / "sub.yaml") == ["inner.yaml"]
    assert listing(intake.accepted) == [] and listing(intake.rejected) == []


def test_young_file_waits_for_the_settle_time(spool: Callable[..., SpoolIntake]) -> None:
    intake = spool(settle_s=0.3)
    path = drop(intake, "fresh.yaml", HELLO, age_s=0)
    assert intake.scan_once() == [] and path.exists()
    time.sleep(0.35)  # old enough by its mtime now
    [outcome] = intake.scan_once()
    assert outcome.status == "accepted"
    # an mtime in the future (a skewed NFS clock): taken once unchanged for the settle time
    future = drop(intake, "future.yaml", named("future"), age_s=-3600)
    assert intake.scan_once() == []
    time.sleep(0.15)
    assert intake.scan_once() == []
    time.sleep(0.2)
    [outcome] = intake.scan_once()
    assert outcome.status == "accepted" and not future.exists()


_OPENS: list[str] | None = None
_HOOKED = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _OPENS is not None and event == "open" and isinstance(args[0], str | bytes | Path):
        _OPENS.append(os.fsdecode(args[0]))


@pytest.fixture()
def opened() -> Iterator[list[str]]:
    """The paths opened while the test runs (an audit hook)."""
    global _OPENS, _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED = True
    _OPENS = []
    yield _OPENS
    _OPENS = None


def test_symlink_rejected_without_reading_its_target(
        spool: Callable[..., SpoolIntake], tmp_path: Path, bridge: Bridge,
        opened: list[str]) -> None:
    intake = spool()
    secret = tmp_path / "secret.yaml"
    secret.write_text(named("stolen"))  # a valid workflow: followed, it would be accepted
    (intake.incoming / "wf.yaml").symlink_to(secret)
    (intake.incoming / "dir-link.yaml").symlink_to(tmp_path)
    opened.clear()
    outcomes = {o.name: o for o in intake.scan_once()}
    during_scan = list(opened)
    assert {o.status for o in outcomes.values()} == {"rejected"}
    assert "symbolic link" in (outcomes["wf.yaml"].reason or "")
    assert (intake.rejected / "wf.yaml").is_symlink()  # the link moved, not its target
    assert secret.read_text() == named("stolen")
    assert "symbolic link" in (intake.rejected / "wf.yaml.error").read_text()
    assert "rejected/wf.yaml.error" not in during_scan  # the hook sees the spool's opens
    assert ".wf.yaml.error.tmp" in during_scan
    assert not [p for p in during_scan if "secret" in p or p in ("wf.yaml", "dir-link.yaml")]
    assert workflow_count(bridge.store) == 0


def test_file_swapped_for_a_symlink_after_listing_is_not_followed(
        spool: Callable[..., SpoolIntake], tmp_path: Path, bridge: Bridge,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The race: a regular file at lstat time, a symlink when opened (O_NOFOLLOW)."""
    intake = spool()
    secret = tmp_path / "secret.yaml"
    secret.write_text(named("stolen"))
    drop(intake, "race.yaml", HELLO)
    real_stat = os.stat
    swapped: list[bool] = []

    def racing_stat(path: Any, *args: Any, **kw: Any) -> os.stat_result:
        st = real_stat(path, *args, **kw)
        if path == "race.yaml" and not swapped:
            swapped.append(True)
            (intake.incoming / "race.yaml").unlink()
            (intake.incoming / "race.yaml").symlink_to(secret)
        return st

    monkeypatch.setattr(os, "stat", racing_stat)
    [outcome] = intake.scan_once()
    assert swapped and outcome.status == "rejected"
    assert "symbolic link" in (outcome.reason or "")
    assert workflow_count(bridge.store) == 0


def test_oversize_and_hard_linked_files_rejected(spool: Callable[..., SpoolIntake],
                                                 tmp_path: Path, bridge: Bridge) -> None:
    intake = spool(max_bytes=200)
    drop(intake, "big.yaml", HELLO + "#" * 300)
    other = tmp_path / "elsewhere.yaml"
    other.write_text("name: x\n")
    os.link(other, intake.incoming / "linked.yaml")
    outcomes = {o.name: o for o in intake.scan_once()}
    assert outcomes["big.yaml"].status == "rejected"
    assert f"is {len(HELLO) + 300} bytes, over the spool's limit of 200 bytes" in (
        intake.rejected / "big.yaml.error").read_text()
    assert outcomes["linked.yaml"].status == "rejected"
    assert "has 2 hard links" in (outcomes["linked.yaml"].reason or "")
    assert workflow_count(bridge.store) == 0


@pytest.mark.parametrize("error", [
    sqlite3.OperationalError("database is locked"),
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("a bug"),
], ids=["sqlite-locked", "disk-full", "bug"])
def test_other_errors_leave_the_file_for_the_next_scan(
        spool: Callable[..., SpoolIntake], bridge: Bridge, error: Exception) -> None:
    real = bridge_submitter(bridge)
    failures = [error, error]

    def flaky(text: str, name: str, key: str) -> int:
        if failures:
            raise failures.pop()
        return real(text, name, key)

    intake = spool(flaky)
    path = drop(intake, "hello.yaml", HELLO)
    for _ in range(2):
        [outcome] = intake.scan_once()
        assert outcome.status == "deferred" and str(error) in (outcome.reason or "")
        assert path.exists() and listing(intake.rejected) == [] and listing(
            intake.accepted) == []
    [outcome] = intake.scan_once()
    assert outcome.status == "accepted" and workflow_count(bridge.store) == 1


def test_a_custom_rejection_type(spool: Callable[..., SpoolIntake]) -> None:
    class PolicyError(Exception):
        pass

    def refuse(text: str, name: str, key: str) -> int:
        raise PolicyError("webhooks[0].url: 169.254.169.254 is a metadata address")

    intake = spool(refuse, rejections=(ValueError, PolicyError))
    drop(intake, "hook.yaml", HELLO)
    [outcome] = intake.scan_once()
    assert outcome.status == "rejected"
    assert "metadata address" in (intake.rejected / "hook.yaml.error").read_text()


# -- the same content, names taken, crashes in-process ---------------------------------------

def test_same_content_under_two_names_is_two_workflows(spool: Callable[..., SpoolIntake],
                                                       bridge: Bridge) -> None:
    intake = spool()
    drop(intake, "a.yaml", HELLO)
    drop(intake, "b.yaml", HELLO)
    ids = {o.name: o.workflow_id for o in intake.scan_once()}
    assert len(set(ids.values())) == 2 and workflow_count(bridge.store) == 2
    assert listing(intake.accepted) == sorted(f"{i}-{n}" for n, i in ids.items())


def test_same_file_dropped_again_later_is_a_new_workflow(spool: Callable[..., SpoolIntake],
                                                         bridge: Bridge) -> None:
    """A cron job dropping the same nightly.yaml every night runs it every night."""
    intake = spool()
    drop(intake, "nightly.yaml", HELLO)
    [first] = intake.scan_once()
    drop(intake, "nightly.yaml", HELLO)
    [second] = intake.scan_once()
    assert first.workflow_id != second.workflow_id and workflow_count(bridge.store) == 2


def _crash_on_move(monkeypatch: pytest.MonkeyPatch, src: str, dst: str) -> None:
    real = os.replace

    def replace(a: Any, b: Any, **kw: Any) -> None:
        if a == src and b == dst:
            monkeypatch.setattr(os, "replace", real)
            raise Crash()
        real(a, b, **kw)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("use_key", [True, False], ids=["with-key", "control-without-key"])
def test_crash_between_commit_and_move_is_one_workflow(
        spool: Callable[..., SpoolIntake], bridge: Bridge, monkeypatch: pytest.MonkeyPatch,
        use_key: bool) -> None:
    """Killed after the commit, before the move: the next intake finds the stored workflow.
    The control run drops the key to show that this test would see the double."""
    real = bridge_submitter(bridge)

    def submit(text: str, name: str, key: str) -> int:
        return real(text, name, key if use_key else f"nokey-{time.monotonic_ns()}")

    first = spool(submit)
    drop(first, "hello.yaml", HELLO)
    _crash_on_move(monkeypatch, "hello.yaml", "1-hello.yaml")
    with pytest.raises(Crash):
        first.scan_once()
    assert listing(first.incoming) == ["hello.yaml"] and workflow_count(bridge.store) == 1
    first.close()  # the lock dies with the process
    [outcome] = spool(submit).scan_once()
    assert outcome.status == "accepted"
    if use_key:
        assert outcome.workflow_id == 1 and workflow_count(bridge.store) == 1
        assert listing(first.accepted) == ["1-hello.yaml"]
    else:
        assert workflow_count(bridge.store) == 2


def test_accepted_name_taken_gets_a_suffix(spool: Callable[..., SpoolIntake]) -> None:
    intake = spool()
    (intake.accepted / "1-hello.yaml").write_text("from an older state dir")
    drop(intake, "hello.yaml", HELLO)
    [outcome] = intake.scan_once()
    assert outcome.path == intake.accepted / "1-hello~2.yaml"
    assert (intake.accepted / "1-hello.yaml").read_text() == "from an older state dir"


def test_rejected_twice_under_one_name(spool: Callable[..., SpoolIntake]) -> None:
    intake = spool()
    drop(intake, "bad.yaml", BAD_YAML)
    intake.scan_once()
    drop(intake, "bad.yaml", BAD_SPEC)
    [outcome] = intake.scan_once()
    assert outcome.path == intake.rejected / "bad~2.yaml"
    assert listing(intake.rejected) == ["bad.yaml", "bad.yaml.error", "bad~2.yaml",
                                        "bad~2.yaml.error"]
    assert "cpuLimit" in (intake.rejected / "bad~2.yaml.error").read_text()


def test_crash_between_error_file_and_move_judged_again_in_place(
        spool: Callable[..., SpoolIntake], monkeypatch: pytest.MonkeyPatch) -> None:
    first = spool()
    drop(first, "bad.yaml", BAD_SPEC)
    _crash_on_move(monkeypatch, "bad.yaml", "bad.yaml")
    with pytest.raises(Crash):
        first.scan_once()
    assert listing(first.incoming) == ["bad.yaml"]
    assert listing(first.rejected) == ["bad.yaml.error"]
    first.close()
    [outcome] = spool().scan_once()
    assert outcome.status == "rejected" and outcome.path == first.rejected / "bad.yaml"
    assert listing(first.rejected) == ["bad.yaml", "bad.yaml.error"]


# -- the directories -----------------------------------------------------------------------------

def test_directories_created_private_and_unsafe_ones_refused(
        tmp_path: Path, bridge: Bridge) -> None:
    submit = bridge_submitter(bridge)
    root = tmp_path / "spool"
    with SpoolIntake(root, submit) as intake:
        for path in (root, intake.incoming, intake.accepted, intake.rejected):
            assert path.stat().st_mode & 0o777 == 0o700
        with pytest.raises(SpoolError, match="another akobridge process"):
            SpoolIntake(root, submit)
    root.chmod(0o777)
    with pytest.raises(SpoolError, match="without the sticky bit.*chmod o-w"):
        SpoolIntake(root, submit)
    root.chmod(0o700)
    (root / "incoming").chmod(0o1733)  # a drop box every user may write to
    SpoolIntake(root, submit).close()
    (root / "incoming").chmod(0o777)
    with pytest.raises(SpoolError, match="incoming: writable by every user"):
        SpoolIntake(root, submit)
    (root / "incoming").chmod(0o700)
    (root / "accepted").rmdir()
    (root / "accepted").symlink_to(tmp_path)
    with pytest.raises(SpoolError, match="accepted: must be a directory"):
        SpoolIntake(root, submit)


def test_run_loop_takes_files_until_stopped(tmp_path: Path, bridge: Bridge) -> None:
    # the loop's thread gets a store connection of its own, as the daemon's will
    store = Store(bridge.store.path, handed_over=True)
    own = Bridge(store, Clusters([]), bridge.state_dir)
    intake = SpoolIntake(tmp_path / "spool", bridge_submitter(own), settle_s=0)
    stop = threading.Event()
    loop = threading.Thread(target=intake.run, args=(stop, 0.02))
    loop.start()
    try:
        drop(intake, "hello.yaml", HELLO)
        deadline = time.monotonic() + 10
        while not listing(intake.accepted) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert listing(intake.accepted) == ["1-hello.yaml"]
    finally:
        stop.set()
        loop.join(5)
        intake.close()
        store.close()
    assert not loop.is_alive()


# -- SIGKILL at random moments ---------------------------------------------------------------

ZYGOTE = r"""
import os, sys, time, traceback
from pathlib import Path
from bridge import logs
from bridge.runner import Bridge
from bridge.spool import SpoolIntake, bridge_submitter
from bridge.store import Store
from runtimes.config import Clusters

logs.configure("WARNING", json=True)
spool, state, pause = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])

def say(*words):
    print(*words, flush=True)

def work():
    # a fresh process each time: nothing is open before the fork, only modules are imported
    say("PID", os.getpid())
    store = Store(state / "akobridge.db")
    submit = bridge_submitter(Bridge(store, Clusters([]), state))

    def marked(text, name, key):
        wf_id = submit(text, name, key)
        say("COMMITTED", name, wf_id)
        return wf_id

    real_replace = os.replace

    def slow_replace(src, dst, **kw):  # test hook: widen the windows the kills aim at
        if dst.endswith(".error"):
            real_replace(src, dst, **kw)
            say("ERROR-WRITTEN", dst[:-len(".error")])
            time.sleep(pause)
            return
        say("MOVING", src)
        time.sleep(pause)
        real_replace(src, dst, **kw)
        say("MOVED", src)

    os.replace = slow_replace
    intake = SpoolIntake(spool, marked, settle_s=0)
    say("READY")
    while intake.scan_once():
        pass
    say("DONE")

for _ in sys.stdin:  # one line: one run of the intake in a process of its own
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    say("EXIT", os.waitstatus_to_exitcode(status))
"""
PAUSE_S = 0.04


class Zygote:
    """A process that imports the bridge once, then forks a fresh intake process per run
    (starting an interpreter per kill would take most of the test's time); the marker
    lines of the runs are read by a thread."""

    def __init__(self, spool: Path, state: Path, stderr: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, str(spool), str(state), str(PAUSE_S)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO)
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.lines: list[str] = []
        """The lines of the current run."""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.strip())
        self._queue.put(None)

    def wait_for(self, prefix: str, timeout: float = 30.0) -> bool:
        """Until a line of this run starts with ``prefix``; False if the run ended first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if line is None:
                return False
            self.lines.append(line)
            if line.startswith(prefix):
                return True
            if line.startswith("EXIT"):
                return False

    def start(self) -> int:
        """Fork a run; its pid."""
        assert self.proc.stdin is not None
        self.lines = []
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.wait_for("PID"), self.lines
        return int(self.lines[-1].split()[1])

    def end(self, pid: int | None = None) -> int:
        """SIGKILL the run (if ``pid``), then its exit code."""
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not (self.lines and self.lines[-1].startswith("EXIT")):
            assert self.wait_for("EXIT"), self.lines
        return int(self.lines[-1].split()[1])

    def open_windows(self) -> dict[str, str]:
        """File → the window it was in when the run died (committed or .error written,
        not moved yet)."""
        open_: dict[str, str] = {}
        for line in self.lines:
            word, _, rest = line.partition(" ")
            name = rest.split(" ")[0]
            if word == "COMMITTED":
                open_[name] = "commit"
            elif word == "ERROR-WRITTEN":
                open_[name] = "error"
            elif word == "MOVED":
                open_.pop(name, None)
        return open_

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


def test_kill_9_at_random_moments_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """30 files (20 good, 10 bad); the intake process SIGKILLed at 16 random moments (some
    aimed at the windows between commit and move and between .error and move) and started
    again each time; then every file is where it belongs, exactly once."""
    seed = int(os.environ.get("AKB_SPOOL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    spool, state = tmp_path / "spool", tmp_path / "state"
    incoming = spool / "incoming"
    incoming.mkdir(parents=True, mode=0o700)
    kinds = ["good"] * 20 + ["bad-yaml"] * 4 + ["bad-spec"] * 3 + ["bad-runtime"] * 3
    rng.shuffle(kinds)  # taken by name: good and bad files interleaved
    texts = {"bad-yaml": BAD_YAML, "bad-spec": BAD_SPEC, "bad-runtime": MARS}
    expected = {"bad-yaml": "YAML syntax error", "bad-spec": "spec.activities[0].cpuLimit",
                "bad-runtime": "spec.runtime: no cluster config named 'mars'"}
    good, bad = {}, {}
    for i, kind in enumerate(kinds):
        if kind == "good":
            good[f"{i:02}-good.yaml"] = named(f"wf-{i:02}")
        else:
            bad[f"{i:02}-{kind}.yml"] = texts[kind] + f"# {i}\n"
    for name, text in {**good, **bad}.items():
        (incoming / name).write_text(text)
    (incoming / ".half.yaml.tmp").write_text("name: half")  # never taken
    modes = ["commit"] * 6 + ["error"] * 4 + ["time"] * 3 + ["startup"] * 3
    rng.shuffle(modes)
    kills, windows = 0, {"commit": 0, "error": 0}
    with (tmp_path / "child.err").open("w") as stderr:
        zygote = Zygote(spool, state, stderr)
        try:
            for mode in modes:
                left = set(listing(incoming))
                if mode == "error" and not left & set(bad):
                    mode = "commit"
                if mode == "commit" and not left & set(good):
                    mode = "error"
                pid = zygote.start()
                if mode == "startup":  # opening the store, migrating it, locking the spool
                    time.sleep(rng.uniform(0.0, 0.05))
                else:
                    prefix = {"commit": "COMMITTED", "error": "ERROR-WRITTEN",
                              "time": "READY"}[mode]
                    zygote.wait_for(prefix)
                    time.sleep(rng.uniform(0.0, 0.2 if mode == "time" else 0.75 * PAUSE_S))
                if zygote.end(pid) == -signal.SIGKILL:
                    kills += 1
                    for window in zygote.open_windows().values():
                        windows[window] += 1
            zygote.start()
            code = zygote.end()
            last = zygote.lines
        finally:
            zygote.close()
    detail = f"seed {seed}: {kills} kills, windows {windows}"
    print(detail)
    assert code == 0 and "DONE" in last, (detail, last, (tmp_path / "child.err").read_text())
    assert kills >= 10, detail
    assert windows["commit"] >= 3 and windows["error"] >= 1, detail

    assert listing(incoming) == [".half.yaml.tmp"], detail
    accepted = listing(spool / "accepted")
    assert len(accepted) == len(good), (detail, accepted)
    store = Store(state / "akobridge.db")
    try:
        rows = store.db.execute("SELECT id, name, intake_key FROM workflows").fetchall()
        assert len(rows) == len(good), (detail, [tuple(r) for r in rows])
        by_id = {r["id"]: r for r in rows}
        for name, text in good.items():
            [moved] = [a for a in accepted if a.split("-", 1)[1] == name]
            wf_id = int(moved.split("-", 1)[0])
            assert (spool / "accepted" / moved).read_text() == text
            assert by_id[wf_id]["name"] == f"wf-{name[:2]}"
            assert by_id[wf_id]["intake_key"].startswith(f"spool:{name}:")
    finally:
        store.close()
    rejected = listing(spool / "rejected")
    assert rejected == sorted([*bad, *(f"{n}.error" for n in bad)]), (detail, rejected)
    for name, text in bad.items():
        assert (spool / "rejected" / name).read_text() == text
        error = (spool / "rejected" / f"{name}.error").read_text()
        assert expected[name[3:-4]] in error, error


def test_the_documented_ways_to_drop_a_file(tmp_path: Path, bridge: Bridge) -> None:
    """docs/spool.md: its shell line and its Python drop() put a file that is taken."""
    doc = (REPO / "docs" / "spool.md").read_text()
    shell = doc.split("```bash\n", 1)[1].split("```", 1)[0]
    python = doc.split("```python\n", 1)[1].split("```", 1)[0]
    with SpoolIntake(tmp_path / "spool", bridge_submitter(bridge), settle_s=0) as intake:
        (tmp_path / "wf.yaml").write_text(named("by-shell"))
        subprocess.run(["bash", "-e", "-c", shell], cwd=tmp_path, check=True)
        namespace: dict[str, Any] = {}
        exec(compile(python, "docs/spool.md", "exec"), namespace)  # noqa: S102
        namespace["drop"](tmp_path / "spool", "py.yaml", named("by-python"))
        assert listing(intake.incoming) == ["py.yaml", "wf.yaml"]
        outcomes = intake.scan_once()
    assert [o.status for o in outcomes] == ["accepted", "accepted"]
    rows = [bridge.store.workflow(o.workflow_id or 0) for o in outcomes]
    assert {r.name for r in rows if r is not None} == {"by-shell", "by-python"}


def test_a_scan_takes_at_most_max_files(spool: Callable[..., SpoolIntake]) -> None:
    intake = spool(max_files=2)
    for i in range(5):
        drop(intake, f"{i}.yaml", named(f"wf-{i}"))
    assert [o.name for o in intake.scan_once()] == ["0.yaml", "1.yaml"]
    assert [o.name for o in intake.scan_once()] == ["2.yaml", "3.yaml"]
    assert [o.name for o in intake.scan_once()] == ["4.yaml"]


def test_a_durable_intake_syncs_its_commit_and_the_api_does_not(tmp_path: Path) -> None:
    """The daemon's spool submits with ``durable=True``: its file moves away right after the
    commit, so the commit must reach the disk first (a power cut, not just a kill)."""
    from bridge.service import Service
    from runtimes.config import Clusters

    store = Store(tmp_path / "state" / "akobridge.db")
    service = Service(Bridge(store, Clusters([]), tmp_path / "state"))
    text = "name: wf\nspec:\n  activities:\n    - name: a\n      run: 'true'\n"
    results: dict[str, int] = {}

    def submit(label: str, durable: bool) -> None:
        service.submit_text(text, intake="spool" if durable else "api", durable=durable)
        results[label] = service.store.db.execute("PRAGMA synchronous").fetchone()[0]

    for label, durable in (("spool", True), ("api", False)):  # each on a thread of its own
        worker = threading.Thread(target=submit, args=(label, durable))
        worker.start()
        worker.join()
    assert results == {"spool": 2, "api": 1}  # FULL, NORMAL
    assert workflow_count(store) == 2
    store.close()

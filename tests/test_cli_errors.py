"""Bad arguments and bad set-ups through every command: exit 2 and a message naming the
problem, never a traceback."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_cli import HELLO, Cli, no_traceback


@pytest.fixture()
def cli(tmp_path: Path) -> Cli:
    (tmp_path / "clusters").mkdir()
    return Cli(tmp_path / "state", tmp_path / "clusters", tmp_path)


HUGE = "99999999999999999999"

# (id, arguments, a fragment of the message); {nul}, {ctl}, {file}, {tmp} are filled in
CORPUS: list[tuple[str, list[str], str]] = [
    ("status-huge-id", ["status", HUGE], f"{HUGE} is not a workflow id"),
    ("status-zero-id", ["status", "0"], "0 is not a workflow id"),
    ("status-word-id", ["status", "abc"], "'abc' is not a workflow id"),
    ("status-negative-id", ["status", "--", "-3"], "'-3' is not a workflow id"),
    ("logs-huge-id", ["logs", HUGE, "a"], "is not a workflow id"),
    ("logs-no-activity", ["logs", "1"], "Missing argument 'ACTIVITY'"),
    ("logs-attempt-zero", ["logs", "1", "a", "--attempt", "0"], "--attempt"),
    ("cancel-huge-id", ["cancel", HUGE], "is not a workflow id"),
    ("retry-no-id", ["retry"], "Missing argument 'WORKFLOW_ID'"),
    ("resume-huge-id", ["resume", HUGE], "is not a workflow id"),
    ("artifacts-huge-id", ["artifacts", HUGE], "is not a workflow id"),
    ("status-no-store", ["status"], "nothing has run with this --state-dir"),
    ("status-id-no-store", ["status", "1"], "nothing has run with this --state-dir"),
    ("logs-no-store", ["logs", "1", "a"], "nothing has run with this --state-dir"),
    ("cancel-no-store", ["cancel", "1"], "nothing has run with this --state-dir"),
    ("retry-no-store", ["retry", "1"], "nothing has run with this --state-dir"),
    ("resume-no-store", ["resume"], "nothing has run with this --state-dir"),
    ("artifacts-no-store", ["artifacts", "1"], "nothing has run with this --state-dir"),
    ("run-missing-file", ["run", "{tmp}/nope.yaml"], "cannot read"),
    ("run-nul-byte", ["run", "{nul}"], "character U+0000 is not allowed in YAML"),
    ("validate-nul-byte", ["validate", "{nul}"], "character U+0000 is not allowed in YAML"),
    ("render-nul-byte", ["render", "{nul}"], "character U+0000 is not allowed in YAML"),
    ("run-bell-byte", ["run", "{ctl}"], "character U+0007 is not allowed in YAML"),
    ("run-negative-wait", ["run", str(HELLO), "--webhook-wait", "-1"], "--webhook-wait"),
    ("run-unknown-runtime", ["run", str(HELLO), "--runtime", "nosuch"], "'nosuch'"),
    ("unknown-command", ["frobnicate"], "No such command 'frobnicate'"),
    ("unknown-option", ["run", "--frob", str(HELLO)], "No such option '--frob'"),
    ("state-dir-under-a-file", ["--state-dir", "{file}/state", "run", str(HELLO)],
     "is a file, not a directory"),
    ("state-dir-under-a-file-status", ["--state-dir", "{file}/state", "status"],
     "is a file, not a directory"),
    ("state-dir-under-a-file-resume", ["--state-dir", "{file}/state", "resume"],
     "is a file, not a directory"),
    ("state-dir-is-a-file", ["--state-dir", "{file}", "status"], "is a file"),
    ("clusters-dir-is-a-file", ["--clusters-dir", "{file}", "validate", str(HELLO)],
     "is a file"),
]


@pytest.mark.parametrize(("args", "fragment"), [c[1:] for c in CORPUS],
                         ids=[c[0] for c in CORPUS])
def test_bad_invocations_exit_2_with_a_message(cli: Cli, args: list[str], fragment: str) -> None:
    text = HELLO.read_text(encoding="utf-8")
    files = {
        "nul": cli.write("nul.yaml", text.replace("name: hello", "name: hel\0lo")),
        "ctl": cli.write("ctl.yaml", text + "# ring \a\n"),
        "file": cli.write("a-file", "not a directory\n"),
        "tmp": cli.tmp,
    }
    res = cli(*[a.format(**files) for a in args])
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    no_traceback(res)
    assert fragment in res.stderr, res.stderr
    assert not (cli.state / "akobridge.db").exists() or cli.workflows() == []


# --- a read-only state dir ------------------------------------------------------------------


@pytest.fixture()
def read_only() -> Iterator[list[Path]]:
    """Paths appended here are made read-only (for root too: ``chattr +i``) and writable
    again at the end."""
    paths: list[Path] = []
    yield paths
    for p in paths:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(p)], check=False)
        else:
            p.chmod(0o755 if p.is_dir() else 0o644)


def freeze(read_only: list[Path], *paths: Path) -> None:
    for p in paths:
        if os.geteuid() == 0:
            res = subprocess.run(["chattr", "+i", str(p)], capture_output=True, text=True)
            if res.returncode != 0:
                pytest.skip(f"cannot make {p} read-only for root: {res.stderr.strip()}")
        else:
            p.chmod(0o555 if p.is_dir() else 0o444)
        read_only.append(p)


def test_a_read_only_state_dir_is_named(cli: Cli, read_only: list[Path]) -> None:
    cli.state.mkdir()
    freeze(read_only, cli.state)
    res = cli("run", HELLO)
    assert res.returncode == 2, res.stderr
    no_traceback(res)
    assert f"state dir {cli.state} is not writable" in res.stderr, res.stderr


def test_a_read_only_store_is_named(cli: Cli, read_only: list[Path]) -> None:
    ran = cli("run", HELLO, "--webhook-wait", "0")
    assert ran.returncode == 0, ran.stderr
    freeze(read_only, *sorted(p for p in cli.state.iterdir() if p.is_file()), cli.state)
    for args in (["status"], ["status", "1"], ["resume"], ["retry", "1"], ["run", HELLO],
                 ["cancel", "1"], ["logs", "1", "greet"]):
        res = cli(*args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        no_traceback(res)
        assert str(cli.state) in res.stderr, (args, res.stderr)


# --- Ctrl-C at start-up and unexpected errors -------------------------------------------------


@pytest.mark.parametrize("where", ["bridge.cli.load_workflow", "bridge.runner.Bridge.submit",
                                   "bridge.cli.open_store"])
def test_ctrl_c_at_start_up_is_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         where: str) -> None:
    def interrupt(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(where, interrupt)
    from bridge.cli import main

    (tmp_path / "clusters").mkdir()
    res = CliRunner().invoke(main, ["--state-dir", str(tmp_path / "state"), "--clusters-dir",
                                    str(tmp_path / "clusters"), "run", str(HELLO)])
    assert res.exit_code == 130, res.output
    assert "interrupted (Ctrl-C)" in res.stderr
    assert "Traceback" not in res.output and "Aborted" not in res.output
    assert not (tmp_path / "state" / "owner.json").exists()  # the lock was let go


def test_an_unexpected_error_is_one_line_not_a_traceback(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("something broke")

    monkeypatch.setattr("bridge.runner.Bridge.submit", boom)
    from bridge.cli import main

    (tmp_path / "clusters").mkdir()
    res = CliRunner().invoke(main, ["--state-dir", str(tmp_path / "state"), "--clusters-dir",
                                    str(tmp_path / "clusters"), "run", str(HELLO)])
    assert res.exit_code == 70, res.output
    assert res.stderr.splitlines() == [
        "error: unexpected RuntimeError: something broke (a bug in akobridge; run with -vv "
        "for the details)"]

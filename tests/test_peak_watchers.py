"""Peak watchers on a real ``akobridge serve``: a real SMTP server (aiosmtpd on 127.0.0.1, with
AUTH and the password from ``smtp.password_file``) and a real HTTP receiver. Success and fail
watchers hear exactly their event; ``runtimeExceeded`` fires once (``peak.minute_s: 2`` makes
the API's minute two seconds); a daemon killed with SIGKILL as an execution ends still
notifies after a restart, a repeat carrying the same event id; secret values never reach a
body."""

from __future__ import annotations

import email
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from test_peak_definitions_api import Api, peak_daemon
from test_peak_executions_api import definition, execute, wait

from conftest import Receiver

SECRET = "Zq9-watcher-secret-771"
SMTP_USER, SMTP_PASSWORD = "akb", "smtp-password-Kx81"
EVENT_ID = "X-Akobridge-Event-Id"


@dataclass
class Mailbox:
    """What the SMTP server accepted, and the logins it saw."""

    port: int = 0
    messages: list[tuple[list[str], Message, bytes]] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server: SMTP, session: Session,  # noqa: N802 - aiosmtpd API
                          envelope: Envelope) -> str:
        raw = bytes(envelope.original_content or b"")
        with self.cond:
            self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(raw), raw))
            self.cond.notify_all()
        return "250 OK"

    def auth(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
             data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login, password = data.login.decode(), data.password.decode()
        self.logins.append((login, password))
        return AuthResult(success=(login, password) == (SMTP_USER, SMTP_PASSWORD))

    def to(self, address: str) -> list[Message]:
        with self.cond:
            return [m for rcpt, m, _ in self.messages if address in rcpt]

    def wait_to(self, address: str, count: int = 1, timeout: float = 30) -> list[Message]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.to(address)) >= count, timeout)
        got = self.to(address)
        assert len(got) >= count, f"{len(got)} e-mails to {address}, wanted {count}"
        return got


def body_of(msg: Message) -> str:
    payload = msg.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox(port=_free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port,
                            authenticator=box.auth, auth_require_tls=False)
    controller.start()
    yield box
    controller.stop()


def _config(tmp: Path, port: int) -> dict[str, Any]:
    password, secrets = tmp / "smtp.password", tmp / "peak.secrets"
    password.write_text(f"{SMTP_PASSWORD}\n")
    secrets.write_text(f"apitoken={SECRET}\n")
    for f in (password, secrets):
        f.chmod(0o600)
    return {"smtp": {"host": "127.0.0.1", "port": port, "username": SMTP_USER,
                     "password_file": str(password), "sender": "bridge@test.example"},
            "peak": {"minute_s": 2, "secrets_file": str(secrets)},
            "webhooks": {"first_delay": 0.2, "max_delay": 1}}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, mailbox: Mailbox) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("peak-watch")
    yield from peak_daemon(tmp, _config(tmp, mailbox.port))


def hook(name: str, url: str, payload: str, **events: Any) -> dict[str, Any]:
    return {"webhook": {"name": name, "url": url, "payload": payload}, "events": events}


def mail(name: str, to: list[str], **events: Any) -> dict[str, Any]:
    return {"email": {"name": name, "recipients": {"to": to}}, "events": events}


def hooks_to(receiver: Receiver, tag: str) -> list[Any]:
    return [r for r in receiver.requests if r.path.endswith(f"w={tag}")]


def settle(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.1)


def no_secret(receiver: Receiver, box: Mailbox) -> None:
    for r in receiver.requests:
        assert SECRET not in str(r.body) and SECRET not in str(r.headers)
    for _, _, raw in box.messages:
        assert SECRET.encode() not in raw and SMTP_PASSWORD.encode() not in raw


def both_ways(name: str, url: str, command: str) -> dict[str, Any]:
    """A definition whose success and fail watchers each have a webhook and an e-mail."""
    return definition(name, {
        "first": {"command": command, "parameters": {"secrets": ["apitoken"]}},
        "second": {"command": "echo two", "parents": ["first"]}}, watchers=[
        hook("ok-hook", f"{url}?w={name}-success", '{"pingback-url": "https://x.test/1"}',
             success=True, fail=False),
        hook("bad-hook", f"{url}?w={name}-fail", f"not json, and {SECRET}", fail=True),
        mail("ok-mail", [f"{name}-ok@test.example"], success=True),
        mail("bad-mail", [f"{name}-bad@test.example", f"{name}-ops@test.example"], fail=True),
        {"user": f"{name}-user@test.example", "events": {"success": True, "fail": True}}])


def test_success_and_fail_watchers_hear_only_their_event(
        api: Api, mailbox: Mailbox, receiver: Receiver) -> None:
    ok = api.create(both_ways("watch-ok", receiver.url, 'test -n "$apitoken"'))
    bad = api.create(both_ways("watch-bad", receiver.url, "echo $apitoken; exit 3"))
    ok_ex, bad_ex = execute(api, ok), execute(api, bad)
    assert wait(api, ok, ok_ex, {"Success", "Failed"})["status"] == "Success"
    assert wait(api, bad, bad_ex, {"Success", "Failed"})["status"] == "Failed"
    receiver.wait_for(2)
    ok_mail = mailbox.wait_to("watch-ok-ok@test.example")
    bad_mail = mailbox.wait_to("watch-bad-bad@test.example")
    mailbox.wait_to("watch-ok-user@test.example")
    mailbox.wait_to("watch-bad-user@test.example")
    time.sleep(2.5)  # a wrong notification would have been queued and sent by now

    [success] = hooks_to(receiver, "watch-ok-success")
    [fail] = hooks_to(receiver, "watch-bad-fail")
    assert hooks_to(receiver, "watch-ok-fail") == hooks_to(receiver, "watch-bad-success") == []
    assert success.body["payload"] == {"pingback-url": "https://x.test/1"}
    event = success.body["event"]
    assert (event["event"], event["status"], event["executionId"], event["workflowId"],
            event["workflowName"], event["watcher"]) == (
        "success", "Success", ok_ex, ok, "watch-ok", "ok-hook")
    assert [(s["name"], s["status"], s["exitCode"]) for s in event["steps"]] == [
        ("first", "Success", 0), ("second", "Success", 0)]
    assert event["executedAt"].endswith("Z") and event["finishedAt"].endswith("Z")
    assert success.headers["X-Akobridge-Event"] == "PEAK_WATCHER"
    assert success.headers[EVENT_ID] != fail.headers[EVENT_ID]
    assert fail.body["payload"] == "not json, and ***"  # not JSON: as is; a secret: hidden
    assert (fail.body["event"]["event"], fail.body["event"]["status"]) == ("fail", "Failed")
    assert fail.body["event"]["steps"][0]["exitCode"] == 3
    assert fail.body["event"]["steps"][1]["status"] != "Success"

    assert mailbox.to("watch-ok-bad@test.example") == mailbox.to("watch-bad-ok@test.example") \
        == []
    [msg] = ok_mail
    assert msg["Subject"] == "[akobridge] watch-ok success"
    assert msg["From"] == "bridge@test.example" and msg[EVENT_ID]
    text = body_of(msg)
    assert ok_ex in text and "first" in text and "Success" in text
    [msg] = bad_mail
    assert msg["Subject"] == "[akobridge] watch-bad fail"
    assert msg["To"] == "watch-bad-bad@test.example, watch-bad-ops@test.example"
    assert "exit 3" in body_of(msg)
    assert [m["Subject"] for m in mailbox.to("watch-bad-user@test.example")] == [
        "[akobridge] watch-bad fail"]
    assert set(mailbox.logins) == {(SMTP_USER, SMTP_PASSWORD)}
    no_secret(receiver, mailbox)
    assert SMTP_PASSWORD not in api.daemon.output() and SECRET not in api.daemon.output()


def test_runtime_exceeded_fires_once(api: Api, mailbox: Mailbox, receiver: Receiver) -> None:
    wf_id = api.create(definition("watch-long", {"slow": {"command": "sleep 7"}}, watchers=[
        hook("slow-hook", f"{receiver.url}?w=long", "{}", runtimeExceeded=1),
        mail("slow-mail", ["long@test.example"], runtimeExceeded=1, success=True)]))
    ex = execute(api, wf_id)
    [late] = receiver.wait_for(1, timeout=20)  # one "minute" is 2 s here
    assert late.body["event"]["event"] == "runtimeExceeded"
    assert (late.body["event"]["status"], late.body["event"]["runtimeExceeded"]) == ("Running", 1)
    assert late.body["event"]["finishedAt"] is None
    assert wait(api, wf_id, ex, {"Success", "Failed"})["status"] == "Success"
    mailbox.wait_to("long@test.example", 2)
    time.sleep(2.5)
    assert len(hooks_to(receiver, "long")) == 1
    subjects = [m["Subject"] for m in mailbox.to("long@test.example")]
    assert subjects == ["[akobridge] watch-long runtimeExceeded", "[akobridge] watch-long success"]


def _ended(db: Path, ex: str) -> bool:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT w.state FROM peak_executions e JOIN workflows w"
                           " ON w.id=e.workflow_id WHERE e.id=?", (ex,)).fetchone()
    return bool(row) and row[0] != "RUNNING"


def _queued(db: Path, ex: str) -> bool:
    with sqlite3.connect(db) as conn:
        return bool(conn.execute("SELECT count(*) FROM peak_notifications WHERE"
                                 " execution_id=?", (ex,)).fetchone()[0])


def _kill(daemon_gen: Iterator[Api], api: Api) -> None:
    """SIGKILL the daemon, then let its fixture end (which expects a clean exit code)."""
    api.daemon.proc.kill()
    api.daemon.proc.wait()
    api.daemon.proc = subprocess.Popen(["true"])  # the killed one's status is not 0
    api.daemon.proc.wait()
    api.http.close()
    for _ in daemon_gen:
        pass


@pytest.mark.parametrize("moment", [_ended, _queued], ids=["at-the-end", "once-queued"])
def test_sigkill_as_an_execution_ends_still_notifies_once_per_event_id(
        tmp_path: Path, mailbox: Mailbox, receiver: Receiver,
        moment: Callable[[Path, str], bool]) -> None:
    config = _config(tmp_path, mailbox.port)
    to = f"kill-{moment.__name__}@test.example"
    gen = peak_daemon(tmp_path, config)
    api = next(gen)
    try:
        wf_id = api.create(definition("watch-kill", {"quick": {"command": "echo hi"}},
                                      watchers=[hook("k", f"{receiver.url}?w=kill", "{}",
                                                     success=True),
                                                mail("k", [to], success=True)]))
        ex = execute(api, wf_id)
        settle(lambda: moment(api.daemon.db, ex))
    finally:
        _kill(gen, api)
    for api in peak_daemon(tmp_path, config):  # the restart
        hooks = receiver.wait_for(1)
        mails = mailbox.wait_to(to)
        time.sleep(1.5)
        assert {r.headers[EVENT_ID] for r in hooks_to(receiver, "kill")} == {
            hooks[0].headers[EVENT_ID]}
        assert len({m[EVENT_ID] for m in mailbox.to(to)}) == 1
        assert hooks[0].body["event"]["executionId"] == ex
        assert mails[0]["Subject"] == "[akobridge] watch-kill success"
        assert wait(api, wf_id, ex, {"Success"})["status"] == "Success"

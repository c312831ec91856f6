"""Durable, signed webhooks against real HTTP receivers on 127.0.0.1: outages, black holes,
signatures, duplicates, dead letters and redelivery, max age, the URL policy at delivery."""

from __future__ import annotations

import re
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_events import BlackHole

from bridge.metrics import REGISTRY
from bridge.notify.urlpolicy import UrlPolicy
from bridge.notify.webhooks import (
    Deliverer,
    DeliveryLoop,
    WebhookSettings,
    dead_letter_count,
    dead_letters,
    event_source,
    redeliver,
    sign,
)
from bridge.spec import parse_akoflow
from bridge.store import MIGRATIONS, Store, now_utc

REPO = Path(__file__).resolve().parent.parent
FAST = WebhookSettings(attempts=100, first_delay_s=0.05, max_delay_s=0.15, timeout_s=2)


@dataclass
class Hit:
    path: str
    headers: Any  # the request's (case-insensitive) headers
    body: bytes
    status: int


@dataclass
class Hook:
    """A real receiver; ``answer`` picks the status of each request (all are recorded)."""

    port: int
    answer: Callable[[Hit], int] = lambda hit: 204
    delay_s: float = 0.0
    """Sleep this long before answering the first request (then answer at once)."""
    hits: list[Hit] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    server: ThreadingHTTPServer | None = None
    tls: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hit = Hit(self.path, self.headers, body, 0)
                hit.status = hook.answer(hit)
                with hook.cond:
                    first = not hook.hits
                    hook.hits.append(hit)
                    hook.cond.notify_all()
                if first and hook.delay_s:
                    time.sleep(hook.delay_s)
                try:
                    self.send_response(hit.status)
                    self.end_headers()
                except OSError:
                    pass  # the bridge gave up waiting

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def ok(self) -> list[Hit]:
        return [h for h in self.hits if 200 <= h.status < 300]

    def wait_ok(self, count: int, timeout: float = 10.0) -> list[Hit]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.ok()) >= count, timeout)
            return self.ok()


@pytest.fixture()
def hook() -> Iterator[Hook]:
    h = Hook(0)
    h.start()
    yield h
    h.stop()


def _store(tmp_path: Path, name: str = "s.db") -> Store:
    return Store(tmp_path / name)


def _workflow(store: Store) -> int:
    wf = parse_akoflow("name: w\nspec:\n  activities:\n    - name: a\n      run: 'true'\n")
    return store.add_workflow(wf.workflow)


def _emit(store: Store, wf_id: int, types: list[str], urls: list[str], **at: Any) -> None:
    when = now_utc() + timedelta(**at) if at else now_utc()
    for i, type_ in enumerate(types):
        with store.transaction() as db:
            Store.add_event(db, wf_id, type_, {"type": type_, "wf": wf_id, "n": i}, urls, when)


def _drain(store: Store, how: WebhookSettings | Deliverer,
           until: Callable[[], bool] | None = None, timeout: float = 10.0) -> None:
    """Deliver until ``until()`` (default: nothing pending)."""
    d = how if isinstance(how, Deliverer) else Deliverer(store, how)
    done = until or (lambda: not store.pending_deliveries())
    deadline = time.monotonic() + timeout
    try:
        while not done() and time.monotonic() < deadline:
            d.deliver_due()
            time.sleep(0.01)
    finally:
        d.client.close()
    assert done(), "timed out"


def _states(store: Store) -> list[tuple[int, str, int]]:
    return [tuple(r) for r in store.db.execute(  # type: ignore[misc]
        "SELECT id, state, tries FROM deliveries ORDER BY id")]


def _json(hit: Hit) -> dict[str, Any]:
    import json

    return dict(json.loads(hit.body))


DONE = ["ACTIVITY_COMPLETED", "ACTIVITY_COMPLETED", "ACTIVITY_COMPLETED", "WORKFLOW_DONE"]


def test_receiver_down_for_several_rounds_then_back_gets_every_event_in_order(
        tmp_path: Path) -> None:
    down = Hook(0)
    down.start()
    port = down.port
    down.stop()  # nothing listens on the port now: connections are refused
    store = _store(tmp_path)
    one, two = _workflow(store), _workflow(store)
    for wf in (one, two):
        _emit(store, wf, DONE, [f"http://127.0.0.1:{port}/hook"])
    loop = DeliveryLoop(store.path, FAST, interval_s=0.02)
    back = Hook(port)
    try:
        loop.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and store.db.execute(
                "SELECT min(tries) FROM deliveries WHERE id IN (SELECT min(id) FROM deliveries"
                " GROUP BY workflow_id)").fetchone()[0] < 4:
            time.sleep(0.02)  # both workflows' heads have failed four rounds
        assert store.pending_deliveries() == 8
        back.start()
        got = back.wait_ok(8)
    finally:
        loop.stop(timeout=1)
        back.stop()
    assert len(got) == 8
    for wf in (one, two):
        mine = [_json(h) for h in got if _json(h)["wf"] == wf]
        assert [m["n"] for m in mine] == [0, 1, 2, 3]  # every ACTIVITY_COMPLETED first
        assert mine[-1]["type"] == "WORKFLOW_DONE"
    source = event_source(store)
    ids = [h.headers["X-Akobridge-Event-Id"] for h in got]
    assert len(set(ids)) == 8
    assert all(re.fullmatch(rf"{source}-\d+", i) for i in ids)
    assert {s for _, s, _ in _states(store)} == {"delivered"}


def test_black_hole_beside_a_healthy_url_the_healthy_one_is_not_delayed(
        tmp_path: Path, hook: Hook) -> None:
    hole = BlackHole()
    store = _store(tmp_path)
    wf = _workflow(store)
    _emit(store, wf, DONE, [hole.url, hook.url])
    hung = 4.0
    settings = WebhookSettings(attempts=100, first_delay_s=0.05, max_delay_s=0.1,
                               timeout_s=hung, max_age_s=1.0)
    loop = DeliveryLoop(store.path, settings, interval_s=0.02)
    try:
        started = time.monotonic()
        loop.start()
        got = hook.wait_ok(4, timeout=hung * 3)
        took = time.monotonic() - started
        assert [_json(h)["n"] for h in got] == [0, 1, 2, 3]
        assert took < hung / 2, f"the healthy receiver waited {took:.1f} s behind the hole"
        # more events while the black hole still holds its first post: no waiting either
        _emit(store, wf, ["ACTIVITY_COMPLETED"], [hole.url, hook.url])
        again = time.monotonic()
        loop.poke()
        assert len(hook.wait_ok(5, timeout=hung * 3)) == 5
        assert time.monotonic() - again < hung / 2
        assert [h["url"] for h in dead_letters(store)] == []  # the hole's first post hangs
        deadline = time.monotonic() + hung * 3
        while dead_letter_count(store) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        loop.stop(timeout=0.5)
        hole.close()
    # the hole's post timed out after max_age: that one and the four behind it are dead
    dead = dead_letters(store)
    assert [d["url"] for d in dead] == [hole.url] * 5
    assert dead[0]["last_error"] == "older than max_age (1s) after 1 tries; not sent again"
    assert all(d["held_by"] == dead[0]["id"] for d in dead[1:])


def _verify_from_docs() -> Callable[..., bool]:
    text = (REPO / "docs" / "webhooks.md").read_text(encoding="utf-8")
    section = text.split("## Verifying the signature", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 5, "the documented example is at most 5 lines"
    scope: dict[str, Any] = {}
    exec(code, scope)
    return scope["verify"]  # type: ignore[no-any-return]


def test_signature_verifies_with_the_documented_code(tmp_path: Path, hook: Hook) -> None:
    verify = _verify_from_docs()
    store = _store(tmp_path)
    wf = _workflow(store)
    _emit(store, wf, DONE[-2:], [hook.url])
    settings = WebhookSettings(secret="s3cret-ü", first_delay_s=0.05, max_delay_s=0.1)
    _drain(store, settings)
    assert len(hook.ok()) == 2
    for hit in hook.ok():
        assert re.fullmatch(r"sha256=[0-9a-f]{64}", hit.headers["X-Akobridge-Signature"])
        assert abs(int(hit.headers["X-Akobridge-Timestamp"]) - time.time()) < 60
        assert verify("s3cret-ü", hit.headers, hit.body)
        assert not verify("wrong secret", hit.headers, hit.body)
        assert not verify("s3cret-ü", hit.headers, hit.body.replace(b"}", b" }", 1))
    # a request signed (correctly) ten minutes ago is outside the replay window
    hit = hook.ok()[0]
    old = int(time.time()) - 600
    stale = {"X-Akobridge-Timestamp": str(old),
             "X-Akobridge-Signature": sign("s3cret-ü", old, hit.body)}
    assert not verify("s3cret-ü", stale, hit.body)
    assert verify("s3cret-ü", stale, hit.body, window=900)
    # without a secret nothing is signed
    unsigned = _store(tmp_path, "u.db")
    _emit(unsigned, _workflow(unsigned), ["WORKFLOW_DONE"], [hook.url])
    _drain(unsigned, FAST)
    assert "X-Akobridge-Signature" not in hook.ok()[-1].headers
    assert "X-Akobridge-Timestamp" not in hook.ok()[-1].headers


def test_duplicates_carry_the_same_event_id(tmp_path: Path, hook: Hook) -> None:
    hook.delay_s = 1.5  # the first answer comes after the bridge stopped waiting
    store = _store(tmp_path)
    wf = _workflow(store)
    _emit(store, wf, DONE[-2:], [hook.url])
    settings = WebhookSettings(attempts=5, first_delay_s=0.05, max_delay_s=0.1, timeout_s=0.5)
    _drain(store, settings)
    first, *rest = hook.hits
    assert first.status == 204 and len(rest) == 2  # received, but too late: sent again
    assert first.headers["X-Akobridge-Event-Id"] == rest[0].headers["X-Akobridge-Event-Id"]
    assert first.headers["X-Akobridge-Delivery"] == rest[0].headers["X-Akobridge-Delivery"]
    assert first.body == rest[0].body
    assert rest[0].headers["X-Akobridge-Event-Id"] != rest[1].headers["X-Akobridge-Event-Id"]
    assert _states(store) == [(1, "delivered", 2), (2, "delivered", 1)]
    # another state dir numbers its events from 1 too: its event ids differ all the same
    other = _store(tmp_path, "other.db")
    _emit(other, _workflow(other), DONE[-2:], [hook.url])
    _drain(other, settings)
    mine = {h.headers["X-Akobridge-Event-Id"] for h in hook.hits[:3]}
    theirs = {h.headers["X-Akobridge-Event-Id"] for h in hook.hits[3:]}
    assert len(theirs) == 2 and not mine & theirs


def test_attempts_exhausted_dead_letter_listed_redelivered_in_order(
        tmp_path: Path, hook: Hook) -> None:
    up = threading.Event()
    hook.answer = lambda hit: 204 if up.is_set() else 503
    store = _store(tmp_path)
    wf, other = _workflow(store), _workflow(store)
    _emit(store, wf, DONE, [hook.url])
    settings = WebhookSettings(attempts=3, first_delay_s=0.02, max_delay_s=0.05)
    _drain(store, settings)
    assert len(hook.hits) == 3  # only the head was ever posted, three times
    dead = dead_letters(store)
    assert [d["id"] for d in dead] == [1, 2, 3, 4] and dead_letter_count(store) == 4
    head = dead[0]
    assert head["tries"] == 3 and head["held_by"] is None
    assert head["last_error"] == "3 tries failed, the last: HTTP 503"
    assert head["type"] == "ACTIVITY_COMPLETED" and head["workflow_id"] == wf
    assert head["url"] == hook.url and head["event_id"] == hook.hits[0].headers[
        "X-Akobridge-Event-Id"]
    assert head["created_at"] and head["last_try_at"] and head["dead_at"]
    assert all(d["held_by"] == 1 and d["tries"] == 0 for d in dead[1:])
    assert dead[-1]["type"] == "WORKFLOW_DONE"
    assert [d["id"] for d in dead_letters(store, limit=2, offset=1)] == [2, 3]
    # a later workflow's events to the same URL are not held behind another workflow's
    up.set()
    _emit(store, other, ["WORKFLOW_DONE"], [hook.url])
    _drain(store, settings)
    assert _json(hook.ok()[-1])["wf"] == other
    assert redeliver(store, 999) is False
    assert redeliver(store, 5) is False  # delivered, not a dead letter
    assert redeliver(store, 1) is True
    assert dead_letters(store) == []
    _drain(store, settings)
    again = [_json(h) for h in hook.ok()[1:]]
    assert [(m["wf"], m["n"]) for m in again] == [(wf, 0), (wf, 1), (wf, 2), (wf, 3)]
    assert hook.ok()[1].headers["X-Akobridge-Event-Id"] == head["event_id"]
    assert {s for _, s, _ in _states(store)} == {"delivered"}


def test_a_delivery_older_than_max_age_is_dead_lettered(tmp_path: Path, hook: Hook) -> None:
    hook.answer = lambda hit: 500
    store = _store(tmp_path)
    wf = _workflow(store)
    _emit(store, wf, ["WORKFLOW_DONE"], [hook.url])
    settings = WebhookSettings(attempts=1000, max_age_s=0.4, first_delay_s=0.02,
                               max_delay_s=0.05)
    started = time.monotonic()
    _drain(store, settings, lambda: dead_letter_count(store) == 1)
    assert 0.4 <= time.monotonic() - started < 5
    (dead,) = dead_letters(store)
    assert dead["last_error"].startswith("older than max_age (0.4s)") and dead["tries"] > 2
    # one queued two days ago (a bridge that was down) is never posted at the default max age
    old = _store(tmp_path, "old.db")
    _emit(old, _workflow(old), ["WORKFLOW_DONE"], [hook.url], days=-2)
    posted = len(hook.hits)
    _drain(old, WebhookSettings(), lambda: dead_letter_count(old) == 1)
    assert len(hook.hits) == posted
    assert dead_letters(old)[0]["last_error"] == ("older than max_age (1d) after 0 tries;"
                                                 " not sent again")


def test_a_name_resolving_to_a_denied_address_is_refused_never_posted(
        tmp_path: Path, hook: Hook) -> None:
    policy = UrlPolicy(deny=["127.0.0.0/8", "::1"])
    url = f"http://localhost:{hook.port}/hook"
    assert policy.check(url) is None  # at intake the name alone is fine ...
    store = _store(tmp_path)
    wf = _workflow(store)
    _emit(store, wf, DONE[-2:], [url])
    _emit(store, wf, ["WORKFLOW_DONE"], ["http://169.254.169.254/latest/meta-data/"])
    settings = WebhookSettings(policy=policy, first_delay_s=0.05, max_delay_s=0.1)
    started = time.monotonic()
    _drain(store, settings)
    assert time.monotonic() - started < 2  # refused without any connection attempt
    assert hook.hits == []  # ... but at delivery it resolves to 127.0.0.1: never posted
    dead = {d["url"]: d for d in dead_letters(store) if d["held_by"] is None}
    assert dead[url]["tries"] == 0
    assert dead[url]["last_error"].startswith("refused by the URL policy: 'localhost' resolves")
    assert "denied by the URL policy (deny: " in dead[url]["last_error"]
    assert "cloud metadata" in dead["http://169.254.169.254/latest/meta-data/"]["last_error"]
    # the default policy lets the same receiver have it (loopback is allowed by default)
    for d in dead_letters(store):
        redeliver(store, d["id"])
    _drain(store, FAST, lambda: len(hook.ok()) == 2)


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels or None) or 0.0


def test_metrics_count_outcomes_and_queue_depth(tmp_path: Path, hook: Hook) -> None:
    before = {o: _sample("akobridge_webhook_deliveries_total", outcome=o)
              for o in ("delivered", "failed", "dead")}
    fails = iter([503, 204, 503, 503])
    hook.answer = lambda hit: next(fails)
    store = _store(tmp_path)
    one, two = _workflow(store), _workflow(store)
    _emit(store, one, ["WORKFLOW_DONE"], [hook.url])
    _emit(store, two, ["ACTIVITY_COMPLETED", "WORKFLOW_DONE"], [hook.url], hours=1)
    loop = DeliveryLoop(store.path, WebhookSettings(attempts=2, first_delay_s=0.02,
                                                    max_delay_s=0.05), interval_s=0.02)
    loop.start()
    try:
        deadline = time.monotonic() + 5
        while _sample("akobridge_webhook_queue_depth") != 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # one delivered (after a 503), two waiting for their hour
        assert _sample("akobridge_webhook_queue_depth") == 2
        with store.transaction() as db:
            db.execute("UPDATE deliveries SET next_try_at=? WHERE state='pending'",
                       (now_utc().isoformat(),))
        while dead_letter_count(store) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        loop.stop(timeout=1)
    after = {o: _sample("akobridge_webhook_deliveries_total", outcome=o) - before[o]
             for o in ("delivered", "failed", "dead")}
    assert after == {"delivered": 1, "failed": 3, "dead": 2}


def test_migration_turns_failed_deliveries_into_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    db = sqlite3.connect(path, isolation_level=None)
    for number in range(4):
        for statement in MIGRATIONS[number].split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute("PRAGMA user_version=4")
    db.execute("INSERT INTO workflows(name, namespace, runtime, source_format, raw, spec, state,"
               " created_at) VALUES ('w','default','local','akoflow','','{}','COMPLETED',"
               "'2025-03-09T12:00:00+00:00')")
    db.execute("INSERT INTO events(workflow_id, type, payload, created_at) VALUES"
               " (1, 'WORKFLOW_DONE', '{}', '2025-03-09T12:00:00+00:00')")
    db.execute("INSERT INTO deliveries(event_id, workflow_id, url, state, tries, next_try_at,"
               " last_error) VALUES (1, 1, 'http://h/x', 'failed', 12, '2025-03-09T13:00:00"
               "+00:00', 'HTTP 500')")
    db.close()
    store = Store(path)
    (dead,) = dead_letters(store)
    assert dead["tries"] == 12 and dead["last_error"] == "HTTP 500"
    assert dead["queued_at"] == "2025-03-09T12:00:00+00:00"
    assert re.fullmatch(r"[0-9a-f]{16}-1", dead["event_id"])
    assert redeliver(store, 1) and store.pending_deliveries() == 1


def test_settings_from_mapping_name_the_field(tmp_path: Path) -> None:
    s = WebhookSettings.from_mapping({"attempts": 5, "max_age": "2h", "first_delay": 0.5,
                                      "max_delay": "5m", "timeout": "30s",
                                      "allow": ["10.0.0.0/8"], "deny": ["*.bad.example"]})
    assert (s.attempts, s.max_age_s, s.first_delay_s, s.max_delay_s, s.timeout_s) == (
        5, 7200, 0.5, 300, 30)
    assert s.policy.check("http://x.bad.example/") is not None
    defaults = WebhookSettings.from_mapping(None)
    assert (defaults.attempts, defaults.max_age_s, defaults.secret) == (50, 86400, None)
    mean_span = sum(0.75 * min(defaults.max_delay_s, defaults.first_delay_s * 2 ** max(0, t - 1))
                    for t in range(1, defaults.attempts))
    assert mean_span > defaults.max_age_s  # the default max_age is reachable, not dead config
    secret = tmp_path / "secret"
    secret.write_text("  k3y  \nignored\n")
    secret.chmod(0o600)
    signed = WebhookSettings.from_mapping({"secret_file": "secret"}, base=tmp_path)
    assert signed.secret == "k3y" and "k3y" not in repr(signed)
    bad = {
        "attempts: must be ≥ 1": {"attempts": 0},
        "attempts: must be ≤ 1000": {"attempts": 1001},
        "max_delay: must be at most 365d": {"max_delay": "400d"},
        "attempts: must be a whole number ≥ 1, not '3'": {"attempts": "3"},
        "max_age: not a duration: 'soon'": {"max_age": "soon"},
        "timeout: must be a positive duration": {"timeout": 0},
        "max_delay: must be ≥ webhooks.first_delay (10 s)": {"first_delay": 10, "max_delay": 5},
        "allow[1]: not a CIDR network or host name: 'a b'": {"allow": ["10.0.0.0/8", "a b"]},
        "deny: must be a list of patterns": {"deny": "10.0.0.0/8"},
        "colour: unknown field": {"colour": "red"},
        "secret_file: cannot read": {"secret_file": str(tmp_path / "missing")},
    }
    for message, data in bad.items():
        with pytest.raises(ValueError) as err:
            WebhookSettings.from_mapping(data)
        assert str(err.value).startswith(f"webhooks.{message}"), str(err.value)
    secret.chmod(0o644)
    with pytest.raises(ValueError, match=r"^webhooks.secret_file: .* is readable by others"):
        WebhookSettings.from_mapping({"secret_file": str(secret)})
    with pytest.raises(ValueError, match=r"^webhooks.attempts: must be ≥ 1"):
        WebhookSettings(attempts=0)



def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the name ``localhost`` only (no IP address in it)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_https_goes_to_the_checked_address_and_is_verified_by_name(tmp_path: Path) -> None:
    import httpx

    cert, key = _certificate(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    hook = Hook(0, tls=server_tls)
    hook.start()
    store = _store(tmp_path)
    wf = _workflow(store)
    by_name = f"https://localhost:{hook.port}/hook"
    by_address = f"https://127.0.0.1:{hook.port}/hook"
    _emit(store, wf, ["WORKFLOW_DONE"], [by_name, by_address])
    settings = WebhookSettings(attempts=1, first_delay_s=0.05, max_delay_s=0.1)
    client = httpx.Client(verify=ssl.create_default_context(cafile=cert), timeout=2,
                          trust_env=False)
    try:
        _drain(store, Deliverer(store, settings, client=client))
    finally:
        hook.stop()
    # connected to the address the policy checked, with the name for SNI, the certificate
    # check and the Host header
    (hit,) = hook.ok()
    assert hit.headers["Host"] == f"localhost:{hook.port}"
    states = dict(store.db.execute("SELECT url, state FROM deliveries").fetchall())
    assert states == {by_name: "delivered", by_address: "dead"}
    (dead,) = dead_letters(store)
    assert "CERTIFICATE_VERIFY_FAILED" in dead["last_error"]  # the certificate names no IP



def test_a_name_re_pointed_after_the_check_still_gets_the_checked_address(
        tmp_path: Path, hook: Hook, monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding between the policy's lookup and the connection: the bridge connects to
    the address it checked and never looks the name up again."""
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1"] + ["127.0.0.3"] * 10)  # nothing listens on 127.0.0.3
    lookups: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if host == "rebind.test":
            lookups.append(host)
            return real(next(answers), port, *args, **kw)
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    store = _store(tmp_path)
    _emit(store, _workflow(store), ["WORKFLOW_DONE"], [f"http://rebind.test:{hook.port}/hook"])
    _drain(store, WebhookSettings(attempts=1, first_delay_s=0.05, max_delay_s=0.1))
    assert lookups == ["rebind.test"] and len(hook.ok()) == 1
    assert hook.ok()[0].headers["Host"] == f"rebind.test:{hook.port}"


def test_an_idle_loop_reads_the_outbox_seldom_and_a_poke_at_once(
        tmp_path: Path, hook: Hook, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's loop (idle_s): an empty outbox is read every idle_s, not ten times a
    second; an event committed and poked is delivered at once."""
    import bridge.notify.webhooks as wh

    store = _store(tmp_path)
    reads: list[float] = []
    original = wh.pending_by_destination
    monkeypatch.setattr(wh, "pending_by_destination",
                        lambda s: reads.append(time.monotonic()) or original(s))
    loop = DeliveryLoop(store.path, FAST, interval_s=0.02, idle_s=5.0)
    try:
        loop.start()
        time.sleep(1.0)
        assert len(reads) == 1, "an empty outbox read once, then every idle_s"
        wf = _workflow(store)
        _emit(store, wf, ["WORKFLOW_DONE"], [hook.url])
        poked = time.monotonic()
        loop.poke()
        got = hook.wait_ok(1)
        assert len(got) == 1 and time.monotonic() - poked < 2.0
    finally:
        loop.stop(timeout=1)

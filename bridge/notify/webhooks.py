"""Durable, signed webhook delivery from the outbox.

The outbox rows (``events`` and one ``deliveries`` row per URL) are written in the transaction
of the state change that caused them (:mod:`bridge.outbox`). Here they are posted:

- one worker per destination (``host:port``): a dead or black-holed receiver costs only its own
  deliveries' time, never another's;
- per (workflow, URL) strictly in event order: only the oldest pending delivery of a workflow to
  a URL is ever tried (every ACTIVITY_COMPLETED before its WORKFLOW_DONE);
- retried with exponential backoff and jitter, until ``attempts`` posts failed or the delivery is
  older than ``max_age``: then it is a dead letter (state ``dead``), and the deliveries queued
  behind it in the same (workflow, URL) order die with it (``held_by``), so a receiver never gets
  an event before an earlier one; :func:`redeliver` queues them again, in order;
- checked against the URL policy at each delivery (every address the host resolves to), and
  posted to a checked address only; a refused URL is dead-lettered at once, never posted;
- with ``X-Akobridge-Event-Id`` (the same for every delivery and redelivery of one event, unique
  across state dirs) and, with a secret, ``X-Akobridge-Timestamp`` and ``X-Akobridge-Signature``
  (HMAC-SHA256 over ``f"{timestamp}.{body}"``); see ``docs/webhooks.md``.

Delivery is at least once: a receiver that answered but whose answer was lost (a timeout, a
crash before the row was written) gets the event again, with the same event id.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import sqlite3
import stat
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
import structlog

from bridge.metrics import WEBHOOK_DELIVERIES, WEBHOOK_QUEUE
from bridge.notify.urlpolicy import UrlPolicy, UrlRefused
from bridge.spec.quantities import parse_duration_s
from bridge.store import Store, iso, now_utc

log = structlog.get_logger("akobridge.webhooks")

EVENT_ID = "X-Akobridge-Event-Id"
TIMESTAMP = "X-Akobridge-Timestamp"
SIGNATURE = "X-Akobridge-Signature"
MAX_ATTEMPTS = 1000
MAX_DURATION_S = 365 * 86400


# -- settings ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class WebhookSettings:
    """How webhooks are delivered (the daemon config's ``webhooks:`` section)."""

    secret: str | None = field(default=None, repr=False)
    """HMAC-SHA256 signing secret; ``None``: deliveries are not signed (never in the repr)."""
    attempts: int = 50
    """Posts before a delivery is dead-lettered (the defaults' 50 posts spread over about 29 h
    on average, so a receiver down for a day is given up by ``max_age``, not by the count)."""
    max_age_s: float = 86400.0
    """A delivery queued longer ago than this is dead-lettered (not posted again)."""
    first_delay_s: float = 1.0
    max_delay_s: float = 3600.0
    timeout_s: float = 10.0
    """Per phase of one post (connect, send, each read)."""
    policy: UrlPolicy = field(default_factory=UrlPolicy)
    """Which URLs may be posted to (checked at intake and at each delivery)."""

    FIELDS: ClassVar[dict[str, str]] = {
        "attempts": "attempts", "max_age_s": "max_age", "first_delay_s": "first_delay",
        "max_delay_s": "max_delay", "timeout_s": "timeout"}
    """Attribute → config key, for messages."""

    def __post_init__(self) -> None:
        if self.secret is not None and (not isinstance(self.secret, str) or not self.secret):
            raise ValueError("webhooks.secret: must be a non-empty string")
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) \
                or self.attempts < 1:
            raise ValueError("webhooks.attempts: must be ≥ 1")
        if self.attempts > MAX_ATTEMPTS:
            raise ValueError(f"webhooks.attempts: must be ≤ {MAX_ATTEMPTS}")
        for attr in ("max_age_s", "first_delay_s", "max_delay_s", "timeout_s"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"webhooks.{self.FIELDS[attr]}: must be a positive duration")
            if value > MAX_DURATION_S:
                raise ValueError(f"webhooks.{self.FIELDS[attr]}: must be at most 365d")
        if self.max_delay_s < self.first_delay_s:
            raise ValueError("webhooks.max_delay: must be ≥ webhooks.first_delay "
                             f"({self.first_delay_s:g} s)")

    def delay(self, tries: int) -> float:
        """Seconds before the next try after ``tries`` failed posts: doubling from
        ``first_delay`` up to ``max_delay``, times a random 0.5-1 (jitter)."""
        base = min(self.max_delay_s, self.first_delay_s * 2 ** max(0, tries - 1))
        return float(base * random.uniform(0.5, 1.0))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, *, where: str = "webhooks",
                     base: Path | None = None) -> WebhookSettings:
        """Build from the config's ``webhooks:`` mapping: ``secret_file`` (or ``secret``),
        ``attempts``, ``max_age``, ``first_delay``, ``max_delay``, ``timeout`` (seconds or
        ``"30s"``, ``"5m"``, ``"24h"``), ``allow``, ``deny``. Relative ``secret_file`` paths are
        relative to ``base``. Raises ``ValueError`` naming the field
        (``webhooks.attempts: must be ≥ 1``)."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: must be a mapping (attempts, max_age, allow, …)")
        known = {"secret", "secret_file", "allow", "deny", *cls.FIELDS.values()}
        for key in data:
            if key not in known:
                raise ValueError(f"{where}.{key}: unknown field "
                                 f"(known: {', '.join(sorted(known))})")
        args: dict[str, Any] = {}
        if "attempts" in data:
            value = data["attempts"]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where}.attempts: must be a whole number ≥ 1, not {value!r}")
            args["attempts"] = value
        for attr, key in cls.FIELDS.items():
            if key in data and attr != "attempts":
                try:
                    args[attr] = float(parse_duration_s(data[key]))
                except ValueError as exc:
                    raise ValueError(f"{where}.{key}: {exc}") from None
        if "secret" in data and "secret_file" in data:
            raise ValueError(f"{where}.secret: give secret or secret_file, not both")
        if "secret" in data:
            args["secret"] = data["secret"]
        if data.get("secret_file") is not None:
            args["secret"] = read_secret(data["secret_file"], f"{where}.secret_file", base)
        try:
            args["policy"] = UrlPolicy(data.get("allow") or [], data.get("deny") or [])
        except ValueError as exc:
            raise ValueError(f"{where}.{exc}") from None
        try:
            return cls(**args)
        except ValueError as exc:
            raise ValueError(str(exc).replace("webhooks.", f"{where}.")) from None

    @classmethod
    def from_daemon(cls, cfg: Any) -> WebhookSettings:
        """From the daemon config (:class:`bridge.daemon.config.DaemonConfig`: its ``webhooks``
        section, already parsed, and ``webhook_secret()``). Raises ``ValueError``
        ``"<file>: webhooks.<field>: <problem>"`` (e.g. a bad ``allow`` pattern)."""
        w = cfg.webhooks
        data = {"attempts": w.attempts, "max_age": w.max_age, "first_delay": w.first_delay,
                "max_delay": w.max_delay, "timeout": w.timeout, "allow": list(w.allow),
                "deny": list(w.deny)}
        secret = cfg.webhook_secret()
        if secret is not None:
            data["secret"] = secret
        try:
            return cls.from_mapping(data)
        except ValueError as exc:
            raise ValueError(f"{getattr(cfg, 'source', None) or 'config'}: {exc}") from None


def read_secret(path: object, where: str, base: Path | None = None) -> str:
    """The first line of a secret file, which must not be readable by group or others."""
    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"{where}: must be a file path")
    p = Path(os.path.expanduser(path))
    if base is not None and not p.is_absolute():
        p = base / p
    try:
        mode = p.stat().st_mode
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: cannot read {p}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{where}: {p} is readable by others; run `chmod 600 {p}`")
    if not lines or not lines[0].strip():
        raise ValueError(f"{where}: {p} is empty")
    return lines[0].strip()


class DeliveryPolicy(WebhookSettings):
    """The earlier name of :class:`WebhookSettings` (``max_tries`` is ``attempts``)."""

    def __init__(self, timeout_s: float = 10.0, first_delay_s: float = 1.0,
                 max_delay_s: float = 300.0, max_tries: int = 12, **more: Any) -> None:
        super().__init__(timeout_s=timeout_s, first_delay_s=first_delay_s,
                         max_delay_s=max_delay_s, attempts=max_tries, **more)

    @property
    def max_tries(self) -> int:
        return self.attempts


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Akobridge-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of
    ``f"{timestamp}.{body}"`` keyed with ``secret``."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


# -- reads and operator actions ---------------------------------------------------------------
def destination(url: str) -> str:
    """Where a URL's deliveries go: ``host:port`` (each destination is delivered to on its own,
    so a receiver that never answers delays only its own deliveries)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return url
    port = parsed.port or {"https": 443, "http": 80}.get(parsed.scheme, 0)
    return f"{parsed.host}:{port}" if parsed.host else url


def pending_by_destination(store: Store) -> dict[str, int]:
    """Pending deliveries per destination (``host:port``)."""
    counts: dict[str, int] = {}
    for url, n in store.db.execute(
            "SELECT url, count(*) FROM deliveries WHERE state='pending' GROUP BY url"):
        key = destination(url)
        counts[key] = counts.get(key, 0) + int(n)
    return counts


def next_try(store: Store) -> datetime | None:
    """When the earliest pending delivery is due (``None``: nothing pending)."""
    row = store.db.execute(
        "SELECT min(next_try_at) FROM deliveries WHERE state='pending'").fetchone()
    return datetime.fromisoformat(row[0]) if row and row[0] else None


def make_due(store: Store, now: datetime | None = None) -> int:
    """Make every pending delivery due now (a user asked for them: skip the backoff)."""
    with store.transaction() as db:
        cur = db.execute("UPDATE deliveries SET next_try_at=? WHERE state='pending'",
                         (iso(now or now_utc()),))
    return int(cur.rowcount)


def event_source(store: Store) -> str:
    """This state dir's random prefix of event ids (set by schema migration 5)."""
    row = store.db.execute("SELECT value FROM meta WHERE key='event_source'").fetchone()
    return str(row[0]) if row else store.instance


def event_id(source: str, event: int) -> str:
    """The ``X-Akobridge-Event-Id`` of an event: ``<state dir's source>-<event number>``."""
    return f"{source}-{event}"


def dead_letters(store: Store, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """Dead-lettered deliveries, oldest first (the order to redeliver them in).

    Each: ``id`` (the delivery), ``event_id`` (as in ``X-Akobridge-Event-Id``), ``type``,
    ``workflow_id``, ``url``, ``tries`` (posts made), ``last_error`` (why it died),
    ``held_by`` (the dead delivery it was queued behind, or ``None``), ``created_at`` (the
    event), ``queued_at``, ``last_try_at``, ``dead_at`` (ISO 8601 UTC, or ``None``).
    """
    source = event_source(store)
    rows = store.db.execute(
        "SELECT d.id, d.event_id, e.type, d.workflow_id, d.url, d.tries, d.last_error,"
        " d.held_by, e.created_at, d.queued_at, d.last_try_at, d.dead_at FROM deliveries d"
        " JOIN events e ON e.id=d.event_id WHERE d.state='dead' ORDER BY d.id LIMIT ? OFFSET ?",
        (max(0, int(limit)), max(0, int(offset))),
    ).fetchall()
    return [{**dict(r), "event_id": event_id(source, r["event_id"])} for r in rows]


def dead_letter_count(store: Store) -> int:
    """How many deliveries are dead-lettered."""
    return int(store.db.execute(
        "SELECT count(*) FROM deliveries WHERE state='dead'").fetchone()[0])


def redeliver(store: Store, delivery_id: int) -> bool:
    """Queue a dead-lettered delivery again: pending, due now, tries reset, its max age counted
    from now; with it the later deliveries to that URL for that workflow that died because
    they were queued behind it (or behind the delivery it was itself queued behind). They
    keep their places: per (workflow, URL) the oldest pending delivery goes first. ``False``
    if ``delivery_id`` is not a dead letter. The delivery loop picks them up (``poke`` it).

    Redelivering a delivery that was itself held behind another one sends it (and those
    after it) before that earlier one: the operator's choice; redeliver the earliest to keep
    the receiver's order."""
    now = iso(now_utc())
    with store.transaction() as db:
        row = db.execute("SELECT workflow_id, url FROM deliveries WHERE id=? AND state='dead'",
                         (delivery_id,)).fetchone()
        if row is None:
            return False
        cur = db.execute(
            "UPDATE deliveries SET state='pending', tries=0, next_try_at=?, queued_at=?,"
            " dead_at=NULL, held_by=NULL WHERE state='dead' AND (id=? OR (workflow_id=?"
            " AND url=? AND id>? AND held_by IS NOT NULL AND held_by<=?))",
            (now, now, delivery_id, row[0], row[1], delivery_id, delivery_id))
    log.info("webhook redelivery queued", delivery=delivery_id, deliveries=cur.rowcount)
    return True


# -- delivery ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Outcome:
    error: str | None = None
    """Why the post failed (``None``: delivered)."""
    posted: bool = True
    dead: str | None = None
    """Dead-letter now, for this reason (not posted again)."""


class Deliverer:
    """Posts pending deliveries, per (workflow, URL) strictly in event order.

    Destinations are independent: in one pass, each destination's deliveries are posted on
    its own thread, so a receiver that accepts and never answers costs only its own timeout.
    """

    def __init__(self, store: Store, settings: WebhookSettings | None = None,
                 client: httpx.Client | None = None, only: str | None = None) -> None:
        self.store = store
        self.settings = settings or WebhookSettings()
        self.only = only
        """Deliver to this destination (``host:port``) only."""
        self.client = client or httpx.Client(
            timeout=self.settings.timeout_s, headers={"User-Agent": "akobridge"},
            follow_redirects=False,  # a redirect could lead past the URL policy
            trust_env=False,  # a proxy would resolve names the policy never saw
        )
        self.source = event_source(store)
        self.idle = False
        """The last pass found nothing pending (for this destination)."""

    def _due_heads(self, now: datetime) -> list[sqlite3.Row]:
        heads = self.store.db.execute(
            "SELECT d.id, d.event_id, d.workflow_id, d.url, d.tries, d.next_try_at, d.queued_at,"
            " e.type, e.payload FROM deliveries d JOIN events e ON e.id=d.event_id"
            " WHERE d.id IN (SELECT min(id) FROM deliveries WHERE state='pending'"
            " GROUP BY workflow_id, url) ORDER BY d.id"
        ).fetchall()
        mine = [h for h in heads if self.only is None or destination(h["url"]) == self.only]
        self.idle = not mine
        return [h for h in mine if datetime.fromisoformat(h["next_try_at"]) <= now]

    def deliver_due(self, now: datetime | None = None) -> int:
        """One pass over the outbox; returns how many deliveries were tried (posted, or
        dead-lettered without a post)."""
        heads = self._due_heads(now or now_utc())
        groups: dict[str, list[sqlite3.Row]] = {}
        for row in heads:
            groups.setdefault(destination(row["url"]), []).append(row)
        if len(groups) <= 1:
            for row in heads:
                self._record(row, self._try(row))
            return len(heads)

        def try_all(rows: list[sqlite3.Row]) -> list[tuple[sqlite3.Row, _Outcome]]:
            return [(r, self._try(r)) for r in rows]

        with ThreadPoolExecutor(min(len(groups), 16),
                                thread_name_prefix="akb-webhook") as pool:
            for done in pool.map(try_all, groups.values()):
                for row, outcome in done:  # recorded on this thread's store connection
                    self._record(row, outcome)
        return len(heads)

    def _try(self, row: sqlite3.Row) -> _Outcome:
        """Check the age and the URL policy, then post."""
        queued = datetime.fromisoformat(row["queued_at"] or row["next_try_at"])
        if (now_utc() - queued).total_seconds() > self.settings.max_age_s:
            return _Outcome(posted=False, dead=f"older than max_age "
                            f"({_span(self.settings.max_age_s)}) after {row['tries']} tries;"
                            f" not sent again")
        try:
            addresses = self.settings.policy.addresses(row["url"])
        except UrlRefused as exc:
            return _Outcome(posted=False, dead=f"refused by the URL policy: {exc}")
        except OSError as exc:  # the name does not resolve (now): like a refused connection
            return _Outcome(error=f"cannot resolve the host: {exc}")
        body = row["payload"].encode("utf-8")
        headers = {"Content-Type": "application/json", "X-Akobridge-Event": row["type"],
                   "X-Akobridge-Delivery": str(row["id"]),
                   EVENT_ID: event_id(self.source, row["event_id"])}
        if self.settings.secret is not None:
            stamp = int(time.time())
            headers[TIMESTAMP] = str(stamp)
            headers[SIGNATURE] = sign(self.settings.secret, stamp, body)
        return _Outcome(error=self._post(row["url"], addresses, body, headers))

    def _post(self, url: str, addresses: list[str], body: bytes,
              headers: dict[str, str]) -> str | None:
        """POST to the first checked address that takes the connection."""
        try:
            parsed = httpx.URL(url)
            host = parsed.raw_host.decode("ascii")
            pinned = {**headers, "Host": parsed.netloc.decode("ascii").rpartition("@")[2]}
            extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
            error: str | None = "no address"
            for address in addresses:
                request = self.client.build_request(
                    "POST", parsed.copy_with(host=address), content=body, headers=pinned,
                    extensions=extensions)
                try:
                    resp = self.client.send(request, stream=True)  # the body is never read
                except httpx.ConnectError as exc:
                    error = f"ConnectError: {exc} ({address})"
                    continue
                resp.close()
                return None if resp.is_success else f"HTTP {resp.status_code}"
            return error
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        except (ValueError, TypeError) as exc:  # e.g. a URL httpx cannot use
            return f"{type(exc).__name__}: {exc}"

    def _record(self, row: sqlite3.Row, outcome: _Outcome) -> None:
        now = now_utc()
        tries = row["tries"] + (1 if outcome.posted else 0)
        delivery_id = row["id"]
        with self.store.transaction() as db:
            if outcome.posted and outcome.error is None:
                db.execute(
                    "UPDATE deliveries SET state='delivered', tries=?, delivered_at=?,"
                    " last_try_at=?, last_error=NULL WHERE id=?",
                    (tries, iso(now), iso(now), delivery_id),
                )
                WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
                return
            reason = outcome.dead
            if reason is None and tries >= self.settings.attempts:
                reason = f"{tries} tries failed, the last: {outcome.error}"
            if reason is None:
                db.execute(
                    "UPDATE deliveries SET tries=?, last_error=?, last_try_at=?, next_try_at=?"
                    " WHERE id=?", (tries, outcome.error, iso(now),
                                    iso(now + timedelta(seconds=self.settings.delay(tries))),
                                    delivery_id))
            else:
                held = self._dead_letter(db, row, tries, reason, now, outcome.posted)
        if outcome.posted:
            WEBHOOK_DELIVERIES.labels(outcome="failed").inc()
        if reason is None:
            log.warning("webhook delivery failed", delivery=delivery_id, url=row["url"],
                        tries=tries, error=outcome.error)
            return
        WEBHOOK_DELIVERIES.labels(outcome="dead").inc(1 + held)
        log.error("webhook delivery dead-lettered", delivery=delivery_id, url=row["url"],
                  tries=tries, reason=reason, held_behind=held)

    @staticmethod
    def _dead_letter(db: sqlite3.Connection, row: sqlite3.Row, tries: int, reason: str,
                     now: datetime, posted: bool) -> int:
        """Dead-letter ``row`` and the pending deliveries queued behind it (same workflow and
        URL); how many were behind it."""
        db.execute("UPDATE deliveries SET state='dead', tries=?, last_error=?, dead_at=?,"
                   " last_try_at=coalesce(?, last_try_at) WHERE id=?",
                   (tries, reason, iso(now), iso(now) if posted else None, row["id"]))
        cur = db.execute(
            "UPDATE deliveries SET state='dead', dead_at=?, held_by=?, last_error=?"
            " WHERE state='pending' AND workflow_id=? AND url=? AND id>?",
            (iso(now), row["id"], f"not sent: delivery {row['id']} before it to this URL is"
             " dead (redelivering it sends this one too)", row["workflow_id"], row["url"],
             row["id"]))
        return int(cur.rowcount)


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


class DeliveryLoop(threading.Thread):
    """Delivers in the background: one thread per destination with deliveries pending, each
    on its own store connection, so one slow or black-holed receiver never holds up another.
    A destination's thread ends when it has nothing pending and is started again when it has.
    """

    def __init__(self, store_path: Any, settings: WebhookSettings | None = None,
                 interval_s: float = 0.1, idle_s: float | None = None) -> None:
        """``idle_s``: how often the outbox is read when nothing is pending, for an owner
        that calls :meth:`poke` after every state change it commits (default
        ``interval_s``): the daemon's ten reads a second were a quarter of its idle CPU."""
        super().__init__(name="akobridge-webhooks", daemon=True)
        self._path = store_path
        self.settings = settings or WebhookSettings()
        self._interval = interval_s
        self._idle = max(interval_s, idle_s or interval_s)
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self._lanes: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._poked = False

    def run(self) -> None:
        store = Store(self._path)
        try:
            while not self.stopping.is_set():
                self._poked = False  # a poke from here on is not lost
                pending: dict[str, int] = {}
                try:
                    pending = pending_by_destination(store)
                    WEBHOOK_QUEUE.set(sum(pending.values()))
                    for dest in pending:
                        self._ensure_lane(dest)
                except Exception:  # keep going; the rows stay pending
                    log.exception("webhook loop error")
                if not self._poked:
                    self.wake.wait(self._interval if pending else self._idle)
        finally:
            store.close()

    def _ensure_lane(self, dest: str) -> None:
        with self._lock:
            lane = self._lanes.get(dest)
            if lane is not None and lane.is_alive():
                return
            lane = threading.Thread(target=self._lane, args=(dest,),
                                    name=f"akb-webhooks-{dest}", daemon=True)
            self._lanes[dest] = lane
            lane.start()

    def _lane(self, dest: str) -> None:
        store = Store(self._path)
        deliverer = Deliverer(store, self.settings, only=dest)
        try:
            while not self.stopping.is_set():
                try:
                    deliverer.deliver_due()
                except Exception:  # keep delivering; the row stays pending
                    log.exception("webhook loop error", destination=dest)
                if deliverer.idle:
                    return  # nothing pending here; the loop starts a lane again when needed
                self.wake.wait(self._interval)
        finally:
            deliverer.client.close()
            store.close()

    def poke(self) -> None:
        """Look at the outbox now (a pulse: every waiting thread wakes once)."""
        self._poked = True
        self.wake.set()
        self.wake.clear()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop looking; a post in flight is abandoned (its row stays pending)."""
        self.stopping.set()
        self.wake.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            lanes = list(self._lanes.values())
        for lane in [self, *lanes]:
            if lane.is_alive() and lane is not threading.current_thread():
                lane.join(max(0.0, deadline - time.monotonic()))


__all__ = ["EVENT_ID", "SIGNATURE", "TIMESTAMP", "Deliverer", "DeliveryLoop", "DeliveryPolicy",
           "WebhookSettings", "dead_letter_count", "dead_letters", "destination", "event_id",
           "event_source", "make_due", "next_try", "pending_by_destination", "read_secret",
           "redeliver", "sign"]

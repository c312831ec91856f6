"""Sends the queued watcher e-mails (``peak_notifications`` rows of kind ``email``/``user``,
state ``pending``) over SMTP with the daemon config's ``smtp:`` settings.

- Connection: ``tls: starttls`` upgrades a plain connection with STARTTLS (required: no
  fallback to plain text); ``tls: ssl`` speaks TLS from the start (SMTPS, port 465 unless
  given); ``tls: none`` is plain SMTP. Without ``tls``, the older settings decide
  (``starttls: true``; port 465; else plain). The server's certificate is verified, with its
  host name, against the system's CAs or only those of ``ca_file``. With ``username``, it logs
  in (after the TLS handshake, when there is one) with the first line of ``password_file``
  (mode 0600, checked like the other secret files); the password is never logged nor kept in
  a repr.
- Retries: a failed send is tried again after 2 s, doubling up to 10 min (×0.5-1 jitter), at
  most ``ATTEMPTS`` times and for ``MAX_AGE_S``; a permanent refusal (a 5xx reply) ends it at
  once. Given-up rows stay in the table as ``dead`` with the reason.
- At least once: a crash after the server took a message and before the row was marked sends it
  again, with the same ``Message-ID`` and ``X-Akobridge-Event-Id`` (the outbox event's id).
"""

from __future__ import annotations

import json
import random
import smtplib
import sqlite3
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from bridge.notify.webhooks import EVENT_ID, event_id, event_source, read_secret
from bridge.store import Store, iso, now_utc

if TYPE_CHECKING:
    from bridge.daemon.config import SmtpTls

log = structlog.get_logger("akobridge.email")

ATTEMPTS = 20
MAX_AGE_S = 86400.0
FIRST_DELAY_S = 2.0
MAX_DELAY_S = 600.0
BATCH = 50


@dataclass(frozen=True)
class EmailSettings:
    """Where and how to send (the daemon config's ``smtp:`` section, password read)."""

    host: str
    port: int = 25
    sender: str = "akobridge@localhost"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: SmtpTls = "none"
    """``starttls``, ``ssl`` (TLS from the start) or ``none``."""
    ca_file: Path | None = None
    """The CA certificates to verify the server with (default: the system's)."""
    timeout_s: float = 30.0

    def tls_context(self) -> ssl.SSLContext:
        """Verifies the server's certificate and host name (``OSError``/``ssl.SSLError``
        when ``ca_file`` cannot be read or holds no certificate)."""
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    @classmethod
    def from_daemon(cls, cfg: Any) -> EmailSettings | None:
        """From ``cfg.smtp``; ``None`` without ``smtp.host`` (e-mails then stay queued).
        Raises ``ValueError`` naming the field when the password file or the CA file is
        unusable."""
        s = cfg.smtp
        if not s.host:
            return None
        source = getattr(cfg, "source", None) or "config"
        password = None
        if s.password_file is not None:
            password = read_secret(s.password_file, f"{source}: smtp.password_file")
        if password is not None and not s.username:
            raise ValueError(f"{source}: smtp.username: "
                             "give the user name that goes with password_file")
        settings = cls(host=s.host, port=s.server_port, sender=s.sender, username=s.username,
                       password=password, tls=s.tls_mode, ca_file=s.ca_file)
        if settings.ca_file is not None:
            try:
                settings.tls_context()
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"{source}: smtp.ca_file: cannot load {settings.ca_file} "
                                 f"as PEM CA certificates: {exc}") from None
        return settings


def delay(tries: int) -> float:
    """Seconds before the next try after ``tries`` failed ones."""
    base = min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** max(0, tries - 1))
    return float(base * random.uniform(0.5, 1.0))


class Mailer:
    """Sends the due e-mails, one SMTP session per pass; callable as a scheduler job."""

    def __init__(self, store_path: Path, settings: EmailSettings) -> None:
        self.path = store_path
        self.settings = settings
        self._store: Store | None = None

    def __call__(self) -> int:
        try:
            return self.send_due()
        except Exception:  # noqa: BLE001 - a bug or a locked store: logged, tried again
            log.exception("e-mail pass failed")
            return 0

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.path, handed_over=True)
        return self._store

    def send_due(self, now: datetime | None = None) -> int:
        """One pass: every due e-mail tried once; how many were sent."""
        rows = self.store.db.execute(
            "SELECT * FROM peak_notifications WHERE state='pending' AND next_try_at<=?"
            " ORDER BY id LIMIT ?", (iso(now or now_utc()), BATCH)).fetchall()
        if not rows:
            return 0
        source = event_source(self.store)
        try:
            smtp = self._connect()
        except (OSError, smtplib.SMTPException) as exc:
            for row in rows:
                self._record(row, _reason(exc), permanent=_permanent(exc))
            return 0
        sent = 0
        with smtp:
            for row in rows:
                try:
                    smtp.send_message(self.message(row, source))
                except (OSError, smtplib.SMTPException) as exc:
                    self._record(row, _reason(exc), permanent=_permanent(exc))
                    if isinstance(exc, OSError | smtplib.SMTPServerDisconnected):
                        break  # the session is gone; the rest wait for the next pass
                else:
                    self._record(row, None)
                    sent += 1
        return sent

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        context = s.tls_context() if s.tls != "none" else None
        smtp: smtplib.SMTP
        if s.tls == "ssl":
            smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_s, context=context)
        else:
            smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
        try:
            smtp.ehlo()
            if s.tls == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if s.username and s.password is not None:
                smtp.login(s.username, s.password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def message(self, row: sqlite3.Row, source: str) -> EmailMessage:
        """The e-mail of a queued row (the same headers on every try)."""
        ident = event_id(source, row["event_id"])
        msg = EmailMessage()
        msg["From"] = self.settings.sender
        msg["To"] = ", ".join(json.loads(row["recipients"]))
        msg["Subject"] = row["subject"]
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = f"<{ident}@akobridge>"
        msg[EVENT_ID] = ident
        msg.set_content(row["body"])
        return msg

    def _record(self, row: sqlite3.Row, error: str | None, *, permanent: bool = False) -> None:
        now = now_utc()
        tries = row["tries"] + 1
        created = datetime.fromisoformat(row["created_at"])
        dead = error is not None and (permanent or tries >= ATTEMPTS
                                      or (now - created).total_seconds() > MAX_AGE_S)
        with self.store.transaction() as db:
            if error is None:
                db.execute("UPDATE peak_notifications SET state='sent', tries=?, sent_at=?,"
                           " last_error=NULL WHERE id=?", (tries, iso(now), row["id"]))
            elif dead:
                db.execute("UPDATE peak_notifications SET state='dead', tries=?, last_error=?"
                           " WHERE id=?", (tries, error, row["id"]))
            else:
                db.execute("UPDATE peak_notifications SET tries=?, last_error=?, next_try_at=?"
                           " WHERE id=?", (tries, error,
                                           iso(now + timedelta(seconds=delay(tries))),
                                           row["id"]))
        facts = {"notification": row["id"], "watcher_event": row["event"], "tries": tries}
        if error is None:
            log.info("e-mail sent", **facts)
        elif dead:
            log.error("e-mail given up", error=error, **facts)
        else:
            log.warning("e-mail failed", error=error, **facts)


def _permanent(exc: BaseException) -> bool:
    """A 5xx reply (refused sender or recipients, bad credentials) is not tried again."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in exc.recipients.values())
    return isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


__all__ = ["EmailSettings", "Mailer", "delay"]

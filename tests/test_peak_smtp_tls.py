"""Watcher e-mail over TLS (``smtp.tls: starttls | ssl | none``, ``smtp.ca_file``): a real
``akobridge serve`` sends through aiosmtpd with a self-signed certificate, by STARTTLS on a
server that demands it before AUTH, and by TLS from the first byte (SMTPS) on an unprivileged
port, logging in over the encrypted connection only. The certificate is verified: without
``ca_file`` it is refused, and so is a host name it does not name; a server without STARTTLS
is an error, not a plain fallback. Config mistakes name their field."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from daemon_helpers import _merge
from test_peak_definitions_api import peak_daemon
from test_peak_executions_api import definition, execute, wait
from test_peak_watchers import SMTP_PASSWORD, SMTP_USER, Mailbox, _config, _free_port, mail
from test_webhooks_durable import _certificate

from bridge.daemon.config import DaemonConfigError, config_from_mapping
from bridge.notify.email import EmailSettings, Mailer


@dataclass
class TlsMailbox(Mailbox):
    """A mailbox that also notes whether each login arrived over TLS."""

    logins_over_tls: list[bool] = field(default_factory=list)

    def auth(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
             data: Any) -> AuthResult:
        assert server.transport is not None
        self.logins_over_tls.append(server.transport.get_extra_info("ssl_object") is not None)
        return super().auth(server, session, envelope, mechanism, data)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for ``localhost``, and its key."""
    return _certificate(tmp_path_factory.mktemp("smtp-cert"))


def server_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    return context


@pytest.fixture(scope="module", params=["starttls", "ssl"])
def server(request: pytest.FixtureRequest,
           cert: tuple[Path, Path]) -> Iterator[tuple[str, TlsMailbox]]:
    """``starttls``: a plain listener offering STARTTLS, refusing mail and AUTH before it;
    ``ssl``: TLS from the first byte (aiosmtpd then counts no STARTTLS, so it is told not to
    demand one before AUTH; the mailbox checks the login's transport itself)."""
    mode: str = request.param
    box = TlsMailbox(port=_free_port())
    if mode == "starttls":
        controller = Controller(box, hostname="127.0.0.1", port=box.port,
                                authenticator=box.auth, tls_context=server_context(cert),
                                require_starttls=True, auth_require_tls=True)
    else:
        controller = Controller(box, hostname="127.0.0.1", port=box.port,
                                authenticator=box.auth, ssl_context=server_context(cert),
                                auth_require_tls=False)
    controller.start()
    yield mode, box
    controller.stop()


def smtp_config(tmp: Path, port: int, **smtp: Any) -> dict[str, Any]:
    """test_peak_watchers' daemon config (AUTH with a password file) with these smtp keys."""
    return _merge(_config(tmp, port), {"smtp": {"host": "localhost", **smtp}})


def test_watcher_mail_goes_over_tls_with_auth(tmp_path: Path, cert: tuple[Path, Path],
                                              server: tuple[str, TlsMailbox]) -> None:
    mode, box = server
    config = smtp_config(tmp_path, box.port, tls=mode, ca_file=str(cert[0]))
    for api in peak_daemon(tmp_path, config):
        to = f"{mode}@test.example"
        wf_id = api.create(definition(f"mail-{mode}", {"a": {"command": "true"}},
                                      watchers=[mail("m", [to], success=True)]))
        assert wait(api, wf_id, execute(api, wf_id), {"Success", "Failed"})["status"] \
            == "Success"
        [msg] = box.wait_to(to)
        assert msg["Subject"] == f"[akobridge] mail-{mode} success"
        assert box.logins == [(SMTP_USER, SMTP_PASSWORD)] and box.logins_over_tls == [True]
        assert SMTP_PASSWORD not in api.daemon.output()


def settings(port: int, **kw: Any) -> EmailSettings:
    return EmailSettings(host="localhost", port=port, sender="bridge@test.example",
                         username=SMTP_USER, password=SMTP_PASSWORD, timeout_s=5, **kw)


def connect(settings: EmailSettings, tmp_path: Path) -> None:
    with Mailer(tmp_path / "unused.db", settings)._connect() as smtp:
        smtp.noop()


def test_the_certificate_is_verified(tmp_path: Path, cert: tuple[Path, Path],
                                     server: tuple[str, TlsMailbox]) -> None:
    mode, box = server
    connect(settings(box.port, tls=mode, ca_file=cert[0]), tmp_path)  # trusted: fine
    with pytest.raises(ssl.SSLCertVerificationError, match="self.signed|unable to get"):
        connect(settings(box.port, tls=mode), tmp_path)  # the system's CAs: refused
    wrong_name = EmailSettings(host="127.0.0.1", port=box.port, tls=mode, ca_file=cert[0],
                               timeout_s=5)
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        connect(wrong_name, tmp_path)  # the certificate names localhost only


def test_starttls_is_required_not_a_fallback(tmp_path: Path) -> None:
    box = Mailbox(port=_free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)  # no STARTTLS offered
    controller.start()
    try:
        with pytest.raises(smtplib.SMTPNotSupportedError, match="STARTTLS"):
            connect(settings(box.port, tls="starttls"), tmp_path)
    finally:
        controller.stop()


@pytest.mark.parametrize(("smtp", "mode", "port"), [
    ({}, "none", 25),
    ({"port": 465}, "ssl", 465),                       # as before tls existed
    ({"starttls": True, "port": 587}, "starttls", 587),
    ({"tls": "ssl"}, "ssl", 465),                      # SMTPS's port unless given
    ({"tls": "ssl", "port": 2465}, "ssl", 2465),
    ({"tls": "starttls", "starttls": True}, "starttls", 25),
    ({"tls": "none", "port": 465}, "none", 465),
])
def test_tls_mode_and_port(smtp: dict[str, Any], mode: str, port: int) -> None:
    s = config_from_mapping({"smtp": {"host": "mail.test", **smtp}}).smtp
    assert (s.tls_mode, s.server_port) == (mode, port)


@pytest.mark.parametrize(("smtp", "field", "says"), [
    ({"tls": "tls1.3"}, "smtp.tls", "'starttls', 'ssl' or 'none'"),
    ({"tls": "ssl", "starttls": True}, "smtp.tls", "contradicts starttls: true"),
    ({"tls": "none", "starttls": True}, "smtp.tls", "contradicts starttls: true"),
    ({"ca_file": "/etc/ssl/ca.pem"}, "smtp.ca_file", "only with tls: starttls or tls: ssl"),
    ({"tls": "none", "ca_file": "/etc/ssl/ca.pem"}, "smtp.ca_file", "plain text"),
])
def test_bad_tls_settings_name_the_field(smtp: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(DaemonConfigError) as err:
        config_from_mapping({"smtp": {"host": "mail.test", **smtp}})
    assert f"{field}:" in str(err.value) and says in str(err.value), str(err.value)


def test_an_unusable_ca_file_stops_the_daemon_naming_it(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    for path, says in ((tmp_path / "missing.pem", "No such file"),
                       (not_pem, "as PEM CA certificates")):
        cfg = config_from_mapping({"smtp": {"host": "mail.test", "tls": "starttls",
                                            "ca_file": str(path)}}, tmp_path / "bridge.yaml")
        with pytest.raises(ValueError, match=r"bridge\.yaml: smtp\.ca_file: cannot load") as err:
            EmailSettings.from_daemon(cfg)
        assert says in str(err.value)
    relative = config_from_mapping({"smtp": {"host": "h", "tls": "ssl", "ca_file": "ca.pem"}},
                                   tmp_path / "bridge.yaml")
    assert relative.smtp.ca_file == tmp_path / "ca.pem"  # relative to the config file

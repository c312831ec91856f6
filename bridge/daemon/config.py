"""The daemon's config file (``akobridge serve --config bridge.yaml``).

Every field is checked on load; a problem names the file, the field and what is wrong.
Relative paths are relative to the config file's directory; ``~`` is the user's home.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bridge.notify.webhooks import MAX_ATTEMPTS, WebhookSettings
from bridge.spec.quantities import parse_duration_s
from runtimes.config import read_mapping, validation_message

MiB = 1024 * 1024


class DaemonConfigError(ValueError):
    """The daemon config is wrong; the message names the file, field and problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _seconds(value: object) -> float:
    return float(parse_duration_s(value))


def _size(value: object) -> int:
    """Bytes in ``1048576``, ``"512KiB"``, ``"1MiB"``, ``"2MB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        text = value.strip()
        units = {"KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB, "KB": 1000, "MB": 10**6,
                 "GB": 10**9, "K": 1024, "M": MiB, "G": 1024 * MiB, "B": 1}
        for unit, factor in units.items():
            if text.endswith(unit) and text[: -len(unit)].strip().isdigit():
                n = int(text[: -len(unit)]) * factor
                if n > 0:
                    return n
        if text.isdigit() and int(text) > 0:
            return int(text)
    raise ValueError(f"not a size: {value!r} (use e.g. 1MiB, 512KiB or a number of bytes)")


class Listener(_Strict):
    """One address the API listens on: ``unix:/path/api.sock`` or ``http://host:port``."""

    url: str

    @property
    def is_unix(self) -> bool:
        return self.url.startswith("unix:")

    @property
    def path(self) -> Path:
        return Path(self.url[len("unix:"):])

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 0

    @property
    def loopback(self) -> bool:
        if self.is_unix:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


def parse_listener(value: str) -> Listener:
    """``unix:/abs/path``, ``http://127.0.0.1:8080``, ``127.0.0.1:8080`` or ``:8080``."""
    text = value.strip()
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError(f"{value!r}: a unix socket path must be absolute "
                             "(unix:/run/akobridge/api.sock)")
        return Listener(url=f"unix:{path}")
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme != "http":
        raise ValueError(f"{value!r}: only http:// (put TLS in a reverse proxy) or unix: "
                         "listeners")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"{value!r}: a listener is host:port, without a path")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r}: port must be 0-65535") from None
    if port is None:
        raise ValueError(f"{value!r}: give a port (e.g. 127.0.0.1:8080)")
    host = parts.hostname or "0.0.0.0"  # noqa: S104 - ":8080" means every address
    return Listener(url=f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}")


class ApiSettings(_Strict):
    listen: tuple[Listener, ...] = ()
    token_file: Path | None = None
    """One bearer token per line (``#`` comments); the file must be mode 0600 or stricter."""
    allow_loopback_without_token: bool = False
    """Serve 127.0.0.1 without a token: every user of a shared login node can reach it."""
    max_body: int = MiB
    """Largest request body accepted (413 above)."""

    @field_validator("listen", mode="before")
    @classmethod
    def _listeners(cls, v: object) -> object:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list | tuple):
            return v
        out = []
        for item in v:
            if not isinstance(item, str):
                raise ValueError(f"{item!r}: a listener is a string (unix:/path or host:port)")
            out.append(parse_listener(item))
        return tuple(out)

    @field_validator("max_body", mode="before")
    @classmethod
    def _body(cls, v: object) -> int:
        return _size(v)


class WebhookDefaults(_Strict):
    secret_file: Path | None = None
    """HMAC-SHA256 signing secret (first line of the file); unsigned without it."""
    attempts: int = Field(default=WebhookSettings.attempts, ge=1, le=MAX_ATTEMPTS)
    max_age: float = WebhookSettings.max_age_s
    first_delay: float = WebhookSettings.first_delay_s
    max_delay: float = WebhookSettings.max_delay_s
    timeout: float = WebhookSettings.timeout_s
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    @field_validator("max_age", "first_delay", "max_delay", "timeout", mode="before")
    @classmethod
    def _duration(cls, v: object) -> float:
        return _seconds(v)


class SpoolSettings(_Strict):
    dir: Path | None = None
    """``<dir>/incoming`` is watched; files move to ``accepted/`` or ``rejected/``."""
    interval: float = 1.0
    max_file: int = MiB

    @field_validator("interval", mode="before")
    @classmethod
    def _duration(cls, v: object) -> float:
        return _seconds(v)

    @field_validator("max_file", mode="before")
    @classmethod
    def _file(cls, v: object) -> int:
        return _size(v)


class StagingSettings(_Strict):
    allowed_roots: tuple[Path, ...] = ()
    """Local directories API and spool workflows may stage from (and back to)."""


class SmtpSettings(_Strict):
    host: str | None = None
    port: int = Field(default=25, ge=1, le=65535)
    sender: str = "akobridge@localhost"
    username: str | None = None
    password_file: Path | None = None
    starttls: bool = False


class DaemonConfig(_Strict):
    """``bridge.yaml``."""

    state_dir: Path | None = None
    clusters_dir: Path | None = None
    api: ApiSettings = ApiSettings()
    webhooks: WebhookDefaults = WebhookDefaults()
    spool: SpoolSettings = SpoolSettings()
    staging: StagingSettings = StagingSettings()
    smtp: SmtpSettings = SmtpSettings()
    source: Path | None = None
    """The file it was read from (not a YAML key)."""

    def tokens(self) -> list[str]:
        """The API tokens from ``api.token_file`` (checked: exists, 0600, not empty)."""
        path = self.api.token_file
        if path is None:
            return []
        where = f"{self.source or 'config'}: api.token_file"
        tokens = [line.strip() for line in _private_text(path, where).splitlines()
                  if line.strip() and not line.strip().startswith("#")]
        if not tokens:
            raise DaemonConfigError(f"{where}: {path} holds no token (one per line)")
        short = [t for t in tokens if len(t) < 16]
        if short:
            raise DaemonConfigError(f"{where}: tokens must be at least 16 characters "
                                    "(`openssl rand -hex 32` makes one)")
        return tokens

    def webhook_secret(self) -> str | None:
        """The signing secret: the first line of ``webhooks.secret_file`` (checked: 0600)."""
        path = self.webhooks.secret_file
        if path is None:
            return None
        where = f"{self.source or 'config'}: webhooks.secret_file"
        lines = _private_text(path, where).strip().splitlines()
        if not lines or not lines[0].strip():
            raise DaemonConfigError(f"{where}: {path} is empty")
        return lines[0].strip()

    def check(self) -> list[str]:
        """Cross-field rules; returns warnings (errors are raised)."""
        where = self.source or "config"
        warnings = []
        if not self.api.listen:
            raise DaemonConfigError(f"{where}: api.listen: give at least one listener "
                                    "(unix:/path/api.sock or 127.0.0.1:8080)")
        has_tokens = self.api.token_file is not None
        for i, lst in enumerate(self.api.listen):
            if lst.is_unix:
                continue
            if not lst.loopback and not has_tokens:
                raise DaemonConfigError(
                    f"{where}: api.listen[{i}]: {lst.url} is reachable from other hosts; "
                    "set api.token_file (bearer tokens are required off loopback)")
            if lst.loopback and not has_tokens:
                if not self.api.allow_loopback_without_token:
                    raise DaemonConfigError(
                        f"{where}: api.listen[{i}]: {lst.url} has no token: set "
                        "api.token_file, listen on a unix: socket, or set "
                        "api.allow_loopback_without_token: true")
                warnings.append(
                    f"{lst.url} accepts requests without a token: every user of this host "
                    "can submit and cancel workflows; prefer a unix: socket or a token_file")
        self.tokens()
        self.webhook_secret()
        for i, root in enumerate(self.staging.allowed_roots):
            if not root.is_absolute():
                raise DaemonConfigError(f"{where}: staging.allowed_roots[{i}]: must be an "
                                        "absolute path")
        return warnings


def _private_text(path: Path, where: str) -> str:
    """A secrets file's text, refused when the group or others may read it."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DaemonConfigError(f"{where}: cannot read {path}: {exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DaemonConfigError(
            f"{where}: {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o});"
            f" run `chmod 600 {path}`")
    return text


def _resolve(base: Path, value: Any) -> Any:
    if isinstance(value, str) and value:
        p = Path(os.path.expanduser(value))
        return str(p if p.is_absolute() else (base / p))
    return value


def load_daemon_config(path: Path) -> DaemonConfig:
    """Read and check ``bridge.yaml``; :class:`DaemonConfigError` names what is wrong."""
    data = read_mapping(path, DaemonConfigError, "(state_dir, api, webhooks, …)",
                        allow_empty=True)
    return config_from_mapping(data, path)


def config_from_mapping(data: dict[str, Any], path: Path | None = None) -> DaemonConfig:
    base = path.parent.resolve() if path else Path.cwd()
    data = dict(data)
    for key in ("state_dir", "clusters_dir"):
        data[key] = _resolve(base, data.get(key))
    for section, keys in {"api": ["token_file"], "webhooks": ["secret_file"],
                          "spool": ["dir"], "smtp": ["password_file"]}.items():
        if isinstance(data.get(section), dict):
            data[section] = {k: (_resolve(base, v) if k in keys else v)
                             for k, v in data[section].items()}
    staging = data.get("staging")
    if isinstance(staging, dict) and isinstance(staging.get("allowed_roots"), list):
        staging = dict(staging)
        staging["allowed_roots"] = [
            os.path.expanduser(r) if isinstance(r, str) else r for r in staging["allowed_roots"]]
        data["staging"] = staging
    try:
        cfg = DaemonConfig.model_validate({**data, "source": path})
    except ValidationError as exc:
        raise DaemonConfigError(validation_message(exc, path or "config")) from None
    return cfg


__all__ = ["ApiSettings", "DaemonConfig", "DaemonConfigError", "Listener", "load_daemon_config",
           "parse_listener"]

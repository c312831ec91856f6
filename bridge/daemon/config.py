"""The daemon's config file (``akobridge serve --config bridge.yaml``).

Every field is checked on load; a problem names the file, the field and what is wrong.
Relative paths are relative to the config file's directory; ``~`` is the user's home.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from bridge.notify.webhooks import MAX_ATTEMPTS, WebhookSettings
from bridge.spec.quantities import parse_duration_s, parse_memory_mib, parse_storage_mib
from runtimes import safety
from runtimes.config import read_mapping, validation_message

if TYPE_CHECKING:
    from bridge.peak.catalogue import Catalogue

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


SMTPS_PORT = 465
SmtpTls = Literal["starttls", "ssl", "none"]


def smtp_tls_mode(tls: SmtpTls | None, starttls: bool, port: int) -> SmtpTls:
    """How an SMTP connection is protected: ``tls`` when given; else what the settings meant
    before it existed (``starttls: true``: STARTTLS; port 465: TLS from the start; plain)."""
    if tls is not None:
        return tls
    return "starttls" if starttls else "ssl" if port == SMTPS_PORT else "none"


class SmtpSettings(_Strict):
    """``smtp:``: where watcher e-mails go (docs/peak.md "Watchers")."""

    host: str | None = None
    port: int = Field(default=25, ge=1, le=65535)
    """Default 465 with ``tls: ssl``, else 25."""
    sender: str = "akobridge@localhost"
    username: str | None = None
    password_file: Path | None = None
    starttls: bool = False
    """The older spelling of ``tls: starttls`` (configs that say it keep working)."""
    tls: SmtpTls | None = None
    """``starttls``: a plain connection upgraded by STARTTLS (a server that does not offer it
    is an error, never a plain fallback); ``ssl``: TLS from the first byte (SMTPS);
    ``none``: plain text. Unset: ``starttls: true`` → starttls, port 465 → ssl, else none."""
    ca_file: Path | None = None
    """PEM file of the CA certificate(s) that sign the server's certificate, trusted instead
    of the system's (a site CA, a self-signed server). The host name is checked either way."""

    @field_validator("tls")
    @classmethod
    def _tls(cls, v: SmtpTls | None, info: ValidationInfo) -> SmtpTls | None:
        if v is not None and v != "starttls" and info.data.get("starttls"):
            raise ValueError(f"tls: {v} contradicts starttls: true (tls replaces starttls: "
                             "drop that line)")
        return v

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        data = info.data
        if v is not None and "port" in data and smtp_tls_mode(
                data.get("tls"), bool(data.get("starttls")), data["port"]) == "none":
            raise ValueError("a CA file is used only with tls: starttls or tls: ssl (this "
                             "connection is plain text: no certificate is checked)")
        return v

    @property
    def tls_mode(self) -> SmtpTls:
        return smtp_tls_mode(self.tls, self.starttls, self.port)

    @property
    def server_port(self) -> int:
        """The port to connect to (465 for ``tls: ssl`` when ``port`` is not given)."""
        if "port" not in self.model_fields_set and self.tls_mode == "ssl":
            return SMTPS_PORT
        return self.port


PEAK_IMAGE_SCHEMES = ("docker://", "oras://", "library://")
MAX_CATCH_UP_S = 7 * 86400
"""The longest ``peak.cron_catch_up_grace`` (well inside the 90 days of kept executions,
whose request ids make a slot run once)."""


class PeakImage(_Strict):
    """One image of the Peak catalogue: ``imageId``/``imageVersionId`` → a ``.sif`` path on
    the cluster or a ``docker://``, ``oras://`` or ``library://`` reference."""

    id: int = Field(ge=1)
    version: int = Field(ge=1)
    image: str

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        safety.check_image(v, "image")
        if "://" in v and not v.startswith(PEAK_IMAGE_SCHEMES):
            raise ValueError(f"{safety.show(v)}: use a .sif path or a docker://, oras:// or "
                             "library:// reference")
        if "://" not in v and not v.endswith(".sif"):
            raise ValueError(f"{safety.show(v)}: a path must name a .sif file")
        return v


class PeakInstanceType(_Strict):
    """``resources.instanceTypeId`` → a job shape on a cluster."""

    id: int = Field(ge=1)
    cluster: str
    cpus: int = Field(ge=1, le=100_000)
    memory: str
    """A quantity such as ``4Gi`` or ``512Mi``."""
    gpus: int = Field(default=0, ge=0, le=1024)
    gpu_memory: str | None = None
    partition: str | None = None
    gres: str | None = None
    """Slurm ``--gres`` (e.g. ``gpu:a100:1``); default ``gpu:<gpus>`` when gpus > 0."""
    max_storage: str | None = None
    """The most ``resources.storage`` a step of this type may ask (e.g. ``4GB``: the
    partition's nodes' ``TmpDisk``); more is refused at create/PUT. None: no check here."""

    @field_validator("max_storage")
    @classmethod
    def _max_storage(cls, v: str | None) -> str | None:
        if v is not None:
            parse_storage_mib(v, "max_storage")
        return v

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, v: str) -> str:
        return safety.check_name(v, "cluster")

    @field_validator("memory", "gpu_memory")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is not None:
            parse_memory_mib(v)
        return v

    @field_validator("partition", "gres")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        return None if v is None else safety.check_label(v, "value")


class PeakDefaults(_Strict):
    """``GET /resources/defaults``: a step without ``resources`` gets these."""

    instance_type: int = Field(ge=1)
    storage: str = "10GB"

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        parse_storage_mib(v)
        return v


class PeakSettings(_Strict):
    """``peak:``: what the Peak-style service's ids mean here (docs/peak.md)."""

    images: tuple[PeakImage, ...] = ()
    instance_types: tuple[PeakInstanceType, ...] = ()
    defaults: PeakDefaults | None = None
    """Default: the first instance type and 10GB."""
    secrets_file: Path | None = None
    """``parameters.secrets`` values: ``NAME=value`` lines (``#`` comments), mode 0600."""
    minute_s: float = Field(default=60.0, gt=0, le=3600)
    """Seconds in a minute of watchers' ``runtimeExceeded`` (only tests shorten it)."""
    cron_catch_up: bool = False
    """After downtime, run the cron slots missed (within ``cron_catch_up_grace``) as ONE
    execution, for the latest of them; off: missed slots are not run."""
    cron_catch_up_grace: float = Field(default=3600.0, gt=0, le=MAX_CATCH_UP_S)
    """How far back (seconds, or ``30m``, ``1h``, ``1d``) a catch-up looks; at most 7 days."""

    @field_validator("cron_catch_up_grace", mode="before")
    @classmethod
    def _grace(cls, v: object) -> float:
        return _seconds(v)


class DaemonConfig(_Strict):
    """``bridge.yaml``."""

    state_dir: Path | None = None
    clusters_dir: Path | None = None
    api: ApiSettings = ApiSettings()
    webhooks: WebhookDefaults = WebhookDefaults()
    spool: SpoolSettings = SpoolSettings()
    staging: StagingSettings = StagingSettings()
    smtp: SmtpSettings = SmtpSettings()
    peak: PeakSettings = PeakSettings()
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

    def peak_secrets(self) -> dict[str, str]:
        """``peak.secrets_file`` as ``{name: value}`` (checked: 0600, one ``NAME=value`` a
        line, names as step secrets write them, each once); ``{}`` when not set."""
        path = self.peak.secrets_file
        if path is None:
            return {}
        where = f"{self.source or 'config'}: peak.secrets_file"
        found: dict[str, str] = {}
        for number, line in enumerate(_private_text(path, where).splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, value = line.partition("=")
            name = name.strip()
            try:
                safety.check_name(name, "the secret name")
            except ValueError as exc:
                raise DaemonConfigError(f"{where}: line {number}: {exc}") from None
            if not sep:
                raise DaemonConfigError(f"{where}: line {number}: write NAME=value")
            if name in found:
                raise DaemonConfigError(f"{where}: line {number}: {name} is given twice")
            found[name] = value
        return found

    def catalogue(self, clusters: list[str] | None = None) -> Catalogue:
        """The Peak catalogue of ``peak:``; with ``clusters`` (the names the clusters dir
        and the built-in ``local`` give), every instance type's cluster must be one of them."""
        from bridge.peak.catalogue import Catalogue, CatalogueError

        try:
            return Catalogue.from_config(self.peak, clusters)
        except CatalogueError as exc:
            raise DaemonConfigError(f"{self.source or 'config'}: {exc.field}: "
                                    f"{exc.message}") from None

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
        self.catalogue()
        self.peak_secrets()
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
                          "spool": ["dir"], "smtp": ["password_file", "ca_file"],
                          "peak": ["secrets_file"]}.items():
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


__all__ = ["ApiSettings", "DaemonConfig", "DaemonConfigError", "Listener", "PeakDefaults",
           "PeakImage", "PeakInstanceType", "PeakSettings", "load_daemon_config",
           "parse_listener"]

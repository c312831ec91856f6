"""Point the unmodified ``peak-sdk`` client at a bridge daemon (reference/peak-api.md).

peak-sdk builds its host in ``peak.helpers.get_base_domain``, which ``peak.session`` and
``peak.telemetry`` each import by name; both copies are replaced, or every call would also
send the token to the vendor's telemetry host. Call this before the first client is made.
peak-sdk is not a dependency of the bridge: it is imported here, lazily.
"""

from __future__ import annotations

import importlib
from typing import Any


class PeakSdkMissing(ImportError):
    """peak-sdk is not installed in this interpreter."""


def point_peak_sdk_at(url: str) -> None:
    """Make peak-sdk (session and telemetry) send every request to ``url``
    (e.g. ``http://127.0.0.1:8080``; a trailing ``/`` is dropped)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http(s) URL")
    base = url.rstrip("/")
    try:
        modules: list[Any] = [importlib.import_module(m)
                              for m in ("peak.session", "peak.telemetry")]
    except ImportError as exc:
        raise PeakSdkMissing(
            "peak-sdk is not installed in this Python (pip install peak-sdk in its own "
            "virtualenv: it pins urllib3<2, rich 14, typer<0.16, structlog<25)") from exc

    def base_domain(stage: str, subdomain: str | None = "service") -> str:
        return base

    for module in modules:
        if not hasattr(module, "get_base_domain"):
            raise PeakSdkMissing(f"{module.__name__} has no get_base_domain: this peak-sdk "
                                 "version builds its host differently")
        module.get_base_domain = base_domain


__all__ = ["PeakSdkMissing", "point_peak_sdk_at"]

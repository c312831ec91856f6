"""Which webhook URLs the bridge may post to.

A pattern is a CIDR network or a bare address (``10.0.0.0/8``, ``fd00::/8``, ``192.0.2.7``) or a
host name, exact (``hooks.example.org``) or with a leading wildcard label (``*.example.org``:
every name below it, not the name itself; ``*`` alone: every name).

The rules, first match wins:

1. only ``http`` and ``https`` URLs with a host;
2. ``deny`` entries refuse (the name or any address it resolves to);
3. the built-in denials (:data:`DEFAULT_DENY`: link-local, cloud metadata, the unspecified
   address) refuse unless an ``allow`` entry as narrow as the built-in one or narrower
   covers the address (``0.0.0.0/0`` never lifts one; ``169.254.169.254`` lifts the metadata
   denial for that address only);
4. with a non-empty ``allow``, the name or every address must match an entry;
5. everything else is allowed: loopback and private ranges too (login nodes post to
   site-internal receivers).

:meth:`UrlPolicy.check` looks at the URL alone (for intake: no DNS); :meth:`UrlPolicy.addresses`
resolves the host at delivery and refuses when ANY address is denied, so a name cannot be
re-pointed at a denied address after intake (DNS rebinding). The delivery then connects to one
of the checked addresses, never resolving again.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = ("http", "https")

DEFAULT_DENY: tuple[tuple[str, str], ...] = (
    ("169.254.169.254", "a cloud metadata address"),
    ("fd00:ec2::254", "a cloud metadata address"),
    ("100.100.100.200", "a cloud metadata address"),
    ("metadata.google.internal", "a cloud metadata host"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("0.0.0.0/8", "the unspecified address"),
    ("::/128", "the unspecified address"),
)
"""Denied unless allowed explicitly: (pattern, what it is)."""

_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_NAME = rf"{_LABEL}(\.{_LABEL})*"
_HOST = re.compile(rf"(\*\.)?{_NAME}")


class UrlRefused(ValueError):
    """The URL policy refuses a webhook URL; the message says why."""


@dataclass(frozen=True)
class _Pattern:
    text: str
    network: IpNetwork | None
    host: str | None
    """Exact name, or ``*.suffix`` / ``*``."""

    def matches_name(self, name: str) -> bool:
        if self.host is None:
            return False
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return name.endswith(self.host[1:])
        return name == self.host

    def matches_address(self, ip: IpAddress) -> bool:
        return self.network is not None and ip.version == self.network.version \
            and ip in self.network


def _pattern(text: object, where: str) -> _Pattern:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: a pattern is a non-empty string (CIDR or host name)")
    value = text.strip().lower()
    try:
        return _Pattern(value, ipaddress.ip_network(value, strict=False), None)
    except ValueError:
        pass
    host = value.rstrip(".")
    if host != "*" and not _HOST.fullmatch(host):
        raise ValueError(f"{where}: not a CIDR network or host name: {text!r} "
                         "(e.g. 10.0.0.0/8, hooks.example.org, *.example.org)")
    return _Pattern(value, None, host)


def _literal(host: str) -> IpAddress | None:
    """The address a URL's host names literally (``[::1]``, ``127.1``, ``0x7f000001``)."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 zone: fe80::1%25eth0
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fx.]+", host) and any(c.isdigit() for c in host):
        try:  # the short and numeric forms the C resolver also accepts
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _plain(ip: IpAddress) -> IpAddress:
    """``::ffff:169.254.169.254`` is 169.254.169.254."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class UrlPolicy:
    """Allow and deny lists for webhook URLs (see the module docstring for the rules)."""

    def __init__(self, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> None:
        """Raises ``ValueError`` naming the entry (``allow[2]: not a CIDR …``)."""
        for name, value in (("allow", allow), ("deny", deny)):
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise ValueError(f"{name}: must be a list of patterns")
        self.allow = tuple(_pattern(p, f"allow[{i}]") for i, p in enumerate(allow))
        self.deny = tuple(_pattern(p, f"deny[{i}]") for i, p in enumerate(deny))
        self.defaults = tuple((_pattern(p, "default"), why) for p, why in DEFAULT_DENY)

    def __repr__(self) -> str:
        return (f"UrlPolicy(allow={[p.text for p in self.allow]!r}, "
                f"deny={[p.text for p in self.deny]!r})")

    # -- the URL alone -----------------------------------------------------------------------
    def check(self, url: str) -> str | None:
        """Why ``url`` is refused, or ``None`` if it may be used (no DNS lookup: a host name is
        judged by name here, its addresses at each delivery)."""
        try:
            host, _port = self._host_port(url)
            self._check_name(host)
        except UrlRefused as exc:
            return str(exc)
        return None

    def _host_port(self, url: str) -> tuple[str, int]:
        """The host (ASCII, IDNA-encoded, lower case) and port, parsed as httpx parses it."""
        if not isinstance(url, str):
            raise UrlRefused("a URL is a string")
        try:
            parsed = httpx.URL(url.strip())
        except (httpx.InvalidURL, ValueError) as exc:
            raise UrlRefused(f"not a usable URL: {exc}") from None
        if parsed.scheme not in SCHEMES:
            shown = f"scheme {parsed.scheme!r}" if parsed.scheme else "no scheme"
            raise UrlRefused(f"{shown}: only http:// and https:// URLs are allowed")
        host = parsed.raw_host.decode("ascii").lower().rstrip(".")
        if not host:
            raise UrlRefused("the URL has no host")
        if _literal(host) is None and not re.fullmatch(_NAME, host):
            raise UrlRefused(f"not a valid host name: {host!r}")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        if not 0 < port < 65536:
            raise UrlRefused(f"port {port} is out of range (1-65535)")
        return host, port

    def _check_name(self, host: str) -> bool:
        """Refuse by name (or literal address); True if an allow entry names the host."""
        literal = _literal(host)
        if literal is not None:
            self._check_address(literal, host, name_allowed=False)
            return False
        for p in self.deny:
            if p.matches_name(host):
                raise UrlRefused(f"host {host!r} is denied by the URL policy (deny: {p.text})")
        named = any(p.matches_name(host) for p in self.allow)
        for p, why in self.defaults:
            if p.matches_name(host) and not any(a.host == host for a in self.allow):
                raise UrlRefused(f"host {host!r} is {why}, denied by default "
                                 f"(allow: [{host}] lifts it)")
        if self.allow and not named and not any(a.network for a in self.allow):
            raise UrlRefused(f"host {host!r} is not in the URL policy's allow list")
        return named

    def _check_address(self, ip: IpAddress, host: str, *, name_allowed: bool) -> None:
        ip = _plain(ip)
        shown = str(ip) if _literal(host) is not None else f"{host!r} resolves to {ip}, which"
        for p in self.deny:
            if p.matches_address(ip):
                raise UrlRefused(f"{shown} is denied by the URL policy (deny: {p.text})")
        for p, why in self.defaults:
            net = p.network
            if net is not None and p.matches_address(ip) and not any(
                    a.network is not None and a.matches_address(ip)
                    and a.network.version == net.version and a.network.subnet_of(net)  # type: ignore[arg-type]
                    for a in self.allow):
                raise UrlRefused(f"{shown} is {why}, denied by default "
                                 f"(an allow entry as narrow as {p.text} lifts it)")
        if self.allow and not name_allowed and not any(p.matches_address(ip)
                                                       for p in self.allow):
            raise UrlRefused(f"{shown} is not in the URL policy's allow list")

    # -- at delivery -------------------------------------------------------------------------
    def addresses(self, url: str) -> list[str]:
        """The checked addresses to connect to for ``url``, in the resolver's order.

        Raises :class:`UrlRefused` when the URL or ANY address its host resolves to is refused,
        and ``OSError`` (``socket.gaierror``) when the host does not resolve (try again later).
        """
        host, port = self._host_port(url)
        named = self._check_name(host)
        literal = _literal(host)
        if literal is not None:
            return [str(literal)]
        found: list[str] = []
        for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            text = str(sockaddr[0])
            if text not in found:
                found.append(text)
        for text in found:
            self._check_address(ipaddress.ip_address(text.split("%", 1)[0]), host,
                                name_allowed=named)
        return found


__all__ = ["DEFAULT_DENY", "SCHEMES", "UrlPolicy", "UrlRefused"]

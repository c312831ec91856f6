"""The webhook URL policy: schemes, default denials (metadata, link-local, unspecified), CIDR
and host patterns, allow lists, and the delivery-time check of every resolved address."""

from __future__ import annotations

import pytest

from bridge.notify.urlpolicy import UrlPolicy, UrlRefused

DEFAULT = UrlPolicy()


@pytest.mark.parametrize(("url", "why"), [
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata address"),
    ("http://[fd00:ec2::254]/", "cloud metadata address"),
    ("http://100.100.100.200/", "cloud metadata address"),
    ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata host"),
    ("http://Metadata.Google.Internal./", "cloud metadata host"),
    ("http://[::ffff:169.254.169.254]/", "cloud metadata address"),
    ("http://2852039166/", "cloud metadata address"),  # 169.254.169.254 as one number
    ("http://0xa9fea9fe/", "cloud metadata address"),
    ("http://169.254.10.20:8080/hook", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]:80/", "link-local"),
    ("http://0.0.0.0:8080/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://[::]/", "unspecified"),
])
def test_denied_by_default(url: str, why: str) -> None:
    reason = DEFAULT.check(url)
    assert reason is not None and why in reason and "denied by default" in reason, reason


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://[::1]/", "http://localhost:9000/x",
    "https://10.1.2.3/", "http://192.168.0.7/", "http://172.16.5.5/", "http://[fd12::5]/",
    "https://hooks.example.org/akoflow?x=1", "https://bücher.example/", "http://169.253.0.1/",
])
def test_allowed_by_default(url: str) -> None:
    assert DEFAULT.check(url) is None


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://example.org/x", "scheme 'ftp': only http:// and https://"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("javascript:alert(1)", "scheme 'javascript'"),
    ("gopher://127.0.0.1:6379/_INFO", "scheme 'gopher'"),
    ("example.org/hook", "no scheme"),
    ("http:///hook", "no host"),
    ("http://exa mple.org/", "not a valid host name"),
    ("http://example.org:99999/", "port 99999 is out of range"),
])
def test_only_http_and_https_urls_with_a_host(url: str, why: str) -> None:
    reason = DEFAULT.check(url)
    assert reason is not None and why in reason, reason


def test_deny_cidr_and_host_patterns() -> None:
    p = UrlPolicy(deny=["10.0.0.0/8", "fd00::/8", "*.internal.example.org",
                        "bad.example.org", "::1"])
    assert "deny: 10.0.0.0/8" in (p.check("http://10.9.8.7/") or "")
    assert "deny: fd00::/8" in (p.check("http://[fd12::5]/") or "")
    assert "deny: ::1" in (p.check("http://[::1]:8080/") or "")
    assert "deny: *.internal.example.org" in (p.check("https://a.b.internal.example.org/") or "")
    assert p.check("https://internal.example.org/") is None  # *. is below the name only
    assert p.check("https://notinternal.example.org/") is None
    assert "deny: bad.example.org" in (p.check("http://BAD.example.org./x") or "")
    assert p.check("http://good.example.org/") is None and p.check("http://11.0.0.1/") is None
    assert DEFAULT.check("http://169.254.169.254/") is not None  # the defaults stay


def test_allow_list_is_exclusive_and_lifts_defaults_only_narrowly() -> None:
    p = UrlPolicy(allow=["hooks.example.org", "*.site.example", "192.168.0.0/16"])
    assert p.check("https://hooks.example.org/x") is None
    assert p.check("https://a.site.example/x") is None
    assert p.check("http://192.168.4.4/") is None
    assert "not in the URL policy's allow list" in (p.check("http://10.0.0.1/") or "")
    # a name no host pattern allows may still resolve into 192.168.0.0/16: decided at delivery
    assert p.check("https://other.example.org/") is None
    names_only = UrlPolicy(allow=["hooks.example.org"])
    assert "not in the URL policy's allow list" in (names_only.check("https://x.org/") or "")
    # an allow entry lifts a default denial only if it is as narrow as the default or narrower
    assert UrlPolicy(allow=["169.254.0.0/16"]).check("http://169.254.3.3/") is None
    assert "metadata" in (UrlPolicy(allow=["169.254.0.0/16"]).check(
        "http://169.254.169.254/") or "")
    assert UrlPolicy(allow=["169.254.169.254"]).check("http://169.254.169.254/") is None
    everything = UrlPolicy(allow=["0.0.0.0/0", "::/0"])
    assert "link-local" in (everything.check("http://169.254.3.3/") or "")
    assert "link-local" in (everything.check("http://[fe80::2]/") or "")
    assert everything.check("http://8.8.8.8/") is None
    assert UrlPolicy(allow=["metadata.google.internal"]).check(
        "http://metadata.google.internal/") is None
    assert UrlPolicy(allow=["*.google.internal"]).check(
        "http://metadata.google.internal/") is not None
    # deny wins over allow
    assert UrlPolicy(allow=["10.0.0.0/8"], deny=["10.0.0.5"]).check("http://10.0.0.5/")


def test_bad_patterns_name_the_entry() -> None:
    for allow, deny, message in [
        (["10.0.0.0/8", "a b"], [], "allow[1]: not a CIDR network or host name: 'a b'"),
        ([], ["*.*.example"], "deny[0]: not a CIDR network or host name"),
        ([], ["10.0.0.0/33"], "deny[0]: not a CIDR network or host name"),
        ([""], [], "allow[0]: a pattern is a non-empty string"),
        ([5], [], "allow[0]: a pattern is a non-empty string"),
        ("10.0.0.0/8", [], "allow: must be a list of patterns"),
    ]:
        with pytest.raises(ValueError) as err:
            UrlPolicy(allow, deny)  # type: ignore[arg-type]
        assert str(err.value).startswith(message), str(err.value)
    assert repr(UrlPolicy(["*.a.example"], ["10.0.0.0/8"])) == (
        "UrlPolicy(allow=['*.a.example'], deny=['10.0.0.0/8'])")


def test_delivery_time_check_resolves_and_refuses_any_denied_address() -> None:
    assert "127.0.0.1" in DEFAULT.addresses("http://localhost:8080/")
    assert DEFAULT.addresses("http://[::1]:8080/") == ["::1"]
    assert DEFAULT.addresses("http://127.1/") == ["127.0.0.1"]
    rebinding = UrlPolicy(deny=["127.0.0.0/8"])
    assert rebinding.check("http://localhost/") is None  # the name alone passes intake
    with pytest.raises(UrlRefused, match=r"'localhost' resolves to 127\.0\.0\.1, which is "
                                         r"denied by the URL policy \(deny: 127\.0\.0\.0/8\)"):
        rebinding.addresses("http://localhost:8080/hook")
    allow_only = UrlPolicy(allow=["192.168.0.0/16"])
    with pytest.raises(UrlRefused, match="not in the URL policy's allow list"):
        allow_only.addresses("http://localhost/")
    assert UrlPolicy(allow=["127.0.0.0/8", "::1"]).addresses("http://localhost/")
    assert UrlPolicy(allow=["localhost"]).addresses("http://localhost/")  # allowed by name
    with pytest.raises(UrlRefused, match="link-local"):  # ... but never into a default denial
        UrlPolicy(allow=["*"], deny=[]).addresses("http://169.254.1.1/")

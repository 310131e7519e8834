"""The SSRF guard (pure, apart from DNS for names)."""

from __future__ import annotations

import ipaddress

import pytest

from notifier import ssrf

REFUSED = [
    "https://127.0.0.1/hook",
    "https://127.1.2.3/",
    "https://0.0.0.0/",
    "https://10.1.2.3/",
    "https://172.16.0.1/",
    "https://172.31.255.255/",
    "https://192.168.1.1/",
    "https://169.254.169.254/latest/meta-data/",
    "https://100.64.0.1/",
    "https://[::1]/",
    "https://[fc00::1]/",
    "https://[fd12:3456::1]/",
    "https://[fe80::1]/",
    "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:10.0.0.1]/",
    "https://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
    "https://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "https://2130706433/",  # decimal 127.0.0.1
    "https://0177.0.0.1/",  # octal
    "https://0x7f.1/",  # hex, short form
    "https://017700000001/",
    "https://224.0.0.1/",  # multicast
    "https://240.0.0.1/",  # reserved
    "https://255.255.255.255/",
    "https://[fd00:ec2::254]/",
    "https://localhost/",
    "https://LOCALHOST./",
    "https://foo.localhost/",
    "https://metadata.google.internal/",
    "https://[fec0::1]/",  # site-local
    "https://[3fff::1]/",  # documentation (RFC 9637)
    "https://192.88.99.1/",  # 6to4 relay anycast
    "https://[64:ff9b:1:a00:1::]/",  # local-use NAT64, whatever its prefix length
    "https://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
    "https://93.184.216.34:22/",  # a privileged port other than 80/443
    "https://93.184.216.34:25/",
    "https://93.184.216.34:1023/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_private_targets_are_refused(url: str) -> None:
    with pytest.raises(ssrf.UnsafeURL):
        ssrf.check_url(url, allow_private=False)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://93.184.216.34/", "scheme must be https"),
        ("ftp://93.184.216.34/", "scheme must be https"),
        ("https://user:pw@93.184.216.34/", "credentials"),
        ("https:///path", "no host"),
        ("https://93.184.216.34:99999/", "malformed"),
        ("https://exa mple.com/", "whitespace"),
        ("", "1 to 2048"),
        ("https://x.org/" + "a" * 3000, "1 to 2048"),
        ("https://[::1/", "malformed"),
        ("https://no-such-host.invalid/", "does not resolve"),
    ],
)
def test_malformed_urls_say_why(url: str, message: str) -> None:
    with pytest.raises(ssrf.UnsafeURL, match=message):
        ssrf.check_url(url, allow_private=False)


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        (["127.0.0.1"], "resolves to a loopback address"),
        (["93.184.216.34", "10.0.0.7"], "resolves to a private address"),  # any bad answer
        (["::ffff:169.254.169.254"], "resolves to a IPv6 address embedding a cloud metadata"),
    ],
)
def test_a_name_resolving_to_a_private_address_is_refused(answers: list[str], message: str) -> None:
    def resolver(host: str, port: int) -> list[ssrf.IPAddress]:
        assert (host, port) == ("rebind.example", 443)
        return [ipaddress.ip_address(a) for a in answers]

    with pytest.raises(ssrf.UnsafeURL, match=message):
        ssrf.check_url("https://rebind.example/x", allow_private=False, resolver=resolver)


def test_the_real_resolver_sees_the_hosts_file() -> None:
    assert ipaddress.ip_address("127.0.0.1") in ssrf.resolve("localhost", 80)


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.216.34/hook",
        "https://[2606:2800:220:1::248]/",
        "https://1.1.1.1:8443/x",
        "https://93.184.216.34:80/",
        "https://93.184.216.34:1024/",
        "https://93.184.216.34:65535/",
        "https://[64:ff9b::5db8:d822]/",  # NAT64 of 93.184.216.34, a public address
    ],
)
def test_public_addresses_pass(url: str) -> None:
    ssrf.check_url(url, allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "https://localhost/",
        "http://10.0.0.1/",
        "http://127.0.0.1:25/",
    ],
)
def test_allow_private_admits_local_targets(url: str) -> None:
    ssrf.check_url(url, allow_private=True)


def test_allow_private_still_checks_the_form() -> None:
    with pytest.raises(ssrf.UnsafeURL, match="scheme"):
        ssrf.check_url("file:///etc/passwd", allow_private=True)


def test_split_url_defaults_ports() -> None:
    assert ssrf.split_url("https://example.org/x", allow_private=False) == (
        "https",
        "example.org",
        443,
    )
    assert ssrf.split_url("http://example.org:81", allow_private=True) == (
        "http",
        "example.org",
        81,
    )


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("8.8.8.8", None),
        ("127.0.0.1", "loopback address"),
        ("169.254.169.254", "cloud metadata address"),
        ("169.254.1.1", "link-local address"),
        ("100.100.100.200", "carrier-grade NAT (shared) address"),
        ("::ffff:192.168.0.1", "IPv6 address embedding a private address"),
        ("2001:db8::1", "private address"),
    ],
)
def test_reasons(ip: str, expected: str | None) -> None:
    assert ssrf.is_forbidden_ip(ipaddress.ip_address(ip)) == expected


def test_literal_ip_forms() -> None:
    assert ssrf.literal_ip("2130706433") == ipaddress.ip_address("127.0.0.1")
    assert ssrf.literal_ip("[::1]") == ipaddress.ip_address("::1")
    assert ssrf.literal_ip("example.org") is None
    assert ssrf.resolve("10.0.0.1", 80) == [ipaddress.ip_address("10.0.0.1")]


def test_a_refusal_does_not_tell_the_resolved_address() -> None:
    def resolver(host: str, port: int) -> list[ssrf.IPAddress]:
        return [ipaddress.ip_address("10.20.30.40")]

    with pytest.raises(ssrf.UnsafeURL) as caught:
        ssrf.check_url("https://intranet.example/x", allow_private=False, resolver=resolver)
    assert "10.20.30.40" not in str(caught.value) and "private address" in str(caught.value)

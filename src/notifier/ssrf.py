"""SSRF guard for webhook URLs.

`check_url` runs at registration; delivery checks again on the address it
actually connects to (`is_forbidden_ip` on the resolved address), which
defeats DNS rebinding. Private addresses are allowed only with
`NOTIFIER_WEBHOOK_ALLOW_PRIVATE=true` (tests, development).
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Callable

from notifier.resolver import ResolveFailed, Resolver, unique_addresses

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048

# Ranges `ipaddress` does not flag on every Python version, named for the error.
_EXTRA_BLOCKED: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (ipaddress.ip_network("100.64.0.0/10"), "carrier-grade NAT (shared) address"),
    (ipaddress.ip_network("192.0.0.0/24"), "IETF protocol assignment address"),
    (ipaddress.ip_network("198.18.0.0/15"), "benchmarking address"),
    (ipaddress.ip_network("192.88.99.0/24"), "6to4 relay anycast address"),
    (ipaddress.ip_network("fd00:ec2::254/128"), "cloud metadata address"),
    (ipaddress.ip_network("fec0::/10"), "site-local address"),
    (ipaddress.ip_network("3fff::/20"), "documentation address"),
    # RFC 8215 local-use NAT64: where the IPv4 address sits depends on the
    # operator's prefix length (RFC 6052 puts it around the u-octet), unknown here.
    (ipaddress.ip_network("64:ff9b:1::/48"), "local-use NAT64 address"),
)
# The well-known NAT64 prefix (RFC 6052 /96): the IPv4 address is the low 32 bits.
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
# Without NOTIFIER_WEBHOOK_ALLOW_PRIVATE, the web ports or unprivileged ones:
# a webhook has no business speaking to SSH, SMTP or a database port.
_WEB_PORTS = (80, 443)
_LOWEST_UNPRIVILEGED_PORT = 1024


class UnsafeURL(ValueError):
    """The URL may not be used as a webhook; `str()` says why."""


def is_forbidden_ip(ip: IPAddress) -> str | None:
    """Why `ip` may not be a webhook target, or None when it is a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64_WELL_KNOWN:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            reason = is_forbidden_ip(embedded)
            return f"IPv6 address embedding a {reason}" if reason else None
    if str(ip) == "169.254.169.254":
        return "cloud metadata address"
    for net, reason in _EXTRA_BLOCKED:
        if ip.version == net.version and ip in net:
            return reason
    checks = (
        (ip.is_unspecified, "unspecified address"),
        (ip.is_loopback, "loopback address"),
        (ip.is_link_local, "link-local address"),
        (ip.is_multicast, "multicast address"),
        (ip.is_private, "private address"),
        (ip.is_reserved, "reserved address"),
        (not ip.is_global, "non-global address"),
    )
    for flagged, reason in checks:
        if flagged:
            return reason
    return None


def literal_ip(host: str) -> IPAddress | None:
    """The address `host` denotes literally, including legacy IPv4 spellings.

    `2130706433`, `0177.0.0.1` and `0x7f.1` all mean 127.0.0.1 to the C
    resolver, so they are decoded the way `inet_aton` decodes them.
    """
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def split_url(url: str, *, allow_private: bool) -> tuple[str, str, int]:
    """Validate the form of `url`; return (scheme, host, port). No DNS."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"the URL must be a string of 1 to {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise UnsafeURL("the URL must not contain whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if allow_private else ("https",)
    if scheme not in allowed:
        raise UnsafeURL(f"the URL scheme must be {' or '.join(allowed)}, not {scheme or 'empty'!r}")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("the URL must not carry credentials")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeURL("the URL has no host")
    port = port or (443 if scheme == "https" else 80)
    if not allow_private and port not in _WEB_PORTS and port < _LOWEST_UNPRIVILEGED_PORT:
        raise UnsafeURL(f"the URL port must be 80, 443 or 1024-65535, not {port}")
    return scheme, host, port


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (blocking: run it in a thread from async code)."""
    literal = literal_ip(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"the host {host!r} does not resolve ({exc})") from None
    return unique_addresses(infos)


def _target(url: str, *, allow_private: bool) -> tuple[str, int] | None:
    """The (host, port) still to resolve and check, or None when `url` is settled without DNS."""
    _, host, port = split_url(url, allow_private=allow_private)
    if allow_private:
        return None
    literal = literal_ip(host)
    if literal is not None:
        reason = is_forbidden_ip(literal)
        if reason:
            raise UnsafeURL(f"the URL points at a {reason}")
        return None
    if host.lower() == "localhost" or host.lower().endswith((".localhost", ".internal")):
        raise UnsafeURL(f"the host {host!r} is a local name")
    return host, port


def _check_addresses(host: str, addresses: list[IPAddress]) -> None:
    for ip in addresses:
        reason = is_forbidden_ip(ip)
        if reason:  # the address itself is not told: the answer must not map a network
            raise UnsafeURL(f"the host {host!r} resolves to a {reason}")


def check_url(
    url: str, *, allow_private: bool, resolver: Callable[[str, int], list[IPAddress]] = resolve
) -> None:
    """Raise `UnsafeURL` unless `url` is a usable webhook URL.

    Without `allow_private`, the scheme must be https and every address the
    host resolves to must be public. Blocking (DNS): async code uses
    `check_url_async`. `resolver` is replaceable for tests.
    """
    target = _target(url, allow_private=allow_private)
    if target is not None:
        _check_addresses(target[0], resolver(*target))


async def check_url_async(url: str, *, allow_private: bool, resolver: Resolver) -> None:
    """`check_url` with DNS on the bounded `resolver` (`ResolveTimeout` past its deadline)."""
    target = _target(url, allow_private=allow_private)
    if target is None:
        return
    try:
        addresses = await resolver.resolve(*target)
    except ResolveFailed as exc:
        raise UnsafeURL(str(exc)) from None
    _check_addresses(target[0], addresses)

"""The webhook channel: signed POSTs through per-endpoint keep-alive pools.

- Bounded global concurrency and a per-endpoint cap (endpoint = scheme, host,
  port of the URL), so one slow receiver only ever holds its own few slots.
  Rows queue for a busy endpoint up to a bound (a base count plus what the
  endpoint has been answering in two seconds, and a wait time inside the
  lease); beyond it they are released unsent (`Sent.deferred`), due again a
  second later. A fast receiver thus takes big batches while a hanging one
  holds only a few rows.
- Connect, read and write timeouts, plus a total deadline per attempt (a
  receiver dripping one byte a second never trips the read timeout alone).
- Redirects are not followed (a 3xx is a failed attempt, retried like others).
- Only the first `MAX_RESPONSE_BYTES` of a response are read.
- SSRF: the pools' network backend resolves the host itself and refuses to
  connect when any resolved address is forbidden (`ssrf.is_forbidden_ip`),
  then connects to the address it checked. The check therefore applies to the
  address actually used, which defeats DNS rebinding; TLS SNI and the Host
  header keep the name. Proxies from the environment are ignored for the same
  reason. With `allow_private` (tests, development) nothing is refused.
- One small keep-alive pool per endpoint (`http1`, h11 on `asyncio_net`
  streams), not httpcore's pool: that cost more CPU than the rest of a
  delivery together. A delivery posts to its pool directly, without httpx's
  request, client and response objects (a quarter of the process's CPU).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpcore
import httpx

from notifier import backoff, signing, ssrf
from notifier.channels import Sent, asyncio_net, excerpt, http1
from notifier.channels.gate import Gate
from notifier.outbox import Job
from notifier.resolver import ResolveFailed, Resolver, ResolveTimeout

log = logging.getLogger(__name__)

PACE_WINDOW = 0.25
MAX_DEFER = 10.0  # seconds a row released unsent waits before it is due again
IDLE_ENDPOINTS = 4096  # endpoint stats kept after they go idle, at most
QUEUE_SECONDS = 2.0

MAX_RESPONSE_BYTES = 4096
KEEPALIVE_SECONDS = 30.0
USER_AGENT = "Discogsography-Notifier/1 (+webhooks)"
STATIC_HEADERS = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}


class BlockedAddress(Exception):
    """The webhook host resolved to an address delivery may not connect to."""


class ResolveError(Exception):
    """The webhook host did not resolve."""


class GuardedBackend:
    """Resolves, checks every address against the SSRF rules, connects to a checked one.

    The `http1.Backend` of every endpoint pool.
    """

    def __init__(self, *, allow_private: bool, resolver: Resolver | None = None) -> None:
        self.allow_private = allow_private
        self.resolver = resolver or Resolver()

    async def _resolve(self, host: str, port: int, seconds: float | None) -> list[str]:
        literal = ssrf.literal_ip(host)
        if literal is not None:
            return [str(literal)]
        # On the bounded resolver (its own threads and deadline), within the connect timeout.
        try:
            async with asyncio.timeout(seconds):
                addresses = await self.resolver.resolve(host, port)
        except (TimeoutError, ResolveTimeout):
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except ResolveFailed as exc:
            raise ResolveError(f"cannot resolve {host}: {exc}") from None
        return [str(ip) for ip in addresses]

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - http1.Backend's interface
    ) -> httpcore.AsyncNetworkStream:
        """Connect to `host`, but only to an address the SSRF rules allow."""
        addresses = await self._resolve(host, port, timeout)
        if not self.allow_private:
            for address in addresses:
                reason = ssrf.is_forbidden_ip(ipaddress.ip_address(address.split("%", 1)[0]))
                if reason is not None:
                    raise BlockedAddress(f"{host} resolves to a {reason}")
        last: Exception | None = None
        for address in addresses:
            try:
                return await asyncio_net.connect_tcp(address, port, timeout=timeout)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last or ResolveError(f"{host} has no address")


class EndpointPools(httpx.AsyncBaseTransport):
    """One small connection pool per endpoint (scheme, host, port), behind one client.

    Each pool (`http1.EndpointPool`) holds at most the per-endpoint cap of
    keep-alive connections, opened through the `GuardedBackend`; pools of
    endpoints with nothing in flight are dropped when there are `max_pools`.
    TLS uses `ssl_context` when given, else httpx's default (certifi's CA
    bundle, hostname checked, no environment influence).
    """

    def __init__(
        self, *, allow_private: bool, per_endpoint: int, max_pools: int,
        ssl_context: ssl.SSLContext | None = None, resolver: Resolver | None = None,
    ) -> None:  # fmt: skip
        self._backend = GuardedBackend(allow_private=allow_private, resolver=resolver)
        self._ssl = ssl_context or httpx.create_ssl_context(trust_env=False)
        self._per_endpoint = per_endpoint
        self._max_pools = max_pools
        self._pools: dict[tuple[str, str, int | None], http1.EndpointPool] = {}

    @property
    def pools(self) -> int:
        """Endpoints with a pool right now."""
        return len(self._pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` through its endpoint's pool (made on first use)."""
        pool = await self._pool(request.url, request)
        return await pool.request(request)

    async def post(
        self, url: httpx.URL, headers: list[tuple[bytes, bytes]], body: bytes,
        timeouts: dict[str, float | None], max_body: int,
    ) -> http1.Answer:  # fmt: skip
        """`http1.EndpointPool.post` on the pool of `url`'s endpoint (made on first use)."""
        pool = await self._pool(url, None)
        return await pool.post(url, headers, body, timeouts, max_body)

    async def _pool(self, url: httpx.URL, request: httpx.Request | None) -> http1.EndpointPool:
        key = (url.scheme, url.host, url.port)
        pool = self._pools.get(key)
        if pool is None:
            if url.scheme not in ("http", "https"):
                raise httpx.UnsupportedProtocol(
                    f"Request URL has an unsupported protocol '{url.scheme}://'.", request=request
                )
            if not url.host:
                raise httpx.UnsupportedProtocol("Request URL is missing a host.", request=request)
            if len(self._pools) >= self._max_pools:
                await self._close_idle()
            pool = self._pools[key] = http1.EndpointPool(
                self._backend, self._ssl, limit=self._per_endpoint, keepalive=KEEPALIVE_SECONDS
            )
        return pool

    async def _close_idle(self) -> None:
        """Drop the pools of endpoints with nothing in flight (closing kept-alive sockets)."""
        for key, pool in list(self._pools.items()):
            if pool.idle:
                del self._pools[key]
                await pool.aclose()

    async def aclose(self) -> None:
        """Close every pool."""
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


@dataclass
class _Endpoint:
    """Slots, queue and recent pace of one endpoint (dropped when it goes idle)."""

    slots: Gate
    waiting: int = 0
    users: int = 0
    window_start: float = 0.0
    window_done: int = 0
    pace: float = 0.0  # answers per second over the last full window
    measured: bool = False

    def answered(self, now: float) -> None:
        """Count one finished request toward the endpoint's pace."""
        elapsed = now - self.window_start
        if elapsed >= PACE_WINDOW:
            # A window that ran long (the endpoint went quiet) says nothing recent.
            self.pace = self.window_done / elapsed if elapsed < 4 * PACE_WINDOW else 0.0
            self.measured = self.window_start > 0
            self.window_start, self.window_done = now, 0
        self.window_done += 1

    def resumed(self, now: float) -> None:
        """A request reaches an idle endpoint: a window left open while it was quiet means nothing.

        Without this, the first answer after a quiet spell closed a long window
        and read as a stall (pace 0, measured), deferring a new burst's rows by
        MAX_DEFER. An endpoint that really stalls has requests in flight, so it
        is never idle and keeps that reading.
        """
        if self.window_start and now - self.window_start >= 4 * PACE_WINDOW:
            self.window_start, self.window_done = now, 0
            self.pace, self.measured = 0.0, False

    def drain_seconds(self) -> float:
        """About how long the current queue takes to drain (when to offer a row again)."""
        if self.pace <= 0:
            # Not measured yet (a new burst): soon; measured as stalled: later.
            return MAX_DEFER if self.measured else 1.0
        return min(max(self.waiting / self.pace, 1.0), MAX_DEFER)

    def queue_limit(self, base: int) -> int:
        """Rows allowed to wait: a base, plus what the endpoint answers in QUEUE_SECONDS."""
        return base + int(self.pace * QUEUE_SECONDS)


@dataclass(frozen=True)
class WebhookOptions:
    """Limits of the webhook sender."""

    concurrency: int = 256
    per_endpoint: int = 8
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 15.0
    allow_private: bool = False
    # Longest wait for an endpoint slot before the row is released unsent; the
    # delivery loop keeps it well inside the lease.
    max_wait: float = 30.0
    # Rows that may queue for one busy endpoint before more are released
    # unsent, so a hanging receiver never fills the process's in-flight set;
    # an endpoint that answers fast may queue what it answers in QUEUE_SECONDS.
    max_queue: int = 128
    # TLS settings for receivers; None (production): httpx's default context.
    # Tests pass one that also trusts their own CA.
    ssl_context: ssl.SSLContext | None = None
    # Where webhook hosts are resolved; None: a default `Resolver` of its own.
    resolver: Resolver | None = None


@functools.lru_cache(maxsize=65536)
def origin(url: str) -> tuple[str, str]:
    """(scheme, endpoint key `scheme://host:port` lower-cased) of `url`; cached, it is hot."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a port out of range: keyed by the raw netloc, refused by httpx
        port = 0
    return parts.scheme, f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


@functools.lru_cache(maxsize=4096)
def parsed_url(url: str) -> httpx.URL:
    """`url` parsed by httpx; cached, since parsing cost more than signing."""
    return httpx.URL(url)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is somewhere in the chain of causes of `exc`."""
    seen: BaseException | None = exc.__cause__ or exc.__context__
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def classify(exc: BaseException) -> str:
    """The error class recorded for an attempt that got no HTTP answer."""
    if isinstance(exc, BlockedAddress):
        return f"blocked_address: {exc}"
    if isinstance(exc, ResolveError):
        return f"dns_error: {exc}"
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect_timeout"
    if isinstance(exc, httpx.ConnectError) and _caused_by(exc, ssl.SSLError):
        return "tls_error"
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect_error"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.LocalProtocolError):
        return "protocol_error"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return f"bad_url: {exc}"
    if isinstance(exc, httpx.TransportError):
        return f"transport_error: {type(exc).__name__}"
    if isinstance(exc, signing.BadSecret):
        return f"bad_secret: {exc}"
    return f"error: {type(exc).__name__}"


class _CookielessClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` that never stores a receiver's cookies.

    httpx hands every response to the cookie jar (building urllib request and
    response shims each time) even when the jar's policy refuses them all;
    here the client's cookies are a `Cookies` that ignores responses.
    """

    @property
    def cookies(self) -> httpx.Cookies:
        """The client's cookies: always none."""
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        pass  # httpx's constructor sets them; there are none to keep


class _NoCookies(httpx.Cookies):
    """Cookies that a response never adds to."""

    def extract_cookies(self, response: httpx.Response) -> None:
        """Ignore the response's Set-Cookie headers."""


_NO_COOKIES = _NoCookies()  # empty, and nothing adds to it


@dataclass
class WebhookSender:
    """Sends signed webhook POSTs; one instance per process."""

    options: WebhookOptions = field(default_factory=WebhookOptions)

    def __post_init__(self) -> None:
        o = self.options
        self._global = Gate(o.concurrency)
        self._endpoints: dict[str, _Endpoint] = {}
        # A receiver's Set-Cookie is never stored: nothing to send back, and
        # a receiver answering with fresh cookies must not grow our memory.
        self._pools = EndpointPools(
            allow_private=o.allow_private,
            per_endpoint=o.per_endpoint,
            max_pools=IDLE_ENDPOINTS,
            ssl_context=o.ssl_context,
            resolver=o.resolver,
        )
        # The client owns the pools (and closes them); a delivery goes to the
        # pools directly (`EndpointPools.post`): httpx's request, response and
        # client layers cost more CPU than the request's own bytes.
        self._client = _CookielessClient(
            transport=self._pools, follow_redirects=False, trust_env=False
        )
        self._timeouts = httpx.Timeout(
            connect=o.connect_timeout,
            read=o.read_timeout,
            write=o.read_timeout,
            pool=o.total_timeout,
        ).as_dict()

    async def aclose(self) -> None:
        """Close the shared client."""
        await self._client.aclose()

    async def send(self, job: Job) -> Sent:
        """POST the job's body to its webhook once (see the module docstring)."""
        now = datetime.now(UTC)
        url = job.url or ""
        scheme, key = origin(url)
        if scheme != "https" and not (scheme == "http" and self.options.allow_private):
            return Sent(backoff.Result(error="bad_url: scheme not allowed"), now, 0)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = _Endpoint(Gate(self.options.per_endpoint))
        elif endpoint.users == 0:
            endpoint.resumed(time.monotonic())
        if endpoint.slots.busy and endpoint.waiting >= endpoint.queue_limit(self.options.max_queue):
            return Sent(backoff.Result(retry_after=endpoint.drain_seconds()), now, 0, deferred=True)
        endpoint.users += 1
        # One deadline for both waits, so a row never outwaits its lease.
        deadline = asyncio.get_running_loop().time() + self.options.max_wait
        try:
            endpoint.waiting += 1
            try:
                await endpoint.slots.enter(deadline)
            except TimeoutError:
                return Sent(backoff.Result(retry_after=endpoint.drain_seconds()), now, 0,
                            deferred=True)  # fmt: skip
            finally:
                endpoint.waiting -= 1
            try:
                await self._global.enter(deadline)
            except BaseException as exc:
                endpoint.slots.leave()
                if isinstance(exc, TimeoutError):  # the whole process is saturated
                    return Sent(backoff.Result(retry_after=1.0), now, 0, deferred=True)
                raise
            try:
                return await self._post(job, url)
            finally:
                self._global.leave()
                endpoint.answered(time.monotonic())
                endpoint.slots.leave()
        finally:
            endpoint.users -= 1
            if endpoint.users == 0 and len(self._endpoints) > IDLE_ENDPOINTS:
                self._prune()

    def _prune(self) -> None:
        """Forget idle endpoints (their pace is relearnt on the next burst)."""
        for key in [k for k, e in self._endpoints.items() if e.users == 0]:
            del self._endpoints[key]

    async def _post(self, job: Job, url: str) -> Sent:
        body = job.body()
        started = time.perf_counter()
        attempted_at = datetime.now(UTC)
        data = b""
        try:
            signed = signing.sign(job.secrets, str(job.message_id), int(time.time()), body)
            target, head = _target(url)
            headers = [*head, (b"content-length", str(len(body)).encode())]
            headers += [(name.encode(), value.encode()) for name, value in signed.items()]
            async with asyncio.timeout(self.options.total_timeout):
                answer = await self._pools.post(
                    target, headers, body, self._timeouts, MAX_RESPONSE_BYTES
                )
            data = answer.body
            retry_after = backoff.parse_retry_after(answer.retry_after, attempted_at)
            result = backoff.Result(status_code=answer.status_code, retry_after=retry_after)
        except (httpx.HTTPError, TimeoutError, BlockedAddress, ResolveError) as exc:
            result = backoff.Result(error=classify(exc))
        except signing.BadSecret as exc:
            result = backoff.Result(error=classify(exc))
        except httpx.InvalidURL as exc:
            result = backoff.Result(error=f"bad_url: {exc}")
        except OSError as exc:
            result = backoff.Result(error=f"os_error: {exc.strerror or type(exc).__name__}")
        duration_ms = int((time.perf_counter() - started) * 1000)
        return Sent(result, attempted_at, duration_ms, excerpt(data[:MAX_RESPONSE_BYTES]))


@functools.lru_cache(maxsize=4096)
def _target(url: str) -> tuple[httpx.URL, tuple[tuple[bytes, bytes], ...]]:
    """`url` parsed, and the headers every request to it carries (Host first, as httpx sends).

    Cached: parsing a URL cost more than signing the request.
    """
    target = parsed_url(url)
    if not target.host:
        raise httpx.UnsupportedProtocol("no host in the URL")
    head = (
        (b"Host", target.netloc),
        *((k.encode(), v.encode()) for k, v in STATIC_HEADERS.items()),
    )
    return target, head

"""The operator's allowlist for remote endpoints: a base URL whose host resolves into a private, loopback,
link-local or reserved network is refused unless allowed, at submit time (`check_url`) and again on every
connection (`GuardedBackend`), so a tenant cannot make the service reach internal hosts."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx

from .endpoint import EndpointConfigError, RemoteError

DEFAULT_DENIED = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::1/128",
    "::/128",
    "fc00::/7",
    "fe80::/10",
    "::ffff:0:0/96",
)


def check_url(
    base_url: str, allow: tuple[str, ...] = (), deny: tuple[str, ...] = DEFAULT_DENIED, resolve=socket.getaddrinfo
) -> None:
    """Refuse a base URL whose host resolves into a denied network (private, loopback, link-local, ... by
    default), unless the host name or every address it resolves to is in `allow` (host names or CIDRs).

    Raises EndpointConfigError (field `base_url`) naming the host and the operator setting that would allow it.
    """
    host = urlsplit(base_url).hostname or ""
    if host in allow:
        return
    try:
        infos = resolve(host, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise EndpointConfigError("base_url", f"host {host!r} does not resolve ({exc})") from None
    check_addresses(host, [info[4][0] for info in infos], allow, deny)


def check_addresses(
    host: str, addresses: list[str], allow: tuple[str, ...] = (), deny: tuple[str, ...] = DEFAULT_DENIED
) -> None:
    """`check_url` for addresses `host` resolved to: each must be allowed, or neither denied nor non-global."""
    allowed = [ipaddress.ip_network(a, strict=False) for a in allow if _is_network(a)]
    denied = [ipaddress.ip_network(d, strict=False) for d in deny]
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        if any(address in net for net in allowed):
            continue
        if any(address.version == net.version and address in net for net in denied) or not address.is_global:
            raise EndpointConfigError(
                "base_url",
                f"host {host!r} resolves to {address}, a private or reserved address this service does "
                f"not call; an operator can allow it with NOGRAD_REMOTE_ALLOW (host names or CIDRs)",
            )


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the allowlist applied to every connection, at connect time: the host is
    resolved, every address checked (`check_addresses`), and the connection made to a checked address. A check at
    submit time alone leaves DNS rebinding open: a name that resolved to a public address then may resolve to an
    internal one by the time the job runs. TLS still verifies the host name (httpcore passes it as SNI)."""

    def __init__(self, allow: tuple[str, ...] = (), deny: tuple[str, ...] = DEFAULT_DENIED, resolve=None):
        self._inner = httpcore.AnyIOBackend()
        self._allow, self._deny = tuple(allow), tuple(deny)
        self._resolve = resolve or (lambda host, port: anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM))

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None, socket_options=None
    ) -> httpcore.AsyncNetworkStream:
        if host not in self._allow:
            try:
                infos = await self._resolve(host, port)
            except (socket.gaierror, UnicodeError, OSError) as exc:
                raise httpcore.ConnectError(f"{host!r} does not resolve ({exc})") from None
            try:
                check_addresses(host, [info[4][0] for info in infos], self._allow, self._deny)
            except EndpointConfigError as exc:
                raise RemoteError(str(exc)) from None
            host = infos[0][4][0].split("%")[0]
        return await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise RemoteError("remote endpoints are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(allow: tuple[str, ...] = (), **kw) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose connections go through `GuardedBackend` (httpx does not take a network backend
    directly, so its connection pool is rebuilt with one; tests/clients cover that this holds)."""
    transport = httpx.AsyncHTTPTransport()
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(), network_backend=GuardedBackend(allow, **kw)
    )
    return transport


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False

"""The operator's allowlist for remote endpoints: a base URL whose host resolves into a private, loopback,
link-local or reserved network is refused unless allowed, at submit time (`check_url`) and again on every
connection (`GuardedBackend`), so a tenant cannot make the service reach internal hosts.

An IPv6 address that carries an IPv4 address (IPv4-mapped, IPv4-compatible, SIIT, NAT64, 6to4, Teredo, ISATAP) is
checked as the IPv4 address(es) it carries (`embedded_ipv4`): a translator or relay on the way would deliver it
there."""

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
)

_MAPPED = ipaddress.ip_network("::ffff:0:0/96")  # IPv4-mapped (RFC 4291)
_COMPATIBLE = ipaddress.ip_network("::/96")  # IPv4-compatible, deprecated (RFC 4291); :: and ::1 carry 0.0.0.x
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT IPv4-translated (RFC 2765)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # NAT64 well-known prefix (RFC 6052)
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # NAT64 local-use prefix (RFC 8215)
_SIXTOFOUR = ipaddress.ip_network("2002::/16")  # 6to4 (RFC 3056)
_TEREDO = ipaddress.ip_network("2001::/32")  # Teredo (RFC 4380)


def check_url(
    base_url: str, allow: tuple[str, ...] = (), deny: tuple[str, ...] = DEFAULT_DENIED, resolve=socket.getaddrinfo
) -> None:
    """Refuse a base URL whose host resolves into a denied network (private, loopback, link-local, ... by
    default), unless the host name or every address it resolves to is in `allow` (host names or CIDRs).

    The host is the one httpx will connect to (its IDNA form, as `GuardedBackend` sees it), resolved as the
    connection will resolve it: numeric forms getaddrinfo accepts (`2130706433`, `127.1`, `0x7f000001`) are checked
    as the address they stand for. Raises EndpointConfigError (field `base_url`) naming the host and the operator
    setting that would allow it.
    """
    host = _host(base_url)
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
    """`check_url` for addresses `host` resolved to: each must be allowed, or neither denied nor non-global. An
    address carrying IPv4 addresses (`embedded_ipv4`) is judged by them alone: each must pass (or the IPv6
    address itself be allowed)."""
    allowed = [ipaddress.ip_network(a, strict=False) for a in allow if _is_network(a)]
    denied = [ipaddress.ip_network(d, strict=False) for d in deny]

    def admitted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address.version == net.version and address in net for net in allowed)

    def refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        in_denied = any(address.version == net.version and address in net for net in denied)
        return not admitted(address) and (in_denied or not address.is_global)

    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        if admitted(address):
            continue
        bad = [target for target in embedded_ipv4(address) or [address] if refused(target)]
        if bad:
            carried = "" if bad == [address] else f" (it carries the IPv4 address {', '.join(map(str, bad))})"
            raise EndpointConfigError(
                "base_url",
                f"host {host!r} resolves to {address}{carried}, a private or reserved address this service does "
                f"not call; an operator can allow it with NOGRAD_REMOTE_ALLOW (host names or CIDRs)",
            )


def embedded_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, where a translator, tunnel or relay would deliver it (empty for
    IPv4 and for plain IPv6): IPv4-mapped/-compatible and SIIT (last 32 bits), NAT64 64:ff9b::/96 (last 32
    bits), local-use NAT64 64:ff9b:1::/48 (last 32 bits; with bits 48-96 set, also the /48, /56 and /64 layouts of
    RFC 6052), 6to4 (bits 16-48), Teredo (the server, bits 32-64, and the client, the last 32 bits inverted),
    ISATAP (interface id 0:5efe or 200:5efe, then the IPv4 address)."""
    if address.version != 6:
        return []
    bits = int(address)

    def ipv4(*fields: tuple[int, int]) -> ipaddress.IPv4Address:  # the bits [start, end) of each field, joined
        value = 0
        for start, end in fields:
            value = value << (end - start) | (bits >> (128 - end)) & ((1 << (end - start)) - 1)
        return ipaddress.IPv4Address(value)

    if address in _MAPPED or address in _COMPATIBLE or address in _TRANSLATED or address in _NAT64:
        return [ipv4((96, 128))]
    if address in _NAT64_LOCAL:
        if not (bits >> 32) & (2**48 - 1):  # the /96 layout, zero middle: the other layouts would read zeros
            return [ipv4((96, 128))]
        return [ipv4((96, 128)), ipv4((48, 64), (72, 88)), ipv4((56, 64), (72, 96)), ipv4((72, 104))]
    if address in _SIXTOFOUR:
        return [ipv4((16, 48))]
    if address in _TEREDO:
        return [ipv4((32, 64)), ipaddress.IPv4Address(~bits & 0xFFFFFFFF)]
    if (bits >> 32) & 0xFDFFFFFF == 0x00005EFE:  # ISATAP: <prefix>:0:5efe:a.b.c.d or <prefix>:200:5efe:a.b.c.d
        return [ipv4((96, 128))]
    return []


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


def _host(base_url: str) -> str:
    """The host a connection to `base_url` resolves: httpx's reading of the URL, in its IDNA (ASCII) form, as
    httpcore hands it to `GuardedBackend`. Raises EndpointConfigError for a URL httpx cannot parse or one that
    carries credentials."""
    try:
        url, authority = httpx.URL(base_url), urlsplit(base_url).netloc
    except (httpx.InvalidURL, ValueError) as exc:
        raise EndpointConfigError("base_url", f"is not a valid URL ({exc})") from None
    if url.userinfo or "@" in authority:  # an empty user (http://@host) too
        raise EndpointConfigError("base_url", "must not carry credentials (user@host); store the key as a secret")
    return url.raw_host.decode("ascii")


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False

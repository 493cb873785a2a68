"""What a document may reach on the network, and the only HTTP client its renderers use.

Documents are written by strangers. In `online` mode a page's every request (and every redirect it leads
to) is made here, not by Chromium: the host is resolved once, every address it resolves to must be a
public one (not loopback, private, link-local, shared, multicast, reserved or unspecified, IPv4 and IPv6,
IPv4-mapped included), and the connection goes to that resolved address (TLS still checks the host's
certificate), so a DNS answer cannot change between the check and the connect. `browser.allow_addresses`
lets a user who really crawls an intranet name the exceptions: an address (`10.1.2.3`), a network
(`10.0.0.0/8`) or one port of an address (`127.0.0.1:8080`, `[::1]:8080`).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from functools import lru_cache

MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
# Request headers a page may not choose (the client sets them for the connection it makes).
_HOP_HEADERS = {"host", "connection", "content-length", "transfer-encoding", "keep-alive", "upgrade", "te"}
# (and no compression asked for: the body is passed to Chromium as it came)
_HOP_HEADERS.add("accept-encoding")


class Refused(Exception):
    """A request the policy refuses; `reason` is the counter it goes to (`blocked_private_address`, ...)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Allowance:
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    ports: frozenset[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]

    def covers(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
        return (ip, port) in self.ports or any(ip in net for net in self.networks)


@lru_cache(maxsize=64)
def allowance(entries: tuple[str, ...]) -> Allowance:
    """`browser.allow_addresses` parsed; a bad entry raises ValueError naming it."""
    networks, ports = [], set()
    for entry in entries:
        text = str(entry).strip()
        try:
            if text.startswith("[") and "]:" in text:  # [v6]:port
                host, port = text[1:].split("]:")
                ports.add((ipaddress.ip_address(host), int(port)))
            elif text.count(":") == 1:  # v4:port
                host, port = text.split(":")
                ports.add((ipaddress.ip_address(host), int(port)))
            else:
                networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError as e:
            raise ValueError(
                f"browser.allow_addresses: {text!r} is not an address, a network or address:port"
            ) from e
    return Allowance(tuple(networks), frozenset(ports))


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public(ip.ipv4_mapped)
        if ip.sixtofour is not None or ip.teredo is not None:
            return False  # tunnels lead to addresses that were not checked
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def resolve(host: str, port: int, allow: Allowance) -> str:
    """The address to connect to for `host:port`: every address the name resolves to must be public or
    allowed, else `Refused` (a name with one private address among public ones is refused too)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise Refused("blocked_unresolved", f"{host}: {e}") from e
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not (is_public(ip) or allow.covers(ip, port)):
            raise Refused("blocked_private_address", f"{host}:{port} resolves to {address}")
    return addresses[0]


class _Pinned(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedTLS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self):
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


@dataclass
class Fetched:
    url: str  # after redirects
    status: int
    headers: dict[str, str]
    body: bytes


def fetch(
    url: str,
    allow: Allowance,
    timeout: float,
    max_bytes: int,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Fetched:
    """`url` fetched with every hop checked and pinned (see the module); redirects followed up to
    `MAX_REDIRECTS`; a body over `max_bytes` is `Refused("blocked_bytes")`."""
    sent = {
        k: v for k, v in (headers or {}).items() if k.lower() not in _HOP_HEADERS and not k.startswith(":")
    }
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Refused("blocked_scheme", url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = resolve(parts.hostname, port, allow)
        kind = _PinnedTLS if parts.scheme == "https" else _Pinned
        conn = kind(parts.hostname, port, address, timeout)
        try:
            target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
            conn.request(method, target, body=body, headers=sent)
            response = conn.getresponse()
            location = response.getheader("Location")
            if response.status in REDIRECTS and location:
                url = urllib.parse.urljoin(url, location)
                if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                    method, body = "GET", None
                continue
            data = response.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise Refused("blocked_bytes", f"{url}: over {max_bytes} bytes")
            return Fetched(url, response.status, dict(response.getheaders()), data)
        finally:
            conn.close()
    raise Refused("blocked_redirects", f"{url}: over {MAX_REDIRECTS} redirects")

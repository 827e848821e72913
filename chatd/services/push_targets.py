"""Where a push may go: URLs users give are checked, and re-checked on the resolved address at each delivery.

A push target is a URL chosen by a user, so a server that POSTs to it
blindly would let any user make it probe the internal network (or a cloud
metadata service). Unless ``push.allow_private_targets``: only http(s), and
every address the host resolves to must be public (not loopback, private,
link-local, multicast, reserved, unspecified, shared CGNAT, or an IPv4 one of
those inside IPv6). The connection then goes to the address that was checked
(the URL's host kept for ``Host`` and TLS), so a DNS answer that changes
between check and connect (rebinding) cannot slip through.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

import attrs
import trio

from chatd.errors import Invalid

MAX_URL_CHARS = 2048


class TargetRefused(Exception):
    """The target resolves to an address chatd will not send to (or does not resolve)."""


@attrs.frozen
class Target:
    """A URL with its host pinned to a checked address."""

    url: str
    host: str

    @property
    def sni(self) -> str | None:
        return self.host if urlsplit(self.url).scheme == "https" else None


def check_url(url: str) -> str:
    """Validate a target URL's shape at subscribe time; Invalid otherwise."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise Invalid(f"url: 1..{MAX_URL_CHARS} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("url: an http or https URL with a host")
    if any(c.isspace() for c in url) or parts.username or parts.password:
        raise Invalid("url: no spaces, no credentials")
    return url


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
    if ip in ipaddress.ip_network("100.64.0.0/10"):  # shared address space (CGNAT)
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_loopback)


async def resolve(url: str, *, allow_private: bool) -> Target:
    """The URL to connect to: its host replaced by a checked address. Raises TargetRefused."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetRefused(f"cannot resolve {host!r}: {exc}") from exc
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise TargetRefused(f"{host!r} has no address")
    if not allow_private:
        refused = [a for a in addresses if not is_public(a)]
        if refused:
            raise TargetRefused(f"{host!r} resolves to a non-public address ({refused[0]})")
    address = addresses[0]
    netloc = f"[{address}]" if ":" in address else address
    if parts.port is not None:
        netloc += f":{parts.port}"
    return Target(urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), host)

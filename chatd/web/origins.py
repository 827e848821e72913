"""Which browser origins may use the API: CORS answers and the WebSocket ``Origin`` check.

A browser tells the server which page is calling in the ``Origin`` header.
Allowed are the server's own origin (the page was served by this host:port)
and those listed in ``security.allowed_origins`` (``"*"``: any). Native
clients send no ``Origin`` and are not concerned.

"Own origin" is judged against the request's ``Host`` header: an ``http``
or ``https`` origin whose host and port equal it, where a ``Host`` without a
port means the scheme's default port. Either scheme counts because behind a
TLS-terminating proxy the browser's page is ``https`` while chatd sees plain
HTTP with the same ``Host``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chatd.errors import Forbidden

DEFAULT_PORTS = {"http": 80, "https": 443}


def _split_host(hostport: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (IPv6 in brackets) to (host, port); None when malformed."""
    if hostport.startswith("["):
        host, bracket, rest = hostport.partition("]")
        if not bracket:
            return None
        host += "]"
        port = rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            return None
    else:
        host, colon, port_text = hostport.rpartition(":")
        if not colon:
            host, port = hostport, None
        else:
            port = port_text
    if not host:
        return None
    if port is None:
        return host.lower(), None
    if not port.isdigit() or len(port) > 5:
        return None
    return host.lower(), int(port)


def normalize(origin: str) -> str:
    """Lower-cased, without the scheme's default port: how origins are compared."""
    scheme, sep, rest = origin.strip().partition("://")
    if not sep:
        return origin.strip().lower()
    scheme = scheme.lower()
    split = _split_host(rest)
    if split is None:
        return origin.strip().lower()
    host, port = split
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def is_own_origin(origin: str, host_header: str | None) -> bool:
    """The page's origin is this server, as the client addressed it (``Host``)."""
    if not host_header:
        return False
    scheme, sep, rest = origin.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        return False
    page, host = _split_host(rest), _split_host(host_header.strip())
    if page is None or host is None:
        return False
    page_port = page[1] if page[1] is not None else DEFAULT_PORTS[scheme]
    if host[1] is None:
        return page[0] == host[0] and page_port == DEFAULT_PORTS[scheme]
    return page[0] == host[0] and page_port == host[1]


class OriginPolicy:
    """``security.allowed_origins`` plus the server's own origin."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        allowed = list(allowed)
        self.any = "*" in allowed
        self.allowed = frozenset(normalize(o) for o in allowed if o != "*")

    def allows(self, origin: str, host_header: str | None) -> bool:
        return self.any or normalize(origin) in self.allowed or is_own_origin(origin, host_header)

    def check_upgrade(self, scope: dict[str, Any]) -> None:
        """Raise Forbidden when a WebSocket upgrade comes from a page not allowed.

        ``scope`` is ASGI-like: ``headers`` as (bytes, bytes) pairs. No
        ``Origin`` (a native client) passes; several ``Origin`` headers must
        all pass.
        """
        origins: list[str] = []
        host: str | None = None
        for name, value in scope.get("headers", ()):
            lowered = name.lower()
            if lowered == b"origin":
                origins.append(value.decode("latin-1"))
            elif lowered == b"host" and host is None:
                host = value.decode("latin-1")
        for origin in origins:
            if not self.allows(origin, host):
                raise Forbidden("origin not allowed")

"""The web client's files (PROTOCOL §11): ``/``, ``/sw.js`` and ``/assets/<hash>/<name>``.

The files ship inside the package (``chatd/web/static/``) and are read once,
at start-up, into memory: a handful of small files, so every answer is a
dictionary lookup (no path from a request ever touches the file system, so
no traversal is possible) and they are gzipped once rather than per request.

Caching: every asset is served under ``/assets/<hash>/`` where ``<hash>`` is
a digest of all the files together, so an asset URL never changes meaning
and is cached for a year (``immutable``); the ES modules import each other by
relative paths, so they all carry the same hash without any rewriting. Only
``/`` (which names the hash) and the service worker (which browsers must be
able to update) are revalidated on every load, with an ``ETag``.

Every answer carries a strict Content-Security-Policy (no inline script or
style, nothing from another host; ``connect-src`` is the page's own origin
and its WebSocket URL) and ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import attrs
from quart import Quart, Response, request

from chatd.web.http_errors import error_body

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS_PLACEHOLDER = "{{ASSETS}}"
PRELOAD_PLACEHOLDER = "{{PRELOAD}}"
YEAR_S = 365 * 24 * 3600
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
}
#: A Host header we are willing to echo into the CSP: host name or [IPv6], optional port.
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")
#: Answers smaller than this are not worth a gzip header.
_GZIP_MIN = 512


@attrs.frozen
class Asset:
    """One file as served: its bytes, their gzip, its type and a strong ETag."""

    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str

    @classmethod
    def of(cls, name: str, body: bytes) -> Asset:
        packed = gzip.compress(body, 9, mtime=0) if len(body) >= _GZIP_MIN else None
        if packed is not None and len(packed) >= len(body):
            packed = None
        content_type = CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")
        return cls(body, packed, content_type, '"' + hashlib.sha256(body).hexdigest()[:16] + '"')


@attrs.frozen
class StaticSite:
    """The client's files in memory: the page, the service worker and the hashed assets."""

    version: str
    index: Asset
    service_worker: Asset
    assets: dict[str, Asset]

    @classmethod
    def load(cls, root: Path = STATIC_DIR) -> StaticSite:
        files = {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        }
        digest = hashlib.sha256()
        for name, body in files.items():
            digest.update(name.encode() + b"\0" + hashlib.sha256(body).digest())
        version = digest.hexdigest()[:16]
        # Every module announced up front: the browser fetches them in parallel instead of
        # discovering them one import level at a time.
        preload = "\n".join(
            f'<link rel="modulepreload" href="/assets/{version}/{name}">'
            for name in files if name.endswith(".js") and name != "sw.js"
        )
        page = (files.pop("index.html").decode().replace(PRELOAD_PLACEHOLDER, preload)
                .replace(ASSETS_PLACEHOLDER, f"/assets/{version}"))
        worker = files.pop("sw.js")
        return cls(
            version,
            Asset.of("index.html", page.encode()),
            Asset.of("sw.js", worker),
            {name: Asset.of(name, body) for name, body in files.items()},
        )


def content_security_policy(host: str | None) -> str:
    """The page's CSP: same origin only; the WebSocket URL of the host the page came from."""
    connect = "'self'"
    if host and _HOST_RE.match(host):
        connect += f" ws://{host} wss://{host}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        f"connect-src {connect}; worker-src 'self'; manifest-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _answer(asset: Asset, cache_control: str) -> Response:
    headers = {
        "Cache-Control": cache_control,
        "ETag": asset.etag,
        "Content-Security-Policy": content_security_policy(request.headers.get("Host")),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Vary": "Accept-Encoding",
    }
    if asset.etag in request.headers.get("If-None-Match", ""):
        return Response("", status=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    return Response(body, status=200, content_type=asset.content_type, headers=headers)


def install(app: Quart, site: StaticSite | None = None) -> None:
    """Add the client's routes to the HTTP app (none of them under ``/v1``)."""
    files = site or StaticSite.load()
    revalidate = "no-cache"
    forever = f"public, max-age={YEAR_S}, immutable"

    @app.get("/")
    async def index() -> Response:
        return _answer(files.index, revalidate)

    @app.get("/sw.js")
    async def service_worker() -> Response:
        return _answer(files.service_worker, revalidate)

    @app.get("/assets/<version>/<path:name>")
    async def asset(version: str, name: str) -> Response:
        found = files.assets.get(name)
        if version != files.version or found is None:
            # An old page asking for assets that are gone: no year-long cache for a 404.
            return Response(error_body("not_found", "no such file"), status=404,
                            content_type="application/json", headers={"Cache-Control": "no-store"})
        return _answer(found, forever)

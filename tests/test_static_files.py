"""The web client's file serving (chatd/web/static_files.py), without a browser."""

from __future__ import annotations

from pathlib import Path

import httpx

from chatd.web.static_files import StaticSite, content_security_policy
from tests.support import running_server


def write_site(root: Path, script: str) -> None:
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text('<script type="module" src="{{ASSETS}}/main.js"></script>')
    (root / "sw.js").write_text("// worker")
    (root / "main.js").write_text(script)


def test_the_asset_hash_follows_the_content(tmp_path: Path) -> None:
    write_site(tmp_path / "a", "console.log(1)")
    write_site(tmp_path / "b", "console.log(2)")
    first, again, other = StaticSite.load(tmp_path / "a"), StaticSite.load(tmp_path / "a"), StaticSite.load(tmp_path / "b")
    assert first.version == again.version != other.version
    assert f"/assets/{first.version}/main.js".encode() in first.index.body
    assert set(first.assets) == {"main.js"}  # the page and the worker have their own routes


def test_the_shipped_client_loads_and_names_no_other_host() -> None:
    site = StaticSite.load()
    assert {"main.js", "app.js", "app.css"} <= set(site.assets)
    for name, asset in site.assets.items():
        text = asset.body.decode()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, name


def test_the_csp_names_only_a_well_formed_host() -> None:
    assert "connect-src 'self' ws://chat.example.com:8080 wss://chat.example.com:8080;" in \
        content_security_policy("chat.example.com:8080")
    assert "connect-src 'self' ws://[::1]:80 wss://[::1]:80;" in content_security_policy("[::1]:80")
    for hostile in ("evil.com; script-src *", "a b", "x'y", "", None, "h" * 300):
        assert "connect-src 'self';" in content_security_policy(hostile)


async def test_a_hostile_host_header_cannot_widen_the_policy(db_url: str) -> None:
    async with running_server(db_url) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        answer = await http.get("/", headers={"Host": "evil.example;script-src *"})
        assert answer.status_code in (200, 400)
        if answer.status_code == 200:
            assert "evil" not in answer.headers["content-security-policy"]
        page = await http.get("/")
        assert page.headers["x-content-type-options"] == "nosniff"
        assert (await http.head("/")).status_code == 200
        assert (await http.post("/")).status_code == 405
        assert (await http.get("/assets/whatever/main.js")).status_code == 404

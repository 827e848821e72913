"""Helpers for the browser tests: a ``chatd serve`` process, seeded users, and pages in chromium.

Playwright cannot download browsers here: Debian's ``chromium`` is used, and
the tests skip (saying why) only when no chromium executable exists at all.
Every page reaches chatd through its own :class:`tests.relay.Relay`, so a test
can cut one user's connection for real. A :class:`Web` records every console
error and every request to another origin of every page it opened; the test
fails at teardown if there was one.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import trio

from chatd.db.stores import Stores
from chatd.hub import Hub
from chatd.services.auth import AuthService
from chatd.testing import listening_url, serve_command
from tests.processes import cli_env
from tests.relay import Relay
from tests.support import admin_group, open_db

PASSWORD = "correct horse 1"
_names = itertools.count(1)
#: What a deliberately cut connection makes Chromium print; allowed only where a test cuts.
NETWORK_ERRORS = re.compile(r"WebSocket connection to .* failed|net::ERR_|Failed to load resource: net::")
#: Chromium's own notice when a page calls pushManager.subscribe() in a context without a
#: profile (every Playwright context is one): the environment, not the client, so tolerated.
INCOGNITO_PUSH = "does not support the Push API in incognito mode"


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@attrs.define
class User:
    user_id: int
    username: str
    display_name: str
    token: str


@attrs.define
class Site:
    """One ``chatd serve`` for a test module, and a way to seed it."""

    url: str
    db_url: str
    proc: subprocess.Popen[bytes]
    #: Contract routes this server does not answer yet (their issue is not merged): the
    #: client's calls to them fail with a 404 that Chromium logs, which is tolerated
    #: only while the route is missing.
    missing: list[re.Pattern[str]] = attrs.field(factory=list)

    def probe(self) -> None:
        routes = {
            "/v1/channels/1/receipts?seq=1": r"/v1/channels/\d+/receipts",  # issue 9
            "/v1/push/vapid": r"/v1/push/vapid$",  # issue 10
        }
        with httpx.Client(base_url=self.url) as http:
            for path, pattern in routes.items():
                if http.get(path).status_code == 404:  # an existing route says 401 to no token
                    self.missing.append(re.compile(pattern))

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port

    def seed(self, *names: str, group: str | None = "general", messages: int = 0) -> tuple[list[User], int | None]:
        """Users (password PASSWORD, display name = the name titled) and optionally one group of all."""
        suffix = next(_names)
        return trio.run(self._seed, [f"{n}_{suffix}" for n in names], group, messages)

    async def _seed(self, usernames: list[str], group: str | None, messages: int) -> tuple[list[User], int | None]:
        async with open_db(self.db_url) as db:
            stores = Stores.over(db)
            auth = AuthService(stores.users, Hub())
            password_hash = await auth.hash_password(PASSWORD)
            users = []
            for name in usernames:
                display = name.split("_")[0].title()
                row = await stores.users.create(name, display, password_hash, False)
                token, _ = await auth.issue_token(row.user_id, "test")
                users.append(User(row.user_id, name, display, token))
            channel_id = None
            if group is not None:
                channel = await admin_group(stores, users[0].user_id, group, [u.user_id for u in users])
                channel_id = channel.channel_id
        for i in range(messages):
            assert channel_id is not None
            self.api(users[0]).post(f"/v1/channels/{channel_id}/messages",
                                    json={"client_msg_id": f"seed-{i}", "text": f"seeded message {i}"})
        return users, channel_id

    def api(self, user: User) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {user.token}"}, timeout=20)

    def texts(self, user: User, channel_id: int) -> list[str]:
        """Every message text of a channel, oldest first, as the server has them."""
        with self.api(user) as api:
            answer = api.get(f"/v1/channels/{channel_id}/messages", params={"limit": 200})
            answer.raise_for_status()
            return [m["text"] for m in reversed(answer.json()["messages"])]


def start_site(db_url: str, cwd: Path) -> Iterator[Site]:
    log = (cwd / "serve.log").open("wb")
    proc = subprocess.Popen(serve_command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                            cwd=cwd, env=cli_env(db_url))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = listening_url(line)
        assert url is not None, f"chatd serve did not start: {(cwd / 'serve.log').read_text()}"
        site = Site(url, db_url, proc)
        site.probe()
        yield site
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class Web:
    """The pages of one test: each through its own relay, watched for errors and foreign requests."""

    def __init__(self, browser: Any, site: Site) -> None:
        self.browser = browser
        self.site = site
        self.relays: list[Relay] = []
        self.contexts: list[Any] = []
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.cuts_network = False

    def open(self, user: User | None = None, *, viewport: dict[str, int] | None = None,
             init_script: str | None = None) -> Any:
        relay = Relay(self.site.port)
        self.relays.append(relay)
        context = self.browser.new_context(base_url=relay.url, viewport=viewport or {"width": 1200, "height": 800})
        self.contexts.append(context)
        page = context.new_page()
        if init_script is not None:
            page.add_init_script(init_script)
        origin = relay.url
        ws_origin = origin.replace("http://", "ws://")

        def on_request(request: Any) -> None:
            if not request.url.startswith((origin + "/", "data:", "blob:")):
                self.foreign.append(request.url)

        sent: list[dict[str, Any]] = []

        def on_frame(payload: Any) -> None:
            if isinstance(payload, str):
                sent.append(json.loads(payload))

        def on_websocket(ws: Any) -> None:
            if not ws.url.startswith(ws_origin + "/"):
                self.foreign.append(ws.url)
            ws.on("framesent", on_frame)

        context.on("request", on_request)
        page.on("websocket", on_websocket)
        def on_console(msg: Any) -> None:
            if msg.type != "error":
                return
            where = msg.location.get("url", "") if isinstance(msg.location, dict) else ""
            if "404" in msg.text and any(p.search(where) for p in self.site.missing):
                return
            if INCOGNITO_PUSH in msg.text:
                return
            self.errors.append(f"{origin}: {msg.text} ({where})")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"{origin}: uncaught {exc}"))
        page.relay = relay
        page.sent_frames = sent  # every frame the page sent on any of its WebSockets
        page.goto("/")
        if user is not None:
            login(page, user)
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()
        for relay in self.relays:
            relay.close()

    def problems(self) -> list[str]:
        errors = [e for e in self.errors if not (self.cuts_network and NETWORK_ERRORS.search(e))]
        return errors + [f"request to another origin: {u}" for u in self.foreign]


def login(page: Any, user: User) -> None:
    from playwright.sync_api import expect

    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("navigation", name="Channels")).to_be_visible()

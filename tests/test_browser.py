"""The web client (PROTOCOL §11) in a real browser: Debian's chromium driven by Playwright.

One ``chatd serve`` and one browser for the module; every test seeds its own
users and channel, so tests do not depend on each other. Each page reaches
chatd through its own TCP relay, which the offline tests cut for real. Every
test also fails on any console error or request to another origin (see
tests/browser.py).
"""

from __future__ import annotations

import re
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser import Site, User, Web, find_chromium, login, start_site

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable found (apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
expect = sync_api.expect
expect.set_options(timeout=20_000)

#: A tick once the server acknowledged the send.
SETTLED = re.compile("^(sent|delivered|read)$")


@pytest.fixture(scope="module")
def site(databases: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from start_site(databases.fresh(), tmp_path_factory.mktemp("web"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def web(browser: Any, site: Site) -> Iterator[Web]:
    harness = Web(browser, site)
    try:
        yield harness
    finally:
        harness.close()
    assert harness.problems() == []


def channel_link(page: Any, name: str) -> Any:
    return page.get_by_role("navigation", name="Channels").get_by_role("link", name=name, exact=True)


def open_channel(page: Any, name: str) -> Any:
    channel_link(page, name).click()
    log = page.get_by_role("log", name=name)
    expect(log).to_be_visible()
    return log


def send(page: Any, text: str) -> None:
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    box.press("Enter")


def article(log: Any, text: str) -> Any:
    return log.get_by_role("article").filter(has_text=text)


def chatting_pair(site: Site, web: Web) -> tuple[User, int, Any, Any, Any, Any]:
    """Alice and Bob in "general", each with it open in a page: (alice, channel, pa, pb, la, lb)."""
    (alice, bob), channel_id = site.seed("alice", "bob")
    assert channel_id is not None
    pa, pb = web.open(alice), web.open(bob)
    return alice, channel_id, pa, pb, open_channel(pa, "general"), open_channel(pb, "general")


def post(site: Site, user: User, channel_id: int, text: str) -> dict[str, Any]:
    with site.api(user) as api:
        answer = api.post(f"/v1/channels/{channel_id}/messages", json={"client_msg_id": f"t-{time.time_ns()}", "text": text})
        answer.raise_for_status()
        return dict(answer.json())


def wait_for(predicate: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- serving ---------------------------------------------------------------------------------


def test_page_is_served_with_strict_headers_and_cacheable_assets(site: Site) -> None:
    with httpx.Client(base_url=site.url) as http:
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp
        host = site.url.removeprefix("http://")
        assert f"connect-src 'self' ws://{host} wss://{host}" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-cache"
        assert "<script>" not in page.text and "style=" not in page.text  # nothing inline
        assets = re.findall(r'(?:src|href)="(/assets/[0-9a-f]{16}/[a-z.]+)"', page.text)
        assert {a.rsplit("/", 1)[1] for a in assets} >= {"icon.svg", "app.css", "main.js", "app.js"}
        assets.sort(key=lambda a: a.endswith("/main.js"))  # the entry module last
        for path in assets:
            asset = http.get(path)
            assert asset.status_code == 200, path
            assert "immutable" in asset.headers["cache-control"] and "max-age=31536000" in asset.headers["cache-control"]
            assert asset.headers["x-content-type-options"] == "nosniff"
        module = http.get(assets[-1])
        assert module.headers["content-type"].startswith("text/javascript")
        assert http.get(assets[-1], headers={"If-None-Match": module.headers["etag"]}).status_code == 304
        stale = http.get(re.sub(r"/assets/[0-9a-f]{16}/", "/assets/0000000000000000/", assets[-1]))
        assert stale.status_code == 404 and stale.json()["error"]["code"] == "not_found"
        assert "immutable" not in stale.headers.get("cache-control", "")
        assert http.get("/assets/" + assets[-1].split("/")[2] + "/../pyproject.toml").status_code == 404
        worker = http.get("/sw.js")
        assert worker.status_code == 200 and worker.headers["cache-control"] == "no-cache"
        # The client's routes do not shadow the API's.
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/v1/me").status_code == 401
        gz = http.get(assets[-1], headers={"Accept-Encoding": "gzip"})
        assert gz.headers.get("content-encoding") == "gzip" and gz.text == module.text


# --- the flows of §11 --------------------------------------------------------------------------


def test_two_users_chat_live(site: Site, web: Web) -> None:
    (alice, bob), _ = site.seed("alice", "bob")
    pa, pb = web.open(alice), web.open(bob)
    la, lb = open_channel(pa, "general"), open_channel(pb, "general")
    send(pa, "hello bob")
    expect(article(lb, "hello bob")).to_contain_text("Alice")
    expect(article(la, "hello bob").get_by_role("status", name=SETTLED)).to_be_visible()
    send(pb, "hi alice")
    expect(article(la, "hi alice")).to_contain_text("Bob")
    expect(la.get_by_role("article")).to_have_count(2)
    expect(lb.get_by_role("article")).to_have_count(2)
    expect(pa.get_by_role("textbox", name="Message")).to_have_value("")


def test_unread_badge_counts_and_clears(site: Site, web: Web) -> None:
    (alice, bob), channel_id = site.seed("alice", "bob")
    assert channel_id is not None
    pb = web.open(bob)
    expect(channel_link(pb, "general")).to_be_visible()
    post(site, alice, channel_id, "one")
    post(site, alice, channel_id, "two")
    nav = pb.get_by_role("navigation", name="Channels")
    badge = nav.get_by_label("2 unread")
    expect(badge).to_have_text("2")
    expect(channel_link(pb, "general")).to_have_accessible_description("2 unread")
    open_channel(pb, "general")
    expect(badge).to_have_count(0)


def test_channels_are_ordered_by_last_activity(site: Site, web: Web) -> None:
    (alice, bob), first = site.seed("alice", "bob", group="older")
    assert first is not None
    with site.api(alice) as api:
        second = api.post("/v1/channels", json={"kind": "group", "name": "newer", "members": [bob.user_id]}).json()
    post(site, alice, second["channel_id"], "in newer")
    post(site, alice, first, "in older, last")
    pb = web.open(bob)
    links = pb.get_by_role("navigation", name="Channels").get_by_role("link")
    expect(links).to_have_text(["older", "newer"])
    post(site, alice, second["channel_id"], "newer again")
    expect(links).to_have_text(["newer", "older"])


def test_ticks_turn_to_read(site: Site, web: Web) -> None:
    (alice, bob), _ = site.seed("alice", "bob")
    pa = web.open(alice)
    la = open_channel(pa, "general")
    send(pa, "did you read this")
    tick = article(la, "did you read this").get_by_role("status")
    expect(tick).to_have_accessible_name(re.compile("^(sent|delivered)$"))
    pb = web.open(bob)
    expect(channel_link(pb, "general")).to_be_visible()
    expect(tick).to_have_accessible_name("delivered")
    open_channel(pb, "general")
    expect(tick).to_have_accessible_name("read")
    # The server counts it read too: a new device of bob's shows no unread badge.
    pb2 = web.open(bob)
    expect(channel_link(pb2, "general")).to_be_visible()
    expect(pb2.get_by_role("navigation", name="Channels").get_by_label(re.compile("unread"))).to_have_count(0)


def test_typing_is_shown(site: Site, web: Web) -> None:
    (alice, bob), _ = site.seed("alice", "bob")
    pa, pb = web.open(alice), web.open(bob)
    open_channel(pa, "general")
    open_channel(pb, "general")
    pa.get_by_role("textbox", name="Message").press_sequentially("hel")
    expect(pb.get_by_role("status").filter(has_text="Alice is typing…")).to_be_visible()


def test_offline_catch_up_without_duplicates_or_loss(site: Site, web: Web) -> None:
    web.cuts_network = True
    (alice, bob), channel_id = site.seed("alice", "bob")
    assert channel_id is not None
    pb = web.open(bob)
    lb = open_channel(pb, "general")
    post(site, alice, channel_id, "before the cut")
    expect(article(lb, "before the cut")).to_have_count(1)
    pb.evaluate("window.sameDocument = true")
    pb.relay.down()
    expect(pb.get_by_text(re.compile("Offline|Connecting"))).to_be_visible()
    for i in range(3):
        post(site, alice, channel_id, f"while away {i}")
    pb.relay.restore()
    for i in range(3):
        expect(article(lb, f"while away {i}")).to_have_count(1)
    expect(lb.get_by_role("article")).to_have_count(4)
    post(site, alice, channel_id, "after the return")
    expect(article(lb, "after the return")).to_have_count(1)
    expect(lb.get_by_role("article")).to_have_count(5)
    assert pb.evaluate("window.sameDocument") is True  # caught up without reloading
    cursor = pb.evaluate(f"localStorage.getItem('chatd.cursor.{bob.user_id}')")
    assert int(cursor) >= 5


def test_send_made_offline_is_delivered_exactly_once(site: Site, web: Web) -> None:
    web.cuts_network = True
    alice, channel_id, pa, pb, la, lb = chatting_pair(site, web)
    pa.relay.down()
    expect(pa.get_by_text(re.compile("Offline|Connecting"))).to_be_visible()
    send(pa, "written offline")
    mine = article(la, "written offline")
    expect(mine.get_by_role("status")).to_have_accessible_name("sending")
    time.sleep(0.5)
    assert "written offline" not in site.texts(alice, channel_id)
    pa.relay.restore()
    expect(mine.get_by_role("status")).to_have_accessible_name(SETTLED)
    expect(article(lb, "written offline")).to_have_count(1)
    expect(mine).to_have_count(1)
    assert site.texts(alice, channel_id).count("written offline") == 1


def test_send_whose_ack_is_lost_is_retried_and_shown_once(site: Site, web: Web) -> None:
    web.cuts_network = True
    alice, channel_id, pa, pb, la, lb = chatting_pair(site, web)
    pa.relay.hold_downstream = True  # the server's answers to alice vanish from here on
    send(pa, "ack gets lost")
    wait_for(lambda: "ack gets lost" in site.texts(alice, channel_id), "the server to commit the send")
    expect(article(la, "ack gets lost").get_by_role("status")).to_have_accessible_name("sending")
    pa.relay.cut()
    pa.relay.restore()
    expect(article(la, "ack gets lost").get_by_role("status")).to_have_accessible_name(SETTLED)
    def sends() -> list[dict[str, Any]]:
        return [f for f in pa.sent_frames if f.get("type") == "send"]

    wait_for(lambda: len(sends()) >= 2, "the retry after the reconnect")
    assert len({f["client_msg_id"] for f in sends()}) == 1  # the same id every time
    expect(article(la, "ack gets lost")).to_have_count(1)
    expect(article(lb, "ack gets lost")).to_have_count(1)
    time.sleep(0.5)
    expect(article(la, "ack gets lost")).to_have_count(1)
    assert site.texts(alice, channel_id).count("ack gets lost") == 1


def test_history_scrolls_back(site: Site, web: Web) -> None:
    (alice, bob), _ = site.seed("alice", "bob", messages=120)
    pb = web.open(bob)
    lb = open_channel(pb, "general")
    expect(article(lb, "seeded message 119")).to_be_visible()
    expect(lb.get_by_role("article")).to_have_count(50)
    lb.evaluate("el => { el.scrollTop = 0; }")
    expect(lb.get_by_role("article")).to_have_count(100)
    lb.evaluate("el => { el.scrollTop = 0; }")
    expect(lb.get_by_role("article")).to_have_count(120)
    expect(lb.get_by_role("article").first).to_contain_text("seeded message 0")


def test_new_message_opens_a_dm_and_new_group_creates_one(site: Site, web: Web) -> None:
    (alice, bob, carol), _ = site.seed("alice", "bob", "carol", group=None)
    pa = web.open(alice)
    pa.get_by_role("button", name="New message").click()
    dialog = pa.get_by_role("dialog", name="New message")
    dialog.get_by_role("searchbox", name="Find people").fill(bob.username)
    expect(dialog.get_by_role("listitem")).to_have_count(1)  # the search's answer, not the first list's
    expect(dialog.get_by_role("button", name=re.compile(bob.username))).to_be_visible()
    dialog.get_by_role("searchbox", name="Find people").press("Enter")  # the first one found
    log = pa.get_by_role("log", name="Bob")
    expect(log).to_be_visible()
    send(pa, "a direct hello")
    expect(article(log, "a direct hello")).to_be_visible()
    pb = web.open(bob)
    expect(article(open_channel(pb, "Alice"), "a direct hello")).to_be_visible()

    pa.get_by_role("button", name="New group").click()
    dialog = pa.get_by_role("dialog", name="New group")
    dialog.get_by_role("textbox", name="Group name").fill("project x")
    for who in (carol, bob):  # what was ticked stays chosen across searches
        dialog.get_by_role("searchbox", name="Find people").fill(who.username)
        dialog.get_by_role("checkbox", name=re.compile(who.username)).check()
    dialog.get_by_role("button", name="Create group").click()
    expect(pa.get_by_role("log", name="project x")).to_be_visible()
    expect(channel_link(pb, "project x")).to_be_visible()  # bob's list learns of it live
    pc = web.open(carol)
    expect(channel_link(pc, "project x")).to_be_visible()


def test_edit_delete_react_reply(site: Site, web: Web) -> None:
    (alice, bob), _ = site.seed("alice", "bob")
    pa, pb = web.open(alice), web.open(bob)
    la, lb = open_channel(pa, "general"), open_channel(pb, "general")
    send(pa, "frist post")
    mine = article(la, "frist post")
    expect(mine.get_by_role("status")).to_have_accessible_name(SETTLED)
    mine.hover()
    mine.get_by_role("button", name="Edit").click()
    editor = la.get_by_role("textbox", name="Edit message")  # the text is now in the editor's value
    expect(editor).to_have_value("frist post")
    expect(editor).to_be_focused()
    editor.press("Escape")  # Escape cancels
    expect(editor).to_have_count(0)
    expect(mine).not_to_contain_text("(edited)")
    mine.hover()
    mine.get_by_role("button", name="Edit").click()
    la.get_by_role("textbox", name="Edit message").fill("first post")
    la.get_by_role("textbox", name="Edit message").press("Enter")
    expect(article(lb, "first post")).to_contain_text("(edited)")

    theirs = article(lb, "first post")
    theirs.hover()
    theirs.get_by_role("button", name="React").click()
    theirs.get_by_role("button", name="👍", exact=True).click()
    expect(article(la, "first post").get_by_role("button", name="👍 1")).to_be_visible()

    theirs.hover()
    theirs.get_by_role("button", name="Reply").click()
    send(pb, "a reply")
    expect(article(la, "a reply")).to_contain_text("Alice: first post")
    expect(la.get_by_role("article").first).to_contain_text("1 reply")  # the root counts its replies
    la.get_by_role("button", name="1 reply").click()
    thread = pa.get_by_role("region", name="Thread")
    expect(thread.get_by_role("article")).to_have_count(2)
    expect(thread.get_by_role("article").last).to_contain_text("a reply")
    thread.get_by_role("button", name="Close thread").click()
    expect(la).to_be_visible()

    send(pa, "to be deleted")
    doomed = article(la, "to be deleted")
    doomed.hover()
    doomed.get_by_role("button", name="Delete").click()
    expect(article(lb, "to be deleted")).to_have_count(0)
    expect(lb.get_by_role("article").filter(has_text="This message was deleted.")).to_have_count(1)


def png_bytes(width: int = 3, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_uploaded_image_is_seen_on_the_other_side(site: Site, web: Web) -> None:
    (alice, bob), _ = site.seed("alice", "bob")
    pa, pb = web.open(alice), web.open(bob)
    open_channel(pa, "general")
    lb = open_channel(pb, "general")
    pa.get_by_label("Attach file").set_input_files(
        files=[{"name": "red.png", "mimeType": "image/png", "buffer": png_bytes()}])
    image = lb.get_by_role("img", name="red.png")
    expect(image).to_be_visible()
    wait_for(lambda: image.evaluate("img => img.complete && img.naturalWidth") == 3, "the image to load")


def test_search_finds_a_message(site: Site, web: Web) -> None:
    (alice, bob), channel_id = site.seed("alice", "bob")
    assert channel_id is not None
    post(site, alice, channel_id, "the zebra crossing is closed")
    post(site, alice, channel_id, "nothing to see")
    pb = web.open(bob)
    search = pb.get_by_role("searchbox", name="Search")
    search.fill("zebra")
    search.press("Enter")
    results = pb.get_by_role("region", name="Search results")
    expect(results.get_by_role("button").filter(has_text="the zebra crossing is closed")).to_have_count(1)
    expect(results.get_by_text("nothing to see")).to_have_count(0)
    results.get_by_role("button").filter(has_text="zebra").click()
    expect(pb.get_by_role("log", name="general")).to_be_visible()


def test_reload_keeps_the_session_and_the_open_channel(site: Site, web: Web) -> None:
    (alice, bob), channel_id = site.seed("alice", "bob")
    assert channel_id is not None
    pa = web.open(alice)
    la = open_channel(pa, "general")
    send(pa, "before reload")
    expect(article(la, "before reload").get_by_role("status")).to_have_accessible_name(SETTLED)
    pa.reload()
    expect(pa.get_by_role("button", name="Log in")).to_have_count(0)
    la = pa.get_by_role("log", name="general")
    expect(article(la, "before reload")).to_have_count(1)
    post(site, bob, channel_id, "after reload")
    expect(article(la, "after reload")).to_have_count(1)
    pa.get_by_role("button", name="Log out").click()
    expect(pa.get_by_role("button", name="Log in")).to_be_visible()
    pa.reload()
    expect(pa.get_by_label("Username")).to_be_visible()


def test_keyboard_and_phone_width(site: Site, web: Web) -> None:
    (alice, bob), _ = site.seed("alice", "bob")
    pa = web.open(alice, viewport={"width": 375, "height": 740})
    nav = pa.get_by_role("navigation", name="Channels")
    expect(nav).to_be_visible()
    assert pa.evaluate("document.documentElement.scrollWidth") <= 375  # nothing wider than the phone
    channel_link(pa, "general").focus()
    pa.keyboard.press("Enter")
    log = pa.get_by_role("log", name="general")
    expect(log).to_be_visible()
    expect(nav).to_be_hidden()  # one pane at a time on a phone
    box = pa.get_by_role("textbox", name="Message")
    box.focus()
    pa.keyboard.type("line one")
    pa.keyboard.press("Shift+Enter")
    pa.keyboard.type("line two")
    expect(log.get_by_role("article")).to_have_count(0)
    pa.keyboard.press("Enter")
    expect(article(log, "line one")).to_contain_text("line one\nline two")
    assert pa.evaluate("document.documentElement.scrollWidth") <= 375
    pa.get_by_role("button", name="Back to channels").click()
    expect(nav).to_be_visible()
    pb = web.open(bob)
    expect(article(open_channel(pb, "general"), "line two")).to_be_visible()


#: Stands in for the Notification API (headless Chromium shows none): permission granted,
#: every notification recorded.
FAKE_NOTIFICATIONS = """
window.shown = [];
window.Notification = class {
  constructor(title, options) { window.shown.push(title + ' | ' + ((options && options.body) || '')); }
  close() {}
  static get permission() { return 'granted'; }
  static requestPermission() { return Promise.resolve('granted'); }
};
"""


def test_desktop_notification_for_a_channel_not_open_and_quiet_push_failure(site: Site, web: Web) -> None:
    (alice, bob), channel_id = site.seed("alice", "bob")
    assert channel_id is not None
    pb = web.open(bob, init_script=FAKE_NOTIFICATIONS)
    expect(channel_link(pb, "general")).to_be_visible()
    # Permission granted: the client tried Web Push, which has no push service here, and
    # said nothing about it (the harness fails on any console error).
    expect(pb.get_by_role("button", name="Enable notifications")).to_be_hidden()
    post(site, alice, channel_id, "ping for bob")
    wait_for(lambda: pb.evaluate("window.shown.length") == 1, "one notification")
    assert pb.evaluate("window.shown[0]") == "Alice in general | ping for bob"
    open_channel(pb, "general")
    post(site, alice, channel_id, "seen in the open channel")
    expect(article(pb.get_by_role("log", name="general"), "seen in the open channel")).to_be_visible()
    assert pb.evaluate("window.shown.length") == 1  # the open, focused channel is not notified


def test_a_revoked_session_returns_to_the_login_form(site: Site, web: Web) -> None:
    (alice,), _ = site.seed("alice")
    pa = web.open(alice)
    expect(channel_link(pa, "general")).to_be_visible()
    token = pa.evaluate("JSON.parse(localStorage.getItem('chatd.session')).token")
    with httpx.Client(base_url=site.url, headers={"Authorization": f"Bearer {token}"}) as http:
        assert http.post("/v1/logout").status_code == 204  # e.g. an admin's `chatd user passwd`
    expect(pa.get_by_role("button", name="Log in")).to_be_visible()
    assert pa.evaluate("localStorage.getItem('chatd.session')") is None
    web.errors = [e for e in web.errors if "401" not in e and "WebSocket" not in e]


def test_login_form_refuses_a_wrong_password_politely(site: Site, web: Web) -> None:
    (alice,), _ = site.seed("alice", group=None)
    page = web.open()
    page.get_by_label("Username").fill(alice.username)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
    web.errors = [e for e in web.errors if "401" not in e]  # Chromium logs every 4xx answer
    login(page, alice)

"""Cold loads of the web client in headless Chromium: page weight and time to the channel list.

Starts its own ``chatd serve`` (embedded PostgreSQL in a temporary data_dir),
creates a user in ``--channels`` groups with a message each, then loads the
client ``--runs`` times, each in a fresh browser context (empty HTTP cache)
that already holds the session in localStorage, as a returning user's new tab
does with a cleared cache. Prints, over the runs, p50/p99/max of:

- bytes transferred (Chromium's encodedDataLength of every HTTP answer:
  headers and compressed bodies; the WebSocket's frames not included);
- milliseconds from navigation start to the first channel link in the
  ``Channels`` navigation (``performance.now()`` in the page when a MutationObserver
  sees it inserted),
  and to the end of the page's own HTML answer (Navigation Timing ``responseEnd``).

Also the same for the login page (no session). Needs Debian's chromium and
Playwright (the ``test`` extra). Usage: ``python benchmarks/web_load.py [--runs 20]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from chatd.testing import listening_url, serve_command  # noqa: E402

PASSWORD = "benchmark pw 1"


def chatd(env: dict[str, str], *args: str, stdin: str | None = None) -> None:
    subprocess.run([sys.executable, "-m", "chatd", *args], env=env, input=stdin, text=True, check=True,
                   stdout=subprocess.DEVNULL)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def summary(name: str, values: list[float], unit: str) -> str:
    return (f"{name:<34} p50 {percentile(values, 50):>9.1f}  p99 {percentile(values, 99):>9.1f}  "
            f"max {max(values):>9.1f} {unit}")


def cold_load(browser: Any, url: str, storage: Any, wait_for: str) -> tuple[float, float, float]:
    context = browser.new_context(storage_state=storage)
    page = context.new_page()
    # Timed inside the page, when the element is inserted: not when the driver notices it.
    page.add_init_script(
        "window.seenAt = null; new MutationObserver((_, obs) => {"
        f"  if (document.querySelector({wait_for!r})) {{ window.seenAt = performance.now(); obs.disconnect(); }}"
        "}).observe(document, {subtree: true, childList: true});")
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    transferred: list[float] = []
    cdp.on("Network.loadingFinished", lambda e: transferred.append(e["encodedDataLength"]))
    page.goto(url)
    page.wait_for_selector(wait_for)
    ms = page.evaluate("window.seenAt")
    html = page.evaluate("performance.getEntriesByType('navigation')[0].responseEnd")
    page.wait_for_load_state("networkidle")
    context.close()
    return sum(transferred), ms, html


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--channels", type=int, default=10)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
        env.update(CHATD_DATA_DIR=str(Path(tmp) / "var"), CHATD_SERVER_PORT="0")
        # This checkout's chatd, whatever the interpreter has installed.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        chatd(env, "user", "add", "bench", "--password-stdin", stdin=PASSWORD + "\n")
        chatd(env, "user", "add", "peer", "--password-stdin", stdin=PASSWORD + "\n")
        for i in range(args.channels):
            chatd(env, "channel", "create", f"room-{i}", "--member", "peer", "bench")
        serve = subprocess.Popen(serve_command(), env=env, cwd=tmp, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL)
        try:
            assert serve.stdout is not None
            url = listening_url(serve.stdout.readline())
            assert url, "chatd serve did not start"
            import httpx

            peer = httpx.post(f"{url}/v1/login", json={"username": "peer", "password": PASSWORD,
                                                       "device_name": "bench"}).json()["token"]
            channels = httpx.get(f"{url}/v1/channels", headers={"Authorization": f"Bearer {peer}"}).json()["channels"]
            for c in channels:
                httpx.post(f"{url}/v1/channels/{c['channel_id']}/messages", headers={"Authorization": f"Bearer {peer}"},
                           json={"client_msg_id": f"b{c['channel_id']}", "text": "hello"})
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, headless=True)
                setup = browser.new_context()
                page = setup.new_page()
                page.goto(url)
                page.get_by_label("Username").fill("bench")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Log in").click()
                page.wait_for_selector("nav a")
                storage = setup.storage_state()
                setup.close()
                cold_load(browser, url, storage, "nav a")  # warm the server's code paths once
                signed_in = [cold_load(browser, url, storage, "nav a") for _ in range(args.runs)]
                login = [cold_load(browser, url, None, "form.login button") for _ in range(args.runs)]
                browser.close()
        finally:
            serve.terminate()
            serve.wait(timeout=30)
    print(f"web client cold loads, {args.runs} runs each, {args.channels} channels, headless Chromium")
    print(summary("signed in: bytes transferred", [r[0] for r in signed_in], "B"))
    print(summary("signed in: navigation -> page received", [r[2] for r in signed_in], "ms"))
    print(summary("signed in: navigation -> channels", [r[1] for r in signed_in], "ms"))
    print(summary("login page: bytes transferred", [r[0] for r in login], "B"))
    print(summary("login page: navigation -> form", [r[1] for r in login], "ms"))
    print(f"machine load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())

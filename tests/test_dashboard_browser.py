"""
The dashboard in a real headless browser: Debian's chromium driven by
Playwright (never Playwright's own browser download), against a real site
over loopback with readings in a real SQLite store.

The browser runs in a thread (Playwright's sync API) while the reactor
serves; the test commits new readings from that thread through the reactor
(blockingCallFromThread) and watches them appear without a reload.

The browser is required: where it is missing the test fails and says how to
install it (CI installs it in .ci/run).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import pytest
import pytest_twisted
from twisted.internet import defer, threads
from twisted.internet.threads import blockingCallFromThread

from sensornet.reading import Reading
from sensornet.web.testing import WebHarness

from test_web_api import within

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromiumPath() -> str:
    """
    Debian's chromium (or C{$SENSORNET_CHROMIUM}); fails the test when absent.
    """
    candidates = [os.environ.get("SENSORNET_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "the dashboard test needs a headless browser: install Debian's chromium "
        "(apt-get install -y chromium) or set SENSORNET_CHROMIUM"
    )


def storedHistory(now: float) -> List[Reading]:
    """
    Four minutes of readings for three series, ending a few seconds ago.
    """
    out = []
    for i in range(48):
        t = now - 240 + 5 * i
        out.append(Reading("greenhouse-1", "temperature", round(21.0 + 2.5 * math.sin(i / 7), 2), "C",
                           ts=t, seq=i, dialect="native", peer="127.0.0.1:4000", received_at=t + 0.01))
    for i in range(16):
        t = now - 240 + 15 * i
        out.append(Reading("greenhouse-1", "humidity", round(62.0 - 6 * math.cos(i / 4), 1), "%",
                           ts=t, seq=1000 + i, dialect="native", peer="127.0.0.1:4000", received_at=t + 0.01))
    for i in range(24):
        t = now - 235 + 10 * i
        out.append(Reading("Sensor1", "temperature", round(18.0 + i * 0.12, 2), "C",
                           ts=None, seq=None, dialect="seed", peer="127.0.0.1:4001", received_at=t))
    return out


def browse(url: str, harness: WebHarness, reactor: Any, screenshot: Path) -> Dict[str, Any]:
    """
    Runs in a thread: load the page, check what it draws, commit readings
    through the reactor and watch them arrive. Returns what it saw.
    """
    from playwright.sync_api import sync_playwright

    def commit(readings: List[Reading]) -> None:
        blockingCallFromThread(reactor, lambda: defer.ensureDeferred(harness.store(readings)))

    seen: Dict[str, Any] = {"console": []}
    with tempfile.TemporaryDirectory(prefix="sensornet-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=chromiumPath(),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: seen["console"].append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: seen["console"].append(f"pageerror: {e}"))
            page.on("requestfailed", lambda r: seen["console"].append(f"requestfailed: {r.url}")
                    if not r.url.endswith("/api/stream") else None)
            page.set_default_timeout(20000)
            page.goto(url, wait_until="load")
            page.wait_for_function(
                "() => document.querySelectorAll('.card').length === 3 && "
                "[...document.querySelectorAll('.chart')].every(c => Number(c.dataset.points) > 0)"
            )
            page.wait_for_function("() => document.getElementById('status').dataset.state === 'live'")
            page.evaluate("() => { window.__sameDocument = true; }")
            seen["cards"] = page.eval_on_selector_all(
                ".card",
                """cards => cards.map(c => ({
                    sensor: c.dataset.sensor, kind: c.dataset.kind,
                    points: Number(c.querySelector('.chart').dataset.points),
                    value: c.querySelector('.value').textContent,
                    unit: c.querySelector('.unit').textContent,
                    connected: c.querySelector('.conn').dataset.connected,
                    inked: (() => {
                        const cv = c.querySelector('.chart');
                        const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
                        let blue = 0;
                        for (let i = 0; i < d.length; i += 4) if (d[i+2] > 150 && d[i] < 80 && d[i+3] > 200) blue++;
                        return blue;
                    })(),
                }))""",
            )

            # A reading committed now shows without a reload.
            now = reactor.seconds()
            commit([Reading("greenhouse-1", "temperature", 27.75, "C", ts=now, seq=48, dialect="native",
                            peer="127.0.0.1:4000", received_at=now)])
            page.wait_for_function(
                "() => document.querySelector('.card[data-sensor=\"greenhouse-1\"][data-kind=\"temperature\"] .value')"
                ".textContent === '27.75'"
            )
            seen["pointsAfter"] = int(page.get_attribute(
                ".card[data-sensor='greenhouse-1'][data-kind='temperature'] .chart", "data-points"))
            # A sensor never seen before gets its own chart, live, and its
            # connection state from the server.
            blockingCallFromThread(reactor, harness.connected.add, "cellar")
            commit([Reading("cellar", "humidity", 81.5, "%", ts=now + 0.5, seq=1, dialect="native",
                            peer="127.0.0.1:4002", received_at=now + 0.5)])
            page.wait_for_function(
                "() => document.querySelector('.card[data-sensor=\"cellar\"] .chart')?.dataset.points === '1'"
            )
            page.wait_for_function(
                "() => document.querySelector('.card[data-sensor=\"cellar\"] .conn').dataset.connected === 'true'"
            )
            # Another window reloads history for every chart and keeps the live points.
            page.click("button[data-window='3600']")
            page.wait_for_function(
                "() => location.hash === '#window=3600' && "
                "document.querySelector('.card[data-sensor=\"greenhouse-1\"][data-kind=\"temperature\"] .chart')"
                ".getAttribute('aria-label').includes('49 readings in the last 1 h')"
            )
            page.click("button[data-window='300']")
            page.wait_for_function("() => location.hash === '#window=300'")
            seen["sameDocument"] = page.evaluate("() => window.__sameDocument === true")
            seen["cardCount"] = page.locator(".card").count()
            page.wait_for_timeout(300)  # let the last frame paint
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    return seen


@pytest.mark.timeout(180)
@pytest_twisted.ensureDeferred
async def test_dashboard_draws_stored_and_live_readings_in_a_real_browser(tmp_path: Path, reactor: Any):
    """
    The page loads without console errors, draws one chart per series from
    stored readings (latest value, unit, connection state), and shows a
    reading committed during the test, and a new sensor's first reading,
    without a reload. Screenshot: test-artifacts/dashboard.png.
    """
    executable = chromiumPath()
    assert executable
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("the dashboard test needs Playwright's Python package: pip install playwright "
                    "(never 'playwright install': it uses the system chromium)")
    harness = WebHarness(tmp_path, reactor)
    await within(harness.start(), reactor)
    try:
        history = storedHistory(reactor.seconds() - 3)
        await within(harness.store(history), reactor)
        harness.connected = {"greenhouse-1"}
        seen = await within(
            threads.deferToThread(browse, harness.url + "/", harness, reactor, ARTIFACTS / "dashboard.png"),
            reactor, 150,
        )
    finally:
        await within(harness.stop(), reactor)

    assert seen["console"] == []
    cards = {(c["sensor"], c["kind"]): c for c in seen["cards"]}
    assert list(cards) == [("Sensor1", "temperature"), ("greenhouse-1", "humidity"), ("greenhouse-1", "temperature")]
    assert cards[("greenhouse-1", "temperature")]["points"] == 48
    assert cards[("greenhouse-1", "humidity")]["points"] == 16
    assert cards[("Sensor1", "temperature")]["points"] == 24
    assert cards[("greenhouse-1", "humidity")]["unit"] == "%"
    assert cards[("Sensor1", "temperature")]["unit"] == "°C"
    assert cards[("Sensor1", "temperature")]["value"] == "20.76"
    assert cards[("greenhouse-1", "temperature")]["connected"] == "true"
    assert cards[("Sensor1", "temperature")]["connected"] == "false"
    for card in seen["cards"]:
        assert card["inked"] > 200, f"{card['sensor']} {card['kind']}: no line drawn"
    assert seen["pointsAfter"] == 49
    assert seen["sameDocument"] is True
    assert seen["cardCount"] == 4
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10000


def browseRefusedStream(url: str, harness: WebHarness, reactor: Any) -> Dict[str, Any]:
    """
    Runs in a thread: load the page while the server refuses every live
    stream (its cap is 0), see the page say so, let the server take streams
    again, move the page's clock past the retry delay, and see it live.
    """
    from playwright.sync_api import sync_playwright

    stream = harness.site.stream
    seen: Dict[str, Any] = {"console": []}
    with tempfile.TemporaryDirectory(prefix="sensornet-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=chromiumPath(), args=CHROMIUM_ARGS, headless=True,
        )
        try:
            page = context.new_page()
            page.on("pageerror", lambda e: seen["console"].append(f"pageerror: {e}"))
            page.set_default_timeout(20000)
            # The page's timers run on a clock the test moves, so the 30 s
            # retry costs no real time.
            page.clock.install()
            page.goto(url, wait_until="load")
            page.wait_for_function("() => document.getElementById('status').dataset.state === 'error'")
            blockingCallFromThread(reactor, setattr, stream, "maxClients", 1000)
            page.clock.run_for(31000)
            page.wait_for_function("() => document.getElementById('status').dataset.state === 'live'")
            seen["liveAfterRetry"] = True
        finally:
            context.close()
    return seen


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_dashboard_retries_a_stream_the_server_refused(tmp_path: Path, reactor: Any):
    """
    A browser's EventSource gives up for good on the 503 a server at its cap
    of live streams answers; the dashboard then shows the stream as broken
    and opens a new one 30 s later, and is live again once the server takes
    it.
    """
    harness = WebHarness(tmp_path, reactor)
    await within(harness.start(), reactor)
    harness.site.stream.maxClients = 0
    try:
        seen = await within(
            threads.deferToThread(browseRefusedStream, harness.url + "/", harness, reactor), reactor, 100,
        )
        refused = harness.metrics.registry.get_sample_value("sensornet_stream_clients_refused_total")
    finally:
        await within(harness.stop(), reactor)
    assert seen["console"] == []
    assert refused is not None and refused >= 1
    assert seen["liveAfterRetry"] is True

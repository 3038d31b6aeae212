"""
The dashboard in a real headless browser: Debian's chromium driven by
Playwright (never Playwright's own browser download), against a real site
over loopback with thousands of series in a real SQLite store.

The store is filled before the site starts, straight through the store's
own write path (L{storeFleet}: a few readings per series, at a cadence that
makes each series' state known: live, late or silent; and sensors that never
sent, as provisioning leaves them). The browser runs in a thread
(Playwright's sync API) while the reactor serves; the test commits new
readings from that thread through the reactor (blockingCallFromThread) and
watches them arrive without a reload. Every wait is for a condition in the
page, never a fixed sleep.

The browser is required: where it is missing the test fails and says how to
install it (CI installs it in .ci/run).
"""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence

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

#: The cadence of every stored series but greenhouse-1 (seconds): long, so
#: that a state stays what it was built as for the whole test (a series is
#: live up to 2 intervals after its last reading, late up to 5).
INTERVAL = 600.0


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


def requirePlaywright() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("the dashboard test needs Playwright's Python package: pip install playwright "
                    "(never 'playwright install': it uses the system chromium)")


@dataclass(frozen=True)
class Fleet:
    """
    What L{fleetReadings} builds: counts per state, by construction.
    """

    live: int
    late: int
    silent: int
    never: int

    @property
    def series(self) -> int:
        return self.live + self.late + self.silent


def _series(sensor: str, kind: str, unit: str, last: float, base: float, seq0: int, n: int = 6) -> List[Reading]:
    # n readings INTERVAL apart, the last received at `last`.
    out = []
    for j in range(n):
        t = last - (n - 1 - j) * INTERVAL
        out.append(Reading(sensor, kind, round(base + 1.5 * math.sin(j + seq0 % 7), 2), unit, ts=t, seq=seq0 + j,
                           dialect="native", peer="127.0.0.1:4000", received_at=t))
    return out


def fleetReadings(now: float, live: int, late: int, silent: int) -> List[Reading]:
    """
    C{live} temperature series (C{plant-NNNN}, last reading a minute ago),
    C{late} pressure series (C{vent-NNNN}, 3 intervals ago) and C{silent}
    humidity series (C{cellar-NNNN}, 12 intervals ago), six readings each,
    L{INTERVAL} apart.
    """
    out: List[Reading] = []
    for i in range(live):
        out += _series(f"plant-{i:04d}", "temperature", "C", now - 60 - (i % 50), 20 + (i % 9), 0)
    for i in range(late):
        out += _series(f"vent-{i:04d}", "pressure", "hPa", now - 3 * INTERVAL - (i % 50), 1000 + (i % 20), 0)
    for i in range(silent):
        out += _series(f"cellar-{i:04d}", "humidity", "%", now - 12 * INTERVAL - (i % 50), 60 + (i % 15), 0)
    return out


def greenhouseHistory(now: float) -> List[Reading]:
    """
    greenhouse-1's temperature: 48 readings a minute apart, the last 30 s
    ago (live for two more minutes at least), so its 1 h chart has 48 points.
    """
    out = []
    for i in range(48):
        t = now - 30 - (47 - i) * 60
        out.append(Reading("greenhouse-1", "temperature", round(21.0 + 2.5 * math.sin(i / 7), 2), "C",
                           ts=t, seq=i, dialect="native", peer="127.0.0.1:4000", received_at=t))
    return out


def storeFleet(url: str, path: Path, readings: Sequence[Reading], never: Sequence[str]) -> None:
    """
    Blocking (run it in a thread, before the site opens the store): write
    C{readings} through the store's write path in large batches, and add the
    sensors C{never} without any reading (as provisioning a credential
    does).
    """
    from sensornet.store import openStore

    store = openStore(url)
    try:
        for start in range(0, len(readings), 20000):
            store.write(readings[start:start + 20000])
    finally:
        store.close()
    if never:
        db = sqlite3.connect(str(path))
        with db:
            db.executemany("INSERT INTO sensors (name, created_at) VALUES (?, ?)",
                           [(name, int(time.time() * 1_000_000)) for name in never])
        db.close()


@contextmanager
def chromium(viewport: Dict[str, int], seen: Dict[str, Any]) -> Iterator[Any]:
    """
    A fresh Chromium profile and page; console errors and warnings, page
    errors and failed requests (but the live stream's, which the page ends
    itself) are appended to C{seen["console"]}.
    """
    from playwright.sync_api import sync_playwright

    seen.setdefault("console", [])
    with tempfile.TemporaryDirectory(prefix="sensornet-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=chromiumPath(), args=CHROMIUM_ARGS, headless=True, viewport=viewport,
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: seen["console"].append(f"{m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: seen["console"].append(f"pageerror: {e}"))
            page.on("requestfailed", lambda r: seen["console"].append(f"requestfailed: {r.url} {r.failure}")
                    if "/api/stream" not in r.url else None)
            page.set_default_timeout(30000)
            yield page
        finally:
            context.close()


ROWS_JS = """() => [...document.querySelectorAll('#rows tr')].map(tr => ({
    sensor: tr.dataset.sensor, kind: tr.dataset.kind, state: tr.dataset.state,
    value: tr.querySelector('.value').textContent,
    seen: tr.querySelector('.seen time').dateTime,
    spark: Number(tr.querySelector('.trend').dataset.points || -1),
    connected: tr.querySelector('.conn').dataset.connected,
    sparkLabel: tr.querySelector('.trend svg')?.getAttribute('aria-label'),
}))"""

# The chart's pixels, read from a copy (reading the page's own canvas back
# again and again makes Chromium warn on the console).
INKED_JS = """() => {
    const cv = document.getElementById('chart');
    const copy = document.createElement('canvas');
    copy.width = cv.width; copy.height = cv.height;
    const ctx = copy.getContext('2d', {willReadFrequently: true});
    ctx.drawImage(cv, 0, 0);
    const d = ctx.getImageData(0, 0, cv.width, cv.height).data;
    let blue = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i+2] > 150 && d[i] < 80 && d[i+3] > 200) blue++;
    return blue;
}"""


ALERTS_JS = """() => [...document.querySelectorAll('#alert-list li')].map(li => ({
    state: li.dataset.state, text: li.textContent, href: li.querySelector('a').getAttribute('href'),
}))"""

#: Two threshold rules (sensornet.fleet.rules), for the alerts panel.
RULES = """
[[rule]]
name = "plant too hot"
sensor = "plant-*"
kind = "temperature"
above = 40

[[rule]]
name = "greenhouse too hot"
sensor = "greenhouse-*"
kind = "temperature"
above = 25
"""


def rangeIs(page: Any, text: str) -> None:
    page.wait_for_function("t => document.getElementById('range-text').textContent === t", arg=text)


def browseFleet(url: str, harness: WebHarness, reactor: Any) -> Dict[str, Any]:
    """
    Runs in a thread: the overview, search, state filter, sort and paging,
    then one series' detail view with a live reading. Returns what it saw.
    """
    def commit(readings: List[Reading]) -> None:
        blockingCallFromThread(reactor, lambda: defer.ensureDeferred(harness.store(readings)))

    seen: Dict[str, Any] = {}
    with chromium({"width": 1280, "height": 1000}, seen) as page:
        page.goto(url, wait_until="load")
        page.wait_for_function(
            "() => document.querySelector('[data-count=\"series\"]').textContent !== '–' && "
            "document.querySelectorAll('#rows tr').length === 50 && "
            "document.getElementById('sensors').dataset.sparklines === 'true'"
        )
        page.evaluate("() => { window.__sameDocument = true; }")
        seen["counts"] = page.eval_on_selector_all(
            "#counts [data-count]", "ns => Object.fromEntries(ns.map(n => [n.dataset.count, n.textContent]))")
        seen["kinds"] = page.eval_on_selector_all(
            "#kinds tbody tr", "trs => trs.map(tr => [...tr.children].map(c => c.textContent))")
        page.wait_for_function("() => !document.getElementById('alerts').hidden && "
                               "document.querySelectorAll('#alert-list li').length === 1")
        seen["alertsFirst"] = page.evaluate(ALERTS_JS)
        seen["alertCounts"] = page.text_content("#alert-counts")
        seen["firstPage"] = page.evaluate(ROWS_JS)
        seen["rangeFirst"] = page.text_content("#range-text")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"))

        # Paging: the next page, and back.
        page.click("#next-page")
        rangeIs(page, "51–100 of 2,025")
        seen["secondPage"] = page.evaluate(ROWS_JS)
        page.click("#prev-page")
        rangeIs(page, "1–50 of 2,025")
        seen["backToFirst"] = [r["sensor"] for r in page.evaluate(ROWS_JS)]

        # Search: a prefix, then a glob.
        page.fill("#search", "vent-001")
        rangeIs(page, "1–10 of 10")
        seen["prefix"] = [r["sensor"] for r in page.evaluate(ROWS_JS)]
        seen["prefixHash"] = page.evaluate("() => location.hash")
        page.fill("#search", "cellar-0?5?")
        rangeIs(page, "1–40 of 40")
        seen["glob"] = [r["sensor"] for r in page.evaluate(ROWS_JS)]
        page.fill("#search", "")
        rangeIs(page, "1–50 of 2,025")

        # The overview's "silent" count filters the table.
        page.click("#counts button[data-filter-state='silent']")
        rangeIs(page, "1–50 of 400")
        seen["silentStates"] = {r["state"] for r in page.evaluate(ROWS_JS)}
        page.click("#counts button[data-filter-state='']")
        rangeIs(page, "1–50 of 2,025")

        # Sort: name descending, then last seen (newest first), then oldest first.
        page.click("th[data-sort-key='name'] button")
        page.wait_for_function("() => document.querySelector('#rows tr').dataset.sensor === 'vent-0599'")
        seen["nameDesc"] = [r["sensor"] for r in page.evaluate(ROWS_JS)][:3]
        page.click("th[data-sort-key='last_seen'] button")
        page.wait_for_function("() => document.querySelector('th[data-sort-key=\"last_seen\"]')"
                               ".getAttribute('aria-sort') === 'descending' && "
                               "document.querySelector('#rows tr').dataset.state === 'live'")
        rangeIs(page, "1–50 of 2,025")
        seen["newest"] = page.evaluate(ROWS_JS)
        page.click("th[data-sort-key='last_seen'] button")
        page.wait_for_function("() => document.querySelector('#rows tr').dataset.state === 'never'")
        seen["oldest"] = page.evaluate(ROWS_JS)
        # A sensor that never sent opens too, and says so.
        page.click("#rows tr[data-sensor='spare-00'] a")
        page.wait_for_function(
            "() => document.getElementById('detail-state').textContent === 'never seen' && "
            "document.getElementById('chart').dataset.loaded === 'true' && "
            "document.getElementById('chart').getAttribute('aria-label').endsWith('no readings')")
        seen["neverHash"] = page.evaluate("() => location.hash")
        page.click("#back")
        page.wait_for_function("() => !document.getElementById('list-view').hidden && "
                               "location.hash === '#sort=last_seen'")
        page.click("th[data-sort-key='name'] button")
        page.wait_for_function("() => document.querySelector('#rows tr').dataset.sensor === 'cellar-0000'")

        # One series: found by search, opened from the keyboard.
        page.fill("#search", "greenhouse")
        rangeIs(page, "1–1 of 1")
        seen["greenhouseRow"] = page.evaluate(ROWS_JS)[0]
        page.focus("#rows tr a")
        page.keyboard.press("Enter")
        page.wait_for_function(
            "() => location.hash === '#sensor=greenhouse-1&kind=temperature&range=24h' && "
            "!document.getElementById('detail').hidden && "
            "document.getElementById('chart').dataset.loaded === 'true' && "
            "Number(document.getElementById('chart').dataset.points) > 0 && "
            "document.getElementById('detail-live').dataset.state === 'live'"
        )
        seen["day"] = {"points": int(page.get_attribute("#chart", "data-points")),
                       "mode": page.get_attribute("#chart", "data-mode"),
                       "inked": page.evaluate(INKED_JS)}
        page.click(".ranges button[data-range='1h']")
        page.wait_for_function(
            "() => location.hash === '#sensor=greenhouse-1&kind=temperature&range=1h' && "
            "document.getElementById('chart').dataset.mode === 'raw' && "
            "document.getElementById('chart').dataset.points === '48'"
        )
        seen["hour"] = {"inked": page.evaluate(INKED_JS),
                        "connection": page.text_content("#detail-conn"),
                        "value": page.text_content("#detail-value"),
                        "unit": page.text_content("#detail-unit"),
                        "label": page.get_attribute("#chart", "aria-label")}
        for name in ("7d", "90d", "1y"):
            page.click(f".ranges button[data-range='{name}']")
            page.wait_for_function(
                "r => location.hash.endsWith('range=' + r) && "
                "document.getElementById('chart').dataset.loaded === 'true' && "
                "document.getElementById('chart').dataset.mode === 'buckets' && "
                "Number(document.getElementById('chart').dataset.points) > 0", arg=name)
            seen[name] = int(page.get_attribute("#chart", "data-points"))
        page.click(".ranges button[data-range='10m']")
        page.wait_for_function("() => location.hash.endsWith('range=10m') && "
                               "document.getElementById('chart').dataset.loaded === 'true' && "
                               "document.getElementById('chart').dataset.mode === 'raw'")
        seen["10m"] = int(page.get_attribute("#chart", "data-points"))
        page.click(".ranges button[data-range='1h']")
        page.wait_for_function("() => document.getElementById('chart').dataset.points === '48'")

        # A reading committed now arrives on the detail view's stream.
        now = reactor.seconds()
        commit([Reading("greenhouse-1", "temperature", 27.75, "C", ts=now, seq=48, dialect="native",
                        peer="127.0.0.1:4000", received_at=now)])
        page.wait_for_function(
            "() => document.getElementById('detail-value').textContent === '27.75' && "
            "document.getElementById('chart').dataset.points === '49'"
        )
        page.wait_for_function("() => document.getElementById('detail-count').textContent === '49'")
        page.screenshot(path=str(ARTIFACTS / "dashboard-detail.png"))

        # Back to the table, in the same document, the search kept.
        page.click("#back")
        page.wait_for_function(
            "() => !document.getElementById('list-view').hidden && location.hash === '#q=greenhouse' && "
            "document.querySelector('#rows tr')?.dataset.sensor === 'greenhouse-1' && "
            # The rows shown before the detail view stay until the refreshed page arrives.
            "document.querySelector('#rows tr .value').textContent === '27.75 °C'"
        )
        # The live reading broke a rule: the alerts panel says so at once.
        page.wait_for_function("() => document.querySelectorAll('#alert-list li').length === 2")
        seen["alertsAfter"] = page.evaluate(ALERTS_JS)
        seen["afterBack"] = page.evaluate(ROWS_JS)
        seen["sameDocument"] = page.evaluate("() => window.__sameDocument === true")
    return seen


@pytest.mark.timeout(300)
@pytest_twisted.ensureDeferred
async def test_dashboard_overview_table_and_detail_over_thousands_of_series(tmp_path: Path, reactor: Any):
    """
    With 2,000 series and 25 sensors that never sent stored: the overview
    shows the counts by state and by kind as built; the table shows one
    page of 50 with sparklines, pages forward and back, finds by prefix and
    by glob, filters by state and sorts by name and by last seen; a row opens
    from the keyboard on one series' chart (24 h of minute buckets, 1 h and
    10 min of raw readings, 7 d, 90 d and 1 y of hour buckets), where a reading
    committed during the test arrives live and, over a rule's threshold,
    shows in the alerts panel beside the one already firing. No console
    errors. Screenshots:
    test-artifacts/dashboard-overview.png and dashboard-detail.png.
    """
    requirePlaywright()
    from sensornet.fleet.rules import RulesEngine, parseRules

    fleet = Fleet(live=1000, late=600, silent=400, never=25)
    now = reactor.seconds()
    readings = fleetReadings(now, fleet.live - 1, fleet.late, fleet.silent) + greenhouseHistory(now)
    never = [f"spare-{i:02d}" for i in range(fleet.never)]
    path = tmp_path / "readings.sqlite3"
    await within(threads.deferToThread(storeFleet, f"sqlite:{path}", path, readings, never), reactor, 120)
    engine = RulesEngine(parseRules(RULES), reactor)
    harness = WebHarness(tmp_path, reactor, alerts=engine)
    harness.feed.subscribe(engine.readingsCommitted)
    harness.connected = {"greenhouse-1"}
    await within(harness.start(), reactor)
    try:
        # A live plant's reading over its rule's threshold: one alert firing.
        await within(harness.store([Reading("plant-0000", "temperature", 41.25, "C", ts=now + 1, seq=6,
                                            dialect="native", peer="127.0.0.1:4000", received_at=now + 1)]),
                     reactor)
        seen = await within(threads.deferToThread(browseFleet, harness.url + "/", harness, reactor), reactor, 240)
    finally:
        await within(harness.stop(), reactor)

    assert seen["console"] == []
    assert seen["counts"] == {"series": "2,000", "sensors": "of 2,025 sensors", "live": "1,000", "late": "600",
                              "silent": "400", "never": "25"}
    assert seen["kinds"] == [
        ["humidity", "400", "0", "0", "400", "0"],
        ["pressure", "600", "0", "600", "0", "0"],
        ["temperature", "1,000", "1,000", "0", "0", "0"],
    ]
    first = seen["firstPage"]
    assert seen["rangeFirst"] == "1–50 of 2,025"
    assert [r["sensor"] for r in first] == [f"cellar-{i:04d}" for i in range(50)]
    assert {r["state"] for r in first} == {"silent"}
    assert first[0]["kind"] == "humidity" and first[0]["value"].endswith(" %")
    assert all(r["spark"] > 0 for r in first)  # silent for 2 h: the last 24 h still hold its readings
    assert all(r["sparkLabel"].startswith("last 24 h: between ") and r["sparkLabel"].endswith(" %")
               for r in first), first[0]["sparkLabel"]
    assert [r["sensor"] for r in seen["secondPage"]] == [f"cellar-{i:04d}" for i in range(50, 100)]
    assert seen["backToFirst"] == [f"cellar-{i:04d}" for i in range(50)]
    assert seen["prefix"] == [f"vent-{i:04d}" for i in range(10, 20)]
    assert seen["prefixHash"] == "#q=vent-001"
    assert seen["glob"] == sorted(f"cellar-0{a}5{b}" for a in range(4) for b in range(10))
    assert seen["silentStates"] == {"silent"}
    assert seen["nameDesc"] == ["vent-0599", "vent-0598", "vent-0597"]
    newest = [r["seen"] for r in seen["newest"]]
    assert newest == sorted(newest, reverse=True)
    assert {r["state"] for r in seen["newest"]} == {"live"}
    # Oldest first: the sensors that never sent come first, then the silent.
    assert [r["state"] for r in seen["oldest"]] == ["never"] * 25 + ["silent"] * 25
    assert [r["kind"] for r in seen["oldest"][:25]] == [""] * 25
    oldest = [r["seen"] for r in seen["oldest"][25:]]
    assert oldest == sorted(oldest)
    assert seen["neverHash"] == "#sensor=spare-00&kind=&range=24h"
    assert seen["day"]["mode"] == "buckets" and seen["day"]["points"] == 48
    assert seen["day"]["inked"] > 200
    assert seen["hour"]["inked"] > 200
    assert seen["hour"]["unit"] == " °C"
    assert seen["hour"]["connection"] == "open now"
    assert seen["greenhouseRow"]["connected"] == "true"
    assert {r["connected"] for r in first} == {"false"}
    assert "48 readings" in seen["hour"]["label"]
    assert seen["7d"] >= 1 and seen["90d"] >= 1 and seen["1y"] >= 1
    assert 8 <= seen["10m"] <= 10  # a reading a minute, the last 30 s before the test began
    assert [r["sensor"] for r in seen["afterBack"]] == ["greenhouse-1"]
    assert seen["afterBack"][0]["value"] == "27.75 °C"
    assert seen["sameDocument"] is True
    assert seen["alertCounts"] == "(1 firing)"
    assert [a["state"] for a in seen["alertsFirst"]] == ["firing"]
    assert "plant-0000 · temperature plant too hot (41.25)" in seen["alertsFirst"][0]["text"]
    assert seen["alertsFirst"][0]["href"] == "#sensor=plant-0000&kind=temperature&range=24h"
    assert [a["state"] for a in seen["alertsAfter"]] == ["firing", "firing"]
    assert any("greenhouse-1 · temperature greenhouse too hot (27.75)" in a["text"] for a in seen["alertsAfter"])
    for name in ("dashboard-overview.png", "dashboard-detail.png"):
        assert (ARTIFACTS / name).stat().st_size > 20000


def browseRefusedStream(url: str, harness: WebHarness, reactor: Any) -> Dict[str, Any]:
    """
    Runs in a thread: open one series' detail view while the server refuses
    every live stream (its cap is 0), see the page say so, let the server
    take streams again, move the page's clock past the retry delay, and see
    it live.
    """
    stream = harness.site.stream
    seen: Dict[str, Any] = {}
    with chromium({"width": 1000, "height": 700}, seen) as page:
        # The page's timers run on a clock the test moves, so the 30 s
        # retry costs no real time.
        page.clock.install()
        page.goto(url + "#sensor=greenhouse-1&kind=temperature&range=1h", wait_until="load")
        page.wait_for_function("() => document.getElementById('detail-live').dataset.state === 'error'")
        seen["refusedText"] = page.text_content("#detail-live")
        blockingCallFromThread(reactor, setattr, stream, "maxClients", 1000)
        page.clock.run_for(31000)
        page.wait_for_function("() => document.getElementById('detail-live').dataset.state === 'live'")
        seen["liveAfterRetry"] = True
    return seen


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_dashboard_retries_a_stream_the_server_refused(tmp_path: Path, reactor: Any):
    """
    A server at its cap of live streams answers 503; the detail view then
    says its live updates were refused and asks again 30 s later, and is
    live once the server takes it.
    """
    requirePlaywright()
    harness = WebHarness(tmp_path, reactor)
    await within(harness.start(), reactor)
    harness.site.stream.maxClients = 0
    try:
        await within(harness.store(greenhouseHistory(reactor.seconds())), reactor)
        seen = await within(
            threads.deferToThread(browseRefusedStream, harness.url + "/", harness, reactor), reactor, 100,
        )
        refused = harness.metrics.registry.get_sample_value("sensornet_stream_clients_refused_total")
    finally:
        await within(harness.stop(), reactor)
    assert [c for c in seen["console"] if "503" not in c] == []
    assert "refused" in seen["refusedText"]
    assert refused is not None and refused >= 1
    assert seen["liveAfterRetry"] is True


def browseWithToken(url: str, harness: WebHarness, reactor: Any, tokens: Dict[str, str]) -> Dict[str, Any]:
    """
    Runs in a thread: the page against a site that wants a reader's token.
    A wrong token, then the right one; the table, a series' live stream and
    a reload with it; then the server stops taking it and the form returns.
    """
    def commit(readings: List[Reading]) -> None:
        blockingCallFromThread(reactor, lambda: defer.ensureDeferred(harness.store(readings)))

    good = tokens["good"]
    seen: Dict[str, Any] = {"requests": []}
    with chromium({"width": 1100, "height": 800}, seen) as page:
        page.on("request", lambda r: seen["requests"].append(
            (r.url, r.headers.get("authorization"))) if "/api/" in r.url else None)
        page.goto(url, wait_until="load")
        page.wait_for_function("() => !document.getElementById('auth').hidden")
        seen["formFirst"] = {
            "errorHidden": page.is_hidden("#auth-error"),
            "focused": page.evaluate("() => document.activeElement.id"),
            "mainHidden": page.is_hidden("#main"),
            "rows": page.locator("#rows tr").count(),
        }
        page.screenshot(path=str(ARTIFACTS / "dashboard-token.png"))
        # A token the server does not take: asked again, saying so.
        page.fill("#auth-token", tokens["wrong"])
        page.press("#auth-token", "Enter")
        page.wait_for_function("() => !document.getElementById('auth').hidden && "
                               "!document.getElementById('auth-error').hidden")
        seen["storedAfterWrong"] = page.evaluate("() => sessionStorage.length")
        page.fill("#auth-token", good)
        page.click("#auth-form button[type=submit]")
        page.wait_for_function(
            "() => document.getElementById('auth').hidden && document.querySelectorAll('#rows tr').length === 2 && "
            "document.querySelector('[data-count=\"series\"]').textContent === '2'")
        seen["forms"] = page.locator("form#auth-form").count()
        seen["stored"] = page.evaluate("() => Object.values(sessionStorage)")
        seen["mark"] = len(seen["requests"])
        # One series, live: its stream carries the token too.
        page.click("#rows tr[data-sensor='greenhouse-1'] a")
        page.wait_for_function("() => document.getElementById('detail-live').dataset.state === 'live' && "
                               "document.getElementById('chart').dataset.loaded === 'true' && "
                               "document.getElementById('detail-interval').textContent !== '–'")
        now = reactor.seconds()
        commit([Reading("greenhouse-1", "temperature", 31.5, "C", ts=now, seq=48, dialect="native",
                        peer="127.0.0.1:4000", received_at=now)])
        page.wait_for_function("() => document.getElementById('detail-value').textContent === '31.50'")
        # A reload keeps the token for this tab: no form.
        page.reload(wait_until="load")
        page.wait_for_function("() => document.getElementById('chart').dataset.loaded === 'true' && "
                               "document.getElementById('detail-live').dataset.state === 'live'")
        seen["formAfterReload"] = page.is_visible("#auth")
        seen["urls"] = [page.url] + page.evaluate("() => [location.href, document.title]")
        # The server stops taking the token (revoked): the form comes back.
        blockingCallFromThread(reactor, tokens.__setitem__, "good", "")
        page.click("#back")
        page.wait_for_function("() => !document.getElementById('auth').hidden && "
                               "!document.getElementById('auth-error').hidden")
        seen["storedAfterRevoked"] = page.evaluate("() => sessionStorage.length")
    return seen


@pytest.mark.timeout(180)
@pytest_twisted.ensureDeferred
async def test_dashboard_asks_for_a_reader_token_and_sends_it_only_in_a_header(tmp_path: Path, reactor: Any):
    """
    Against a site that wants a reader's token: the page loads, every API
    call's 401 shows one form (focused, the rest of the page hidden); a wrong
    token brings it back saying it was refused; the right one is kept in
    sessionStorage and sent as C{Authorization: Bearer ...} on every request
    after it, the live stream's included (a reading arrives); a reload needs
    no form; when the server stops taking the token the form returns and the
    token is forgotten. The token is never in an address, the title or the
    console. Screenshot: test-artifacts/dashboard-token.png.
    """
    requirePlaywright()
    from sensornet.identity.registry import Principal
    from sensornet.identity.tokens import newToken
    from sensornet.web.auth import BearerAuthenticator

    tokens = {"good": newToken(), "wrong": newToken()}
    good = tokens["good"]
    reader = Principal("wall-screen", "reader")

    def verify(token: str) -> Any:
        return reader if tokens["good"] and token == tokens["good"] else None

    harness = WebHarness(tmp_path, reactor, authenticator=BearerAuthenticator(verify))
    await within(harness.start(), reactor)
    try:
        now = reactor.seconds()
        await within(harness.store(greenhouseHistory(now) + _series("cellar-1", "humidity", "%", now - 60, 70, 0)),
                     reactor)
        seen = await within(
            threads.deferToThread(browseWithToken, harness.url + "/", harness, reactor, tokens), reactor, 150)
    finally:
        await within(harness.stop(), reactor)

    # Chromium reports every 401 answer on the console; nothing else may be there.
    assert [c for c in seen["console"] if "401" not in c] == []
    assert not any(good in c for c in seen["console"])
    assert seen["formFirst"] == {"errorHidden": True, "focused": "auth-token", "mainHidden": True, "rows": 0}
    assert seen["storedAfterWrong"] == 0
    assert seen["forms"] == 1
    assert seen["stored"] == [good]
    after = seen["requests"][seen["mark"]:]
    assert after, "no API request after the token was given"
    assert {header for _, header in after} == {f"Bearer {good}"}
    assert any("/api/stream?" in u for u, _ in after)
    assert not any(good in u for u, _ in seen["requests"])
    assert not any(good in u for u in seen["urls"])
    assert seen["formAfterReload"] is False
    assert seen["storedAfterRevoked"] == 0


def browseWithout(url: str) -> Dict[str, Any]:
    """
    Runs in a thread: the page against a site without the fleet summary,
    sparklines and alerts; on a narrow screen.
    """
    seen: Dict[str, Any] = {}
    with chromium({"width": 700, "height": 900}, seen) as page:
        page.goto(url, wait_until="load")
        page.wait_for_function(
            "() => document.querySelectorAll('#rows tr').length === 2 && "
            "!document.getElementById('overview-missing').hidden && "
            "document.getElementById('sensors').classList.contains('no-trend')")
        # The alerts panel starts hidden and stays so after its 404.
        page.wait_for_function("() => performance.getEntriesByType('resource')"
                               ".some(e => e.name.endsWith('/api/alerts') && e.responseEnd > 0)")
        seen["visible"] = {name: page.is_visible(name) for name in ("#counts", "#kinds", "#alerts", "#trend-head",
                                                                    "#rows tr .trend", "#rows tr .name a")}
        seen["rows"] = page.evaluate(ROWS_JS)
        seen["wide"] = page.evaluate("() => document.documentElement.scrollWidth > window.innerWidth")
        page.screenshot(path=str(ARTIFACTS / "dashboard-narrow.png"), full_page=True)
    return seen


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_dashboard_hides_what_the_server_does_not_offer(tmp_path: Path, reactor: Any):
    """
    A server without C{/api/fleet}, C{/api/sparklines} and C{/api/alerts}
    (404, as before the fleet API): the page still lists the series, says
    that there is no fleet summary, and hides the counts, the alerts panel
    and the trend column; on a narrow screen nothing scrolls sideways.
    Screenshot: test-artifacts/dashboard-narrow.png.
    """
    requirePlaywright()
    harness = WebHarness(tmp_path, reactor)
    await within(harness.start(), reactor)
    api = harness.site.resource.children[b"api"]  # type: ignore[union-attr]
    for name in (b"fleet", b"sparklines", b"alerts"):
        del api.children[name]
    try:
        now = reactor.seconds()
        await within(harness.store(greenhouseHistory(now) + _series("cellar-1", "humidity", "%", now - 60, 70, 0)),
                     reactor)
        seen = await within(threads.deferToThread(browseWithout, harness.url + "/"), reactor, 100)
    finally:
        await within(harness.stop(), reactor)
    # Chromium reports each 404 answer on the console; nothing else may be there.
    assert [c for c in seen["console"] if "404" not in c] == []
    assert seen["visible"] == {"#counts": False, "#kinds": False, "#alerts": False, "#trend-head": False,
                               "#rows tr .trend": False, "#rows tr .name a": True}
    assert [(r["sensor"], r["value"]) for r in seen["rows"]] == [("cellar-1", f"{70 + 1.5 * math.sin(5):.2f} %"),
                                                                ("greenhouse-1", "22.04 °C")]
    assert seen["wide"] is False

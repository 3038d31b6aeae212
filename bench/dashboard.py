"""
The dashboard in a real browser over a large fleet: how soon it is useful
and how fast it answers.

    python bench/dashboard.py [--sensors 20000] [--baseline 200] [--runs 5]

Builds two SQLite stores in a temporary directory, straight through the
store's write path (as tests/test_dashboard_browser.py does: six readings
per series at a 10-minute cadence; a half live, 30 % late, 20 % silent):
the fleet (--sensors series) and a baseline of --baseline series. Serves
each with the checkout's web site (sensornet.web.testing.WebHarness) on
127.0.0.1 and loads the dashboard --runs times in Debian's chromium
(headless, through Playwright; $SENSORNET_CHROMIUM names another), a new
page each time, measuring in the page:

  - first useful paint: from the navigation's start to the frame after the
    overview's counts and the table's first page are drawn (the page's own
    performance marks, "sensornet:first-useful-paint");
  - long tasks (over 50 ms) during the load, and their total;
  - a search answered: from pressing Enter in the search box to the
    matching page drawn;
  - the next page, a sort by last seen, and opening one series' chart
    (24 h of minute buckets) drawn.

Prints the median and worst of each for the fleet and for the baseline, and
their ratio: the page's cost should not grow with the fleet (a ratio near
1). Target: first useful paint <= 1000 ms with 20,000 series. No asserts:
it measures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from twisted.internet import defer, threads  # noqa: E402

from sensornet.web.testing import WebHarness  # noqa: E402
from test_dashboard_browser import chromium, fleetReadings, greenhouseHistory, storeFleet  # noqa: E402

LOAD_JS = """() => new Promise((resolve) => {
    const done = () => {
        const fup = performance.getEntriesByName('sensornet:first-useful-paint')[0];
        if (!fup) { requestAnimationFrame(done); return; }
        const nav = performance.getEntriesByType('navigation')[0];
        resolve({
            fup: fup.startTime,
            overview: performance.getEntriesByName('sensornet:overview')[0].startTime,
            table: performance.getEntriesByName('sensornet:table')[0].startTime,
            dcl: nav ? nav.domContentLoadedEventEnd : null,
            longTasks: (window.__longTasks || []).length,
            longTaskMs: (window.__longTasks || []).reduce((a, b) => a + b, 0),
        });
    };
    done();
})"""

# Installed before any page script runs: collects long tasks from the start.
LONG_TASKS_INIT = """
window.__longTasks = [];
try {
    new PerformanceObserver((list) => {
        for (const e of list.getEntries()) window.__longTasks.push(e.duration);
    }).observe({type: 'longtask', buffered: true});
} catch (e) {}
"""


def timedAction(page: Any, action: Any, check: str) -> float:
    """
    Milliseconds from just before C{action()} to the frame where the page
    expression C{check} holds.
    """
    page.evaluate("() => { window.__t0 = performance.now(); }")
    action()
    # Checked every frame; answers the page's clock when it holds.
    end = page.wait_for_function(f"() => ({check}) && performance.now()", polling="raf").json_value()
    return float(end - page.evaluate("() => window.__t0"))


def measure(url: str, sensors: int, runs: int) -> Dict[str, List[float]]:
    """
    Runs in a thread: --runs page loads and interactions against C{url}.
    """
    out: Dict[str, List[float]] = {}

    def add(name: str, value: float) -> None:
        out.setdefault(name, []).append(value)

    seen: Dict[str, Any] = {}
    with chromium({"width": 1280, "height": 1000}, seen) as first:
        context = first.context
        for _ in range(runs):
            page = context.new_page()
            page.add_init_script(LONG_TASKS_INIT)
            page.goto(url + "/", wait_until="commit")
            load = page.evaluate(LOAD_JS)
            add("first useful paint", load["fup"])
            add("overview drawn", load["overview"])
            add("table drawn", load["table"])
            add("long tasks (count)", load["longTasks"])
            add("long tasks (ms)", load["longTaskMs"])
            total = page.text_content("#range-text")
            # A prefix that matches a few of the fleet's names.
            add("search answered", timedAction(
                page, lambda: (page.fill("#search", "plant-000"), page.press("#search", "Enter")),
                "document.querySelectorAll('#rows tr').length > 0 && "
                "[...document.querySelectorAll('#rows tr')].every(tr => tr.dataset.sensor.startsWith('plant-000'))"))
            page.fill("#search", "")
            page.press("#search", "Enter")
            page.wait_for_function("t => document.getElementById('range-text').textContent === t", arg=total)
            add("next page", timedAction(
                page, lambda: page.click("#next-page"),
                "document.getElementById('range-text').textContent.startsWith('51–')"))
            add("sort by last seen", timedAction(
                page, lambda: page.click("th[data-sort-key='last_seen'] button"),
                "document.querySelector('#rows tr')?.dataset.sensor === 'greenhouse-1'"))
            add("series chart (24 h)", timedAction(
                page, lambda: page.click("#rows tr a"),
                "document.getElementById('chart').dataset.loaded === 'true' && "
                "Number(document.getElementById('chart').dataset.points) > 0"))
            page.close()
    errors = [c for c in seen["console"]]
    if errors:
        print("console:", *errors[:5], sep="\n  ", flush=True)
    return out


async def serveAndMeasure(reactor: Any, directory: Path, sensors: int, runs: int) -> Dict[str, List[float]]:
    now = reactor.seconds()
    live = sensors // 2
    late = sensors * 3 // 10
    silent = sensors - live - late
    readings = fleetReadings(now, live - 1, late, silent) + greenhouseHistory(now)
    path = directory / "readings.sqlite3"
    started = time.perf_counter()
    await threads.deferToThread(storeFleet, f"sqlite:{path}", path, readings, [])
    print(f"{sensors:,} series: {len(readings):,} readings stored in {time.perf_counter() - started:.1f} s",
          flush=True)
    harness = WebHarness(directory, reactor)
    await harness.start()
    try:
        return await threads.deferToThread(measure, harness.url, sensors, runs)
    finally:
        await harness.stop()


def summary(values: List[float]) -> str:
    return f"median {statistics.median(values):8.1f}   worst {max(values):8.1f}"


async def main(reactor: Any, options: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="sensornet-dashboard-") as tmp:
        results = {}
        for label, n in (("baseline", options.baseline), ("fleet", options.sensors)):
            directory = Path(tmp) / label
            directory.mkdir()
            results[label] = await serveAndMeasure(reactor, directory, n, options.runs)
    base, fleet = results["baseline"], results["fleet"]
    print(f"\nms over {options.runs} page loads; fleet = {options.sensors:,} series, "
          f"baseline = {options.baseline:,} (same page, same run)")
    print(f"{'':<22} {'fleet':>36}   {'baseline':>36}   ratio (medians)")
    for name in fleet:
        f, b = fleet[name], base[name]
        mb = statistics.median(b)
        ratio = statistics.median(f) / mb if mb else float("nan")
        print(f"{name:<22} {summary(f)}   {summary(b)}   {ratio:5.2f}")
    fup = statistics.median(fleet["first useful paint"])
    print(f"\nfirst useful paint with {options.sensors:,} series: {fup:.0f} ms median, "
          f"{max(fleet['first useful paint']):.0f} ms worst (target <= 1000 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensors", type=int, default=20000)
    parser.add_argument("--baseline", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    opts = parser.parse_args()
    from twisted.internet import task

    task.react(lambda reactor: defer.ensureDeferred(main(reactor, opts)))

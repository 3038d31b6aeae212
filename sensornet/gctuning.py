"""
Keep the cyclic garbage collector off the objects of long-lived connections.

A server holding ~19,000 sensor connections holds about 250,000 objects the
collector tracks (about 13 per connection: protocol, transport, socket, their
dicts, sets and lists), and they live for hours. CPython's collector scans
every tracked object of the oldest generation on each full (generation 2)
collection, and starts one whenever the objects promoted since the last full
collection exceed a quarter of those it found then: under load, the
short-lived objects of readings in flight promote fast enough for a full
collection every second or so, each one a stall of the whole reactor thread.

Measured (issue 9, W2: 19,000 sensors, a reading every 2 s each, reading log
on, server pinned to one of two shared cores, C{bench/sensors.py --w2}, two
runs each, collections timed with C{gc.callbacks}). Before this module: full
collections of 77-88 ms every ~19 s with C{--store none} (ack p99 12-13 ms,
max 116-123 ms) and of 103-144 ms every 3.2-3.3 s with the durable SQLite
store (ack p99 199 ms, max 263-294 ms); each of the 11 stalls of those runs
(acks over 50 ms) began within 10 ms of a full collection. After it: no full
collection over 17 ms once the sensors are connected (the freezes, 25-36 ms,
happen while they connect); ack p99 6-8 ms with C{--store none}, 22-27 ms
with SQLite, max 44-56 ms, CPU per reading unchanged (the bare ack server in
the same runs: p99 2.6-3.3 ms, max 35-37 ms).

L{CollectorTuning} moves what is alive out of the collector's reach with
C{gc.freeze()}: once at start (modules, classes, the server's own objects),
then whenever the unfrozen oldest generation holds more than C{threshold}
objects (checked every C{interval} seconds), right after a full collection
of that unfrozen part, so that what is frozen is what was reachable then.
A full collection then scans only what was promoted since the last freeze:
a few milliseconds instead of hundreds.

What this promises, and what it costs:

 - Frozen objects are still freed by reference counting as soon as nothing
   refers to them: a closed connection's objects go as before, unless they
   form a reference cycle. Objects frozen alive that later become cyclic
   garbage are never collected while they stay frozen. Measured under
   connection churn (C{bench/sensors.py --churn 8 --duration 3 --store
   sqlite}: 19,900 connections opened, used and closed eight times, 159,200
   in all), the server's resident memory stayed at 107-109 MiB from the
   first round to the last (110 MiB without this module), the frozen count
   stayed at ~249,000 (closed connections' objects left the frozen set), and
   a full collection at the stop, everything unfrozen, found 26 unreachable
   objects (9-38 after a W2 run with no churn at all): a closed sensor
   connection leaves no cycle behind.
 - As a bound on what other cycles could hold (HTTP requests, live streams,
   failures), every C{thawInterval} seconds (6 hours) everything is
   unfrozen; the next check collects it all in one full collection (one
   stall as long as those above, once per thaw) and freezes it again.
 - L{CollectorTuning.stopService} unfreezes everything: the process's
   collector is as it was before the start.

While it runs, this module also owns the full collections: the automatic
ones are made rare (the oldest generation's threshold goes from 10 to
C{fullThreshold}, 1,000 collections of the middle one). CPython starts a
full collection whenever the objects promoted since the last one exceed a
quarter of those the oldest generation held after it; once most objects are
frozen, that quarter is a few thousand objects, promoted every second or so
under load, and each such collection scans the whole unfrozen oldest
generation. In W2 that generation holds ~17,000 lists that nobody keeps for
long: Twisted replaces a connection's write buffer (a list) after each
write, and with a write every 2 s each buffer lives long enough to be
promoted (acks on plain TCP connections now leave without that buffer,
L{sensornet.directwrite}; TLS connections still use it). The check above already bounds that generation (it collects and
freezes past C{threshold}), so the automatic full collections only add
stalls. Measured (C{bench/sensors.py --sensors 19000 --store sqlite
--log-readings}, 30 s, three pairs, run alternately): ack p99 40.1 / 18.1 /
17.8 ms and max 166 / 70 / 68 ms before; 21.5 / 15.5 / 11.2 ms and 81 / 62 /
59 ms with it; full collections over 5 ms 7 / 4 / 6 against 4 / 3 / 3 (the
freezes' own collections included); CPU per reading unchanged (92 us).

The youngest generation's threshold goes from 700 to C{youngThreshold},
7,000 objects: a reading in flight (parsed, waiting for its commit) lives
a few milliseconds, long enough to be scanned by one or two young
collections at 700, and mostly dies before the first at 7,000. Measured
(C{bench/run.py}'s W1 into SQLite, server pinned, two pairs): young
collections 1,615-1,618 and 147 of the middle generation, 0.17-0.18 s of
collection per million readings, against 56-60 and 5-6, 0.06 s; 355k
readings/s against 363-367k (server CPU 2.81 against 2.68-2.73 us a
reading). A young collection scans at most those 7,000 objects; in W2
(C{--w2 --repeat 2}, both threshold changes) one young collection a run
took 7-8 ms, none other over 5 ms, and ack p99 was 3.8-4.1 ms with
C{--store none}, 9.2-12.1 ms with SQLite (max 22 and 77-97 ms).

The collector is process-wide state; this service changes it on behalf of the
whole process, which a server owns. C{logOverMs} (the server takes it from
C{SENSORNET_GC_LOG_MS}) logs each collection that took longer, with its
generation: the evidence for the numbers above.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["CollectorTuning", "logThresholdFromEnvironment", "LOG_ENVIRONMENT_VARIABLE"]

LOG_ENVIRONMENT_VARIABLE = "SENSORNET_GC_LOG_MS"


def logThresholdFromEnvironment(environ: Optional[Mapping[str, str]] = None) -> Optional[float]:
    """
    The milliseconds over which a collection is logged, from
    C{SENSORNET_GC_LOG_MS} in C{environ} (default C{os.environ}); L{None}
    (log nothing) when unset, empty, not a number, or negative.
    """
    if environ is None:
        environ = os.environ
    text = environ.get(LOG_ENVIRONMENT_VARIABLE, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 else None


class CollectorTuning(Service):
    """
    Freeze what is alive so that full collections scan only what is new; see
    the module docstring.

    @cvar interval: Seconds between two checks of the unfrozen oldest
        generation.
    @cvar threshold: Objects the unfrozen oldest generation may hold before
        a check collects it and freezes what survives: small enough that a
        full collection over them is a few milliseconds.
    @cvar youngThreshold: The collector's threshold for the youngest
        generation while this runs (net allocations between two young
        collections; CPython's default is 700).
    @cvar fullThreshold: The collector's threshold for the oldest
        generation while this runs (collections of the middle generation
        between two automatic full collections; CPython's default is 10).
    @cvar thawInterval: Seconds between two thaws (everything unfrozen, so a
        full collection reaches reference cycles among frozen objects).
    @cvar maxLogged: Most slow collections kept between two checks for the
        log (the rest are counted).
    """

    interval = 1.0
    threshold = 20_000
    youngThreshold = 7000
    fullThreshold = 1000
    thawInterval = 6 * 3600.0
    maxLogged = 100

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        logOverMs: Optional[float] = None,
        collector: Any = gc,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        """
        @param clock: Schedules the checks.
        @param logOverMs: Log each collection that took longer than this many
            milliseconds; L{None} logs none.
        @param collector: The C{gc} module (tests pass a fake).
        @param timer: Seconds of a monotonic clock, to time collections.
        """
        self._clock = clock
        self._gc = collector
        self._timer = timer
        self._logOverMs = logOverMs
        self._check = LoopingCall(self.check)
        self._check.clock = clock
        self._sinceThaw = 0.0
        self._collectionStarted = 0.0
        self._slow: List[Tuple[int, float, int]] = []
        self._unlogged = 0
        self.freezes = 0
        self.thaws = 0
        # The collector's thresholds before the start, restored at the stop.
        self._thresholds: Optional[Tuple[int, ...]] = None

    def startService(self) -> None:
        """
        Make automatic collections rarer (C{youngThreshold},
        C{fullThreshold}), collect and freeze what is alive now, then check
        every C{interval} seconds.
        """
        super().startService()
        if self._logOverMs is not None:
            self._gc.callbacks.append(self._collected)
        self._thresholds = self._gc.get_threshold()
        young, middle, full = self._thresholds[0], self._thresholds[1], self._thresholds[2]
        self._gc.set_threshold(max(self.youngThreshold, young), middle, max(self.fullThreshold, full))
        self._freeze()
        self._sinceThaw = self._clock.seconds()
        self._check.start(self.interval, now=False)

    def stopService(self) -> None:
        """
        Stop checking, restore the collector's thresholds and unfreeze
        everything.
        """
        super().stopService()
        if self._check.running:
            self._check.stop()
        if self._thresholds is not None:
            self._gc.set_threshold(*self._thresholds)
            self._thresholds = None
        self._gc.unfreeze()
        if self._collected in self._gc.callbacks:
            self._gc.callbacks.remove(self._collected)
            # The evidence on leaks: what the freezes kept from the
            # collector, now found unreachable.
            self._log.info("unfrozen at stop: a full collection found {count} unreachable objects",
                           count=self._gc.collect())
        self._flushLog()

    def check(self) -> None:
        """
        Thaw if C{thawInterval} has passed; else freeze if the unfrozen
        oldest generation holds more than C{threshold} objects.
        """
        self._flushLog()
        now = self._clock.seconds()
        if now - self._sinceThaw >= self.thawInterval:
            self._sinceThaw = now
            self.thaws += 1
            self._gc.unfreeze()
            return
        if len(self._gc.get_objects(2)) > self.threshold:
            self._freeze()

    def _freeze(self) -> None:
        started = self._timer()
        self._gc.collect()
        self._gc.freeze()
        self.freezes += 1
        if self._logOverMs is not None:
            self._log.info(
                "froze {frozen} objects in {ms:.1f} ms (collection included)",
                frozen=self._gc.get_freeze_count(),
                ms=(self._timer() - started) * 1000,
            )

    def _collected(self, phase: str, info: Dict[str, int]) -> None:
        """
        A C{gc.callbacks} entry: time each collection. It runs inside the
        collector, wherever an allocation set it off, so it only records;
        L{check} logs.
        """
        if phase == "start":
            self._collectionStarted = self._timer()
            return
        ms = (self._timer() - self._collectionStarted) * 1000
        assert self._logOverMs is not None
        if ms > self._logOverMs:
            if len(self._slow) < self.maxLogged:
                self._slow.append((info.get("generation", -1), ms, info.get("collected", 0)))
            else:
                self._unlogged += 1

    def _flushLog(self) -> None:
        slow, self._slow = self._slow, []
        for generation, ms, collected in slow:
            self._log.info(
                "garbage collection of generation {generation} took {ms:.1f} ms ({collected} collected)",
                generation=generation,
                ms=ms,
                collected=collected,
            )
        if self._unlogged:
            self._log.info("{count} more slow garbage collections not logged", count=self._unlogged)
            self._unlogged = 0

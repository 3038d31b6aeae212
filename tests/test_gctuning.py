"""
L{sensornet.gctuning.CollectorTuning}'s decisions, on L{task.Clock} and a
fake collector: when it collects and freezes, when it thaws, that it leaves
the collector as it found it, and what it logs. How long a collection takes
is the benchmark's business (C{bench/sensors.py --w2}), never a test's.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher

from sensornet.gctuning import CollectorTuning, logThresholdFromEnvironment


class FakeCollector:
    """
    The part of the C{gc} module L{CollectorTuning} uses: C{unfrozen} is how
    many objects the oldest generation holds, C{calls} what was asked.
    """

    def __init__(self) -> None:
        self.unfrozen = 0
        self.frozen = 0
        self.calls: List[str] = []
        self.callbacks: List[Callable[[str, Dict[str, int]], None]] = []

    def get_objects(self, generation: int) -> List[object]:
        assert generation == 2
        return [object()] * self.unfrozen

    def collect(self) -> int:
        self.calls.append("collect")
        return 0

    def freeze(self) -> None:
        self.calls.append("freeze")
        self.frozen += self.unfrozen
        self.unfrozen = 0

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")
        self.unfrozen += self.frozen
        self.frozen = 0

    def get_freeze_count(self) -> int:
        return self.frozen

    thresholds = (700, 10, 10)

    def get_threshold(self) -> tuple:
        return self.thresholds

    def set_threshold(self, *thresholds: int) -> None:
        self.calls.append(f"set_threshold{thresholds}")
        self.thresholds = thresholds


def started(**kwargs: Any) -> tuple:
    clock = Clock()
    collector = FakeCollector()
    tuning = CollectorTuning(clock, collector=collector, **kwargs)
    tuning.startService()
    return clock, collector, tuning


def test_start_collects_then_freezes() -> None:
    """
    Starting collects first, then freezes: what is frozen is what was
    reachable, not garbage waiting for the collector.
    """
    _, collector, tuning = started()
    assert collector.calls[-2:] == ["collect", "freeze"]
    assert tuning.freezes == 1
    tuning.stopService()


def test_full_collections_are_made_rare_while_running_and_restored_at_stop() -> None:
    """
    While it runs, the youngest and oldest generations' thresholds are
    C{youngThreshold} and C{fullThreshold} (the middle one kept), set before
    the first freeze; the stop puts back the thresholds it found.
    """
    clock, collector, tuning = started()
    expected = (CollectorTuning.youngThreshold, 10, CollectorTuning.fullThreshold)
    assert collector.calls[0] == f"set_threshold{expected}"
    assert collector.thresholds == expected
    tuning.stopService()
    assert collector.thresholds == (700, 10, 10)


def test_a_higher_threshold_already_set_is_kept() -> None:
    collector = FakeCollector()
    collector.thresholds = (50_000, 20, 100_000)
    tuning = CollectorTuning(Clock(), collector=collector)
    tuning.startService()
    assert collector.thresholds == (50_000, 20, 100_000)
    tuning.stopService()
    assert collector.thresholds == (50_000, 20, 100_000)


def test_freezes_only_over_threshold() -> None:
    """
    A check leaves an oldest generation at or under the threshold alone,
    and collects and freezes one over it.
    """
    clock, collector, tuning = started()
    collector.calls.clear()
    collector.unfrozen = CollectorTuning.threshold
    clock.advance(CollectorTuning.interval)
    assert collector.calls == []
    collector.unfrozen = CollectorTuning.threshold + 1
    clock.advance(CollectorTuning.interval)
    assert collector.calls == ["collect", "freeze"]
    assert collector.unfrozen == 0
    tuning.stopService()


def test_thaws_after_thaw_interval_then_freezes_again() -> None:
    """
    After thawInterval everything is unfrozen once, so a full collection
    can reach cycles among frozen objects; the next check over the
    threshold freezes again.
    """
    clock, collector, tuning = started()
    collector.unfrozen = 0
    collector.frozen = 10 * CollectorTuning.threshold
    collector.calls.clear()
    clock.pump([CollectorTuning.interval] * int(CollectorTuning.thawInterval / CollectorTuning.interval))
    assert collector.calls == ["unfreeze"]
    assert tuning.thaws == 1
    clock.advance(CollectorTuning.interval)
    assert collector.calls == ["unfreeze", "collect", "freeze"]
    tuning.stopService()


def test_stop_unfreezes_and_stops_checking() -> None:
    """
    Stopping unfreezes everything and leaves no timer behind.
    """
    clock, collector, tuning = started()
    tuning.stopService()
    assert collector.calls[-1] == "unfreeze"
    assert collector.frozen == 0
    assert clock.getDelayedCalls() == []


def test_logs_slow_collections_from_the_check() -> None:
    """
    With logOverMs, a collection that took longer is logged (by the next
    check, not from inside the collector) with its generation; a faster one
    is not; stopping removes the callback.
    """
    times = iter([0.0, 0.0, 10.0, 10.001, 20.0, 20.250])
    events: List[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock, collector, tuning = started(logOverMs=5.0, timer=lambda: next(times))
        assert len(collector.callbacks) == 1
        callback = collector.callbacks[0]
        callback("start", {"generation": 0})
        callback("stop", {"generation": 0, "collected": 3})
        callback("start", {"generation": 2})
        callback("stop", {"generation": 2, "collected": 7})
        clock.advance(CollectorTuning.interval)
        tuning.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    slow = [e for e in events if e.get("log_format", "").startswith("garbage collection")]
    assert [(e["generation"], round(e["ms"]), e["collected"]) for e in slow] == [(2, 250, 7)]
    assert collector.callbacks == []


def test_log_threshold_from_environment() -> None:
    """
    SENSORNET_GC_LOG_MS gives the threshold; unset, empty, not a number or
    negative means no log.
    """
    assert logThresholdFromEnvironment({"SENSORNET_GC_LOG_MS": "5"}) == 5.0
    assert logThresholdFromEnvironment({"SENSORNET_GC_LOG_MS": " 0.5 "}) == 0.5
    assert logThresholdFromEnvironment({}) is None
    assert logThresholdFromEnvironment({"SENSORNET_GC_LOG_MS": ""}) is None
    assert logThresholdFromEnvironment({"SENSORNET_GC_LOG_MS": "soon"}) is None
    assert logThresholdFromEnvironment({"SENSORNET_GC_LOG_MS": "-1"}) is None

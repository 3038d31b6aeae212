"""
Rules files and the rules engine: parsing (and refusing a bad file with its
line and reason), threshold alerts through pending, firing and resolved on
committed batches with a fake clock, rules indexed by kind, silence rules
on the timer; and series states from cadence (the pure logic).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.task import Clock

from sensornet.fleet.rules import FIRING, PENDING, RESOLVED, RulesEngine, RulesError, loadRules, parseDuration, parseRules
from sensornet.fleet.states import Cadence
from sensornet.reading import Reading

GOOD = """
# greenhouse alarms
[[rule]]
name = "hot greenhouse"
sensor = "greenhouse-*"
kind = "temperature"
above = 40
for = "1m"

[[rule]]
name = "dry"
kind = "humidity"
below = 20

[[rule]]
name = "quiet barn"
sensor = "barn-?"
silent_for = 3
"""


def test_a_good_file_gives_its_rules():
    """
    Names, globs, kinds, bounds, durations and silence as written.
    """
    hot, dry, quiet = parseRules(GOOD)
    assert (hot.name, hot.sensor, hot.kind, hot.above, hot.below, hot.forSeconds) == (
        "hot greenhouse", "greenhouse-*", "temperature", 40.0, None, 60.0)
    assert (dry.kind, dry.below, dry.sensor, dry.forSeconds) == ("humidity", 20.0, "*", 0.0)
    assert quiet.isSilence and quiet.silentFor == 3.0
    assert hot.matches("greenhouse-12") and not hot.matches("Greenhouse-1") and not hot.matches("xgreenhouse-1")
    assert quiet.matches("barn-1") and not quiet.matches("barn-12")
    assert parseRules("") == []


@pytest.mark.parametrize(
    "text, line, reason",
    [
        ('[[rule]]\nname = "a"\nabove = \n', 3, "not valid TOML"),
        ('[[rule]]\nname = "a"\nabove = 1\nabvoe = 2\n', 4, "unknown key 'abvoe'"),
        ('[[rule]]\nname = "a"\nabove = 1\n\n[[rule]]\nname = "a"\nbelow = 2\n', 6, "two rules are named 'a'"),
        ('[[rule]]\nsensor = "x"\nabove = 1\n', 1, "needs a name"),
        ('[[rule]]\nname = "a"\nsensor = "x"\n', 1, "needs above, below or silent_for"),
        ('[[rule]]\nname = "a"\nabove = 1\nsilent_for = 2\n', 4, "either a threshold"),
        ('[[rule]]\nname = "a"\nabove = "hot"\n', 3, "above must be a finite number"),
        ('[[rule]]\nname = "a"\nabove = 1\nfor = "a minute"\n', 4, "for: not a duration"),
        ('[[rule]]\nname = "a"\nsilent_for = 0\n', 3, "silent_for must be a positive"),
        ('[[rules]]\nname = "a"\n', 1, "unknown table or key 'rules'"),
        ('[[rule]]\nname = "a"\nkind = 3\nabove = 1\n', 3, "kind must be"),
    ],
)
def test_a_bad_file_is_refused_with_its_line_and_reason(text: str, line: int, reason: str):
    """
    Every refusal names the line (of the TOML error, the key, or the rule's
    header) and says what is wrong.
    """
    with pytest.raises(RulesError) as caught:
        parseRules(text, "rules.toml")
    assert caught.value.line == line
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"rules.toml, line {line}: ")


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(RulesError) as caught:
        loadRules(str(tmp_path / "nothing.toml"))
    assert "cannot read" in caught.value.reason


def test_durations():
    assert [parseDuration(v) for v in (0, 90, "90s", "1m", "1.5h", "2d", "250ms", "30")] == [
        0, 90, 90, 60, 5400, 172800, 0.25, 30]
    for bad in ("-1s", "1w", True, float("inf"), "m"):
        with pytest.raises(ValueError):
            parseDuration(bad)


def reading(sensor: str, kind: str, value: float, t: float) -> Reading:
    return Reading(sensor, kind, value, "C", ts=t, seq=int(t), dialect="native", peer="127.0.0.1:1", received_at=t)


def engine(text: str, silentQuery: Any = None) -> Tuple[RulesEngine, Clock, List[Dict[str, Any]], CollectorRegistry]:
    clock = Clock()
    clock.advance(1000)
    events: List[Dict[str, Any]] = []
    registry = CollectorRegistry()
    e = RulesEngine(parseRules(text), clock, events.append, silentQuery, registry)
    return e, clock, events, registry


def test_a_threshold_goes_pending_then_firing_after_for_then_resolved():
    """
    A breach is pending (not notified) until it has lasted the rule's for,
    then firing (notified); a reading back inside resolves it (notified);
    /api/alerts' list and the metrics follow.
    """
    e, clock, events, registry = engine(GOOD)
    e.readingsCommitted([reading("greenhouse-1", "temperature", 41.0, clock.seconds())])
    assert [a["state"] for a in e.alerts()] == [PENDING] and events == []
    assert e.counts() == {"pending": 1, "firing": 0}
    clock.advance(30)
    e.readingsCommitted([reading("greenhouse-1", "temperature", 42.0, clock.seconds())])
    assert events == []
    clock.advance(31)
    e.readingsCommitted([reading("greenhouse-1", "temperature", 43.0, clock.seconds())])
    assert [(ev["state"], ev["previous"], ev["value"], ev["sensor"]) for ev in events] == [
        (FIRING, PENDING, 43.0, "greenhouse-1")]
    assert registry.get_sample_value("sensornet_alerts", {"state": "firing"}) == 1
    clock.advance(5)
    e.readingsCommitted([reading("greenhouse-1", "temperature", 39.0, clock.seconds())])
    assert [ev["state"] for ev in events] == [FIRING, RESOLVED]
    assert e.counts() == {"pending": 0, "firing": 0}
    assert e.alerts()[0] == {"rule": "hot greenhouse", "sensor": "greenhouse-1", "kind": "temperature",
                             "state": RESOLVED, "since": clock.seconds(), "value": 39.0}
    assert registry.get_sample_value("sensornet_alert_transitions_total", {"state": "resolved"}) == 1


def test_a_short_breach_is_forgotten_without_notification():
    e, clock, events, _ = engine(GOOD)
    e.readingsCommitted([reading("greenhouse-1", "temperature", 41.0, clock.seconds())])
    clock.advance(10)
    e.readingsCommitted([reading("greenhouse-1", "temperature", 30.0, clock.seconds())])
    assert events == [] and e.alerts() == []


def test_the_timer_fires_a_pending_alert_whose_for_has_passed():
    """
    No further reading is needed: the periodic check fires a breach that
    has lasted.
    """
    e, clock, events, _ = engine(GOOD)
    e.readingsCommitted([reading("greenhouse-1", "temperature", 41.0, clock.seconds())])
    e.startService()
    try:
        clock.advance(65)
        assert [ev["state"] for ev in events] == [FIRING]
    finally:
        e.stopService()


def test_rules_apply_to_their_kind_and_sensors_only():
    """
    A below-20 humidity rule (every sensor) fires at once (no for) for a
    humidity reading only; a temperature reading of a non-greenhouse never
    touches the greenhouse rule.
    """
    e, clock, events, _ = engine(GOOD)
    e.readingsCommitted([
        reading("barn-1", "temperature", 99.0, clock.seconds()),
        reading("barn-1", "temperature", 10.0, clock.seconds()),
        reading("barn-1", "humidity", 15.0, clock.seconds()),
        reading("greenhouse-1", "humidity", 50.0, clock.seconds()),
    ])
    assert [(ev["rule"], ev["sensor"], ev["kind"], ev["state"]) for ev in events] == [
        ("dry", "barn-1", "humidity", FIRING)]


def test_silence_rules_fire_from_the_store_query_and_resolve_on_a_reading():
    """
    The timer asks the query for silent series of each silence rule (its
    glob, kind, intervals); each one found fires; a reading of that series
    resolves it; a series the query no longer reports is resolved too.
    """
    asked: List[Tuple[Any, ...]] = []
    answers: List[List[Tuple[str, str, float]]] = [[("barn-1", "temperature", 900.0),
                                                    ("barn-2", "temperature", 950.0)],
                                                   [("barn-2", "temperature", 950.0)], []]

    def silentQuery(now: float, glob: str, kind: Optional[str], intervals: float, limit: int) -> defer.Deferred:
        asked.append((glob, kind, intervals))
        return defer.succeed(answers.pop(0))

    e, clock, events, _ = engine(GOOD, silentQuery)
    e.check()
    assert asked == [("barn-?", None, 3.0)]
    assert sorted((ev["sensor"], ev["state"], ev["value"]) for ev in events) == [
        ("barn-1", FIRING, None), ("barn-2", FIRING, None)]
    e.readingsCommitted([reading("barn-1", "temperature", 20.0, clock.seconds())])
    assert events[-1]["sensor"] == "barn-1" and events[-1]["state"] == RESOLVED
    e.check()
    assert e.counts() == {"pending": 0, "firing": 1}
    e.check()
    assert e.counts() == {"pending": 0, "firing": 0}
    assert events[-1]["sensor"] == "barn-2" and events[-1]["state"] == RESOLVED


def test_states_from_cadence():
    """
    Live up to 2 intervals, late to silent-after (5), silent beyond; the
    interval learned as (last - first) / (count - 1), clamped, or the
    configured one; never without readings.
    """
    c = Cadence()
    assert c.interval(11, 1000.0, 1100.0) == 10.0
    assert [c.state(1100.0 + age, 11, 1000.0, 1100.0) for age in (0, 20, 20.001, 50, 50.001)] == [
        "live", "live", "late", "late", "silent"]
    assert c.interval(2, 1000.0, 1000.0001) == 1.0 and c.interval(2, 0.0, 1e9) == 86400.0
    assert c.interval(1, 1000.0, 1000.0) == 60.0
    assert c.state(5000.0, 0, None, None) == "never"
    fixed = Cadence(expected=30.0, silentAfter=3)
    assert fixed.interval(11, 1000.0, 1100.0) == 30.0
    assert [fixed.state(1100.0 + age, 11, 1000.0, 1100.0) for age in (60, 61, 90, 91)] == [
        "live", "late", "late", "silent"]
    for bad in ({"expected": 0}, {"silentAfter": 1}, {"lateAfter": -1}):
        with pytest.raises(ValueError):
            Cadence(**bad)


def test_alerts_listed_newest_first_up_to_a_limit():
    """
    alerts(limit) gives the most recent changes first, at most limit of
    them; len() counts them all.
    """
    e, clock, _, _ = engine(GOOD)
    for i in range(5):
        clock.advance(1)
        e.readingsCommitted([reading(f"s-{i}", "humidity", 10.0, clock.seconds())])
    assert len(e) == 5
    assert [a["sensor"] for a in e.alerts(2)] == ["s-4", "s-3"]
    assert [a["sensor"] for a in e.alerts()] == ["s-4", "s-3", "s-2", "s-1", "s-0"]

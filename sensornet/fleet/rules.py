"""
Threshold and silence rules, and the alerts they raise.

A rules file is TOML (docs/fleet.md)::

    [[rule]]
    name = "hot greenhouse"
    sensor = "greenhouse-*"     # a glob: * any run, ? one character
    kind = "temperature"
    above = 40
    for = "1m"

    [[rule]]
    name = "dry"
    kind = "humidity"
    below = 20

    [[rule]]
    name = "quiet"
    sensor = "barn-*"
    silent_for = 3              # expected intervals without a reading

L{parseRules} turns the text into L{Rule}s or raises L{RulesError} naming
the line and the reason. L{RulesEngine} evaluates threshold rules on every
committed batch (its L{RulesEngine.readingsCommitted} subscribes to the
live feed; rules are indexed by kind, so a reading costs the rules of its
kind only) and silence rules on a timer (a query on the query threads).

An alert is one (rule, sensor, kind): C{pending} while a threshold is
crossed for less than the rule's C{for}, C{firing} after, C{resolved} when
a reading is back inside the threshold (or, for silence, when the series
sends again). A pending alert whose reading comes back inside is forgotten
without notification. Firing and resolved alerts are handed to the
notifier (L{sensornet.fleet.webhooks}).
"""

from __future__ import annotations

import heapq
import math
import re
import tomllib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..reading import Reading
from .states import MAX_INTERVALS

__all__ = [
    "PENDING",
    "FIRING",
    "RESOLVED",
    "Rule",
    "RulesError",
    "parseRules",
    "loadRules",
    "parseDuration",
    "Alert",
    "RulesEngine",
]

PENDING = "pending"
FIRING = "firing"
RESOLVED = "resolved"

#: How many resolved alerts C{/api/alerts} keeps showing (the oldest go).
RESOLVED_KEPT = 1000

#: Most alerts held at once (pending and firing); beyond, new ones are
#: dropped and counted: a rule matching a whole fleet must not grow memory
#: without bound.
MAX_ACTIVE = 100_000

#: Most series one silence rule reports silent per check.
MAX_SILENT_PER_CHECK = 10_000

_log = Logger()

_KEYS = {"name", "sensor", "kind", "above", "below", "for", "silent_for"}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class RulesError(ValueError):
    """
    A rules file that cannot be used.

    @ivar line: The 1-based line the problem is on (or near), or L{None}.
    @ivar reason: What is wrong, in a sentence.
    """

    def __init__(self, line: Optional[int], reason: str, path: str = "") -> None:
        where = f"{path or 'rules'}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {reason}")
        self.line = line
        self.reason = reason


def parseDuration(value: Any) -> float:
    """
    Seconds from a number of seconds or a text such as C{"90s"}, C{"1m"},
    C{"1.5h"}, C{"2d"}, C{"250ms"}.

    @raise ValueError: Anything else, or a negative or infinite duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"not a duration: {value!r} (write a number of seconds or e.g. \"30s\", \"1m\", \"2h\")")
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"a duration must be finite and not negative, not {value!r}")
    return seconds


@dataclass(frozen=True)
class Rule:
    """
    One rule. Exactly one of: a threshold (C{above} and/or C{below}), or
    C{silentFor}.

    @ivar sensor: A glob on sensor names (C{*} matches every sensor).
    @ivar kind: The kind it watches, or L{None} for every kind.
    @ivar above: Breached by a value greater than this.
    @ivar below: Breached by a value less than this.
    @ivar forSeconds: How long a breach lasts before it fires (0: at once).
    @ivar silentFor: Expected intervals without a reading that fire it.
    """

    name: str
    sensor: str = "*"
    kind: Optional[str] = None
    above: Optional[float] = None
    below: Optional[float] = None
    forSeconds: float = 0.0
    silentFor: Optional[float] = None
    _regex: "re.Pattern[str]" = field(default=re.compile(".*"), compare=False, repr=False)

    @property
    def isSilence(self) -> bool:
        return self.silentFor is not None

    def matches(self, sensor: str) -> bool:
        """
        Whether C{sensor} is one this rule watches.
        """
        return self._regex.fullmatch(sensor) is not None

    def breached(self, value: float) -> bool:
        """
        Whether C{value} is outside this threshold rule's bounds.
        """
        return (self.above is not None and value > self.above) or (self.below is not None and value < self.below)


def _globRegex(glob: str) -> "re.Pattern[str]":
    parts = []
    for c in glob:
        parts.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
    return re.compile("".join(parts), re.DOTALL)


def _ruleLines(text: str) -> List[Tuple[int, Dict[str, int]]]:
    """
    For each C{[[rule]]} table in order, its header's line and the line of
    each key in it (for messages only: the parsing is tomllib's).
    """
    out: List[Tuple[int, Dict[str, int]]] = []
    inRule = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("["):
            inRule = re.match(r"^\[\[\s*rule\s*\]\]", stripped) is not None
            if inRule:
                out.append((number, {}))
            continue
        if inRule and (match := re.match(r'^\s*"?([A-Za-z0-9_-]+)"?\s*=', line)):
            out[-1][1].setdefault(match.group(1), number)
    return out


def parseRules(text: str, path: str = "") -> List[Rule]:
    """
    The rules of a rules file's text.

    @raise RulesError: The text is not TOML, or a rule is not valid: an
        unknown key, a missing or repeated name, a bad glob, a value that is
        not a number, a rule with both a threshold and C{silent_for}, or
        with neither.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        match = re.search(r"\(at line (\d+)", str(e))
        raise RulesError(int(match.group(1)) if match else None, f"not valid TOML: {e}", path) from None
    unknown = set(document) - {"rule"}
    if unknown:
        key = sorted(unknown)[0]
        line = next((n for n, l in enumerate(text.splitlines(), 1) if re.match(rf'^\s*\[*\s*"?{re.escape(key)}', l)),
                    None)
        raise RulesError(line, f"unknown table or key {key!r}: a rules file holds [[rule]] tables only", path)
    tables = document.get("rule", [])
    if not isinstance(tables, list):
        raise RulesError(None, "rule must be an array of tables: write [[rule]]", path)
    lines = _ruleLines(text)
    rules: List[Rule] = []
    names: Dict[str, int] = {}
    for index, table in enumerate(tables):
        header, keyLines = lines[index] if index < len(lines) else (None, {})

        def fail(reason: str, key: Optional[str] = None) -> RulesError:
            return RulesError(keyLines.get(key, header) if key else header, reason, path)

        for key in table:
            if key not in _KEYS:
                raise fail(f"unknown key {key!r} in a rule (known: {', '.join(sorted(_KEYS))})", key)
        name = table.get("name")
        if not isinstance(name, str) or not name.strip():
            raise fail("every rule needs a name (a non-empty string)", "name")
        if name in names:
            raise fail(f"two rules are named {name!r} (the other at line {names[name]})", "name")
        names[name] = keyLines.get("name", header or 0)
        sensor = table.get("sensor", "*")
        if not isinstance(sensor, str) or not sensor or len(sensor) > 256 or any(
                ord(c) < 32 for c in sensor):
            raise fail(f"sensor must be a non-empty glob of at most 256 characters, not {sensor!r}", "sensor")
        kind = table.get("kind")
        if kind is not None and (not isinstance(kind, str) or not kind):
            raise fail(f"kind must be a kind's name, not {kind!r}", "kind")
        bounds: Dict[str, Optional[float]] = {}
        for key in ("above", "below", "silent_for"):
            value = table.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise fail(f"{key} must be a finite number, not {value!r}", key)
            bounds[key] = float(value) if value is not None else None
        threshold = bounds["above"] is not None or bounds["below"] is not None
        silence = bounds["silent_for"] is not None
        if threshold and silence:
            raise fail("a rule is either a threshold (above/below) or silent_for, not both", "silent_for")
        if not threshold and not silence:
            raise fail("a rule needs above, below or silent_for")
        if silence and not 0 < (bounds["silent_for"] or 0) <= MAX_INTERVALS:
            raise fail(f"silent_for must be a positive number of intervals, at most {MAX_INTERVALS:g}", "silent_for")
        if silence and "for" in table:
            raise fail("for applies to thresholds; silent_for is itself a duration", "for")
        try:
            forSeconds = parseDuration(table.get("for", 0))
        except ValueError as e:
            raise fail(f"for: {e}", "for") from None
        rules.append(Rule(name=name, sensor=sensor, kind=kind, above=bounds["above"], below=bounds["below"],
                          forSeconds=forSeconds, silentFor=bounds["silent_for"], _regex=_globRegex(sensor)))
    return rules


def loadRules(path: str) -> List[Rule]:
    """
    L{parseRules} of the file at C{path} (UTF-8).

    @raise RulesError: It cannot be read or is not valid.
    """
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RulesError(None, f"cannot read the rules file: {e}", path) from None
    return parseRules(text, path)


@dataclass
class Alert:
    """
    One (rule, sensor, kind) that is or was out of bounds.

    @ivar since: When it entered its current state (the server's clock).
    @ivar value: The last value seen (L{None} for silence).
    """

    rule: str
    sensor: str
    kind: str
    state: str
    since: float
    value: Optional[float]

    def asDict(self) -> Dict[str, Any]:
        return {"rule": self.rule, "sensor": self.sensor, "kind": self.kind, "state": self.state,
                "since": self.since, "value": self.value}


#: Asks the store for the series a silence rule finds silent: called with
#: (now, glob, kind, intervals, limit); fires with [(sensor, kind, last_seen)].
SilentQuery = Callable[[float, str, Optional[str], float, int], "Deferred[List[Tuple[str, str, float]]]"]


class RulesEngine(Service):
    """
    Evaluates L{Rule}s and holds their alerts.

    @param rules: The rules (from L{loadRules}).
    @param clock: The server's clock.
    @param notify: Called with an alert's dict (plus C{"previous"}) when it
        fires or resolves; must not block (the webhook queue).
    @param silentQuery: See L{SilentQuery}; L{None}: silence rules never
        fire (no store).
    @param registry: Where the alert metrics go.
    @param checkInterval: Seconds between timer checks (pending alerts whose
        C{for} has passed, silence rules).
    """

    def __init__(
        self,
        rules: Sequence[Rule],
        clock: IReactorTime,
        notify: Callable[[Dict[str, Any]], None] = lambda event: None,
        silentQuery: Optional[SilentQuery] = None,
        registry: Optional[CollectorRegistry] = None,
        checkInterval: float = 5.0,
    ) -> None:
        self.rules = list(rules)
        self._clock = clock
        self._notify = notify
        self._silentQuery = silentQuery
        self.checkInterval = checkInterval
        self._byKind: Dict[Optional[str], List[Rule]] = {}
        for rule in self.rules:
            if not rule.isSilence:
                self._byKind.setdefault(rule.kind, []).append(rule)
        self._silence = [rule for rule in self.rules if rule.isSilence]
        self._silenceByKind: Dict[Optional[str], List[Rule]] = {}
        for rule in self._silence:
            self._silenceByKind.setdefault(rule.kind, []).append(rule)
        self._active: Dict[Tuple[str, str, str], Alert] = {}
        self._counts = {PENDING: 0, FIRING: 0}
        self._resolved: Deque[Alert] = deque(maxlen=RESOLVED_KEPT)
        self._matches: Dict[Tuple[str, str], bool] = {}
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        self._checking = False
        registry = registry if registry is not None else CollectorRegistry()
        self.alertsGauge = Gauge("sensornet_alerts", "Alerts now, by state.", ["state"], registry=registry)
        self.transitions = Counter("sensornet_alert_transitions", "Alerts entering a state.", ["state"],
                                   registry=registry)
        self.dropped = Counter("sensornet_alerts_dropped",
                               f"Alerts not raised because {MAX_ACTIVE} were active already.", registry=registry)
        self.checkFailures = Counter("sensornet_silence_check_failures",
                                     "Silence checks the store failed to answer.", registry=registry)
        self.rulesGauge = Gauge("sensornet_rules", "Rules loaded.", registry=registry)
        self.rulesGauge.set(len(self.rules))
        for state in (PENDING, FIRING):
            self.alertsGauge.labels(state=state).set(0)
        for state in (PENDING, FIRING, RESOLVED):
            self.transitions.labels(state=state)

    # -- service --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.rules:
            self._loop.start(self.checkInterval, now=False)

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return succeed(None)

    # -- reading side ---------------------------------------------------------

    def _match(self, rule: Rule, sensor: str) -> bool:
        key = (rule.name, sensor)
        found = self._matches.get(key)
        if found is None:
            if len(self._matches) > 200_000:
                self._matches.clear()
            found = self._matches[key] = rule.matches(sensor)
        return found

    def readingsCommitted(self, readings: Sequence[Reading]) -> None:
        """
        Evaluate threshold rules on a committed batch (a
        L{sensornet.feed.LiveFeed} listener), and resolve silence alerts of
        the series that sent. Only the rules of each reading's kind (and
        those of every kind) are looked at.
        """
        if not self.rules:
            return
        now = self._clock.seconds()
        for reading in readings:
            for rules in (self._byKind.get(reading.kind), self._byKind.get(None)):
                for rule in rules or ():
                    if self._match(rule, reading.sensor):
                        self._evaluate(rule, reading.sensor, reading.kind, reading.value, now)
            if self._active:
                for rules in (self._silenceByKind.get(reading.kind), self._silenceByKind.get(None)):
                    for rule in rules or ():
                        alert = self._active.get((rule.name, reading.sensor, reading.kind))
                        if alert is not None:
                            self._resolve(alert, now, reading.value)
        self._updateGauges()

    def _evaluate(self, rule: Rule, sensor: str, kind: str, value: float, now: float) -> None:
        key = (rule.name, sensor, kind)
        alert = self._active.get(key)
        if rule.breached(value):
            if alert is None:
                if len(self._active) >= MAX_ACTIVE:
                    self.dropped.inc()
                    return
                alert = self._active[key] = Alert(rule.name, sensor, kind, PENDING, now, value)
                self._counts[PENDING] += 1
                self.transitions.labels(state=PENDING).inc()
                if rule.forSeconds <= 0:
                    self._fire(alert, now)
            else:
                alert.value = value
                if alert.state == PENDING and now - alert.since >= rule.forSeconds:
                    self._fire(alert, now)
        elif alert is not None:
            if alert.state == PENDING:
                # Back inside before it lasted: never notified, forgotten.
                del self._active[key]
                self._counts[PENDING] -= 1
            else:
                self._resolve(alert, now, value)

    def _fire(self, alert: Alert, now: float) -> None:
        previous = alert.state
        alert.state, alert.since = FIRING, now
        self._counts[previous] -= 1
        self._counts[FIRING] += 1
        self.transitions.labels(state=FIRING).inc()
        self._send(alert, previous)

    def _resolve(self, alert: Alert, now: float, value: Optional[float]) -> None:
        if self._active.pop((alert.rule, alert.sensor, alert.kind), None) is not None:
            self._counts[alert.state] -= 1
        resolved = Alert(alert.rule, alert.sensor, alert.kind, RESOLVED, now, value)
        self._resolved.append(resolved)
        self.transitions.labels(state=RESOLVED).inc()
        self._send(resolved, alert.state)

    def _send(self, alert: Alert, previous: str) -> None:
        try:
            self._notify(dict(alert.asDict(), previous=previous))
        except Exception:
            _log.failure("alert notification failed")

    def _updateGauges(self) -> None:
        counts = self.counts()
        for state in (PENDING, FIRING):
            self.alertsGauge.labels(state=state).set(counts[state])

    # -- timer side -----------------------------------------------------------

    def check(self) -> "Deferred[None]":
        """
        Fire pending alerts whose C{for} has passed, and ask the store which
        series the silence rules find silent. Fires when done; a check while
        one is running is skipped.
        """
        now = self._clock.seconds()
        byName = {rule.name: rule for rule in self.rules}
        for alert in list(self._active.values()):
            rule = byName.get(alert.rule)
            if alert.state == PENDING and rule is not None and now - alert.since >= rule.forSeconds:
                self._fire(alert, now)
        self._updateGauges()
        if not self._silence or self._silentQuery is None or self._checking:
            return succeed(None)
        self._checking = True
        pending = list(self._silence)
        finished: Deferred[None] = Deferred()

        def step(_: Any = None) -> None:
            # One rule's query at a time: a check never holds more than one
            # query thread.
            if pending:
                self._checkSilence(pending.pop(0), now).addBoth(step)
            else:
                self._checking = False
                self._updateGauges()
                finished.callback(None)

        step()
        return finished

    def _checkSilence(self, rule: Rule, now: float) -> "Deferred[None]":
        assert self._silentQuery is not None and rule.silentFor is not None
        query = self._silentQuery(now, rule.sensor, rule.kind, rule.silentFor, MAX_SILENT_PER_CHECK)

        def found(rows: List[Tuple[str, str, float]]) -> None:
            silent = set()
            for sensor, kind, lastSeen in rows:
                key = (rule.name, sensor, kind)
                silent.add(key)
                if key not in self._active:
                    if len(self._active) >= MAX_ACTIVE:
                        self.dropped.inc()
                        continue
                    alert = self._active[key] = Alert(rule.name, sensor, kind, PENDING, lastSeen, None)
                    self._counts[PENDING] += 1
                    self._fire(alert, now)
            if len(rows) < MAX_SILENT_PER_CHECK:
                # A series that sent since (or left the store) is no longer
                # silent: resolve what the feed did not.
                for key, alert in list(self._active.items()):
                    if key[0] == rule.name and key not in silent:
                        self._resolve(alert, now, None)

        def failed(failure: Failure) -> None:
            self.checkFailures.inc()
            _log.warn("silence check of rule {rule!r} failed: {why}", rule=rule.name, why=failure.getErrorMessage())

        return query.addCallbacks(found, failed)

    # -- reading the alerts ---------------------------------------------------

    def counts(self) -> Dict[str, int]:
        """
        C{{"pending": n, "firing": n}} (kept as alerts change: no scan).
        """
        return dict(self._counts)

    def alerts(self, limit: Optional[int] = None) -> List[Dict[str, Any]]:
        """
        Active alerts and the last L{RESOLVED_KEPT} resolved ones, the most
        recent change first; the first C{limit} of them when given.
        """
        every: Iterable[Alert] = list(self._active.values()) + list(self._resolved)
        if limit is None:
            chosen = sorted(every, key=lambda a: a.since, reverse=True)
        else:
            chosen = heapq.nlargest(limit, every, key=lambda a: a.since)
        return [a.asDict() for a in chosen]

    def __len__(self) -> int:
        """
        Alerts L{alerts} would list without a limit.
        """
        return len(self._active) + len(self._resolved)

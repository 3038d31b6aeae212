"""
A series' state, from its cadence: pure functions, no I/O.

Each series (a sensor and a kind) has an expected interval between
readings: learned from its own history as C{(last_seen - first_seen) /
(count - 1)} (the mean gap between receptions), or configured for every
series (C{--expected-interval}); either way clamped to
[L{MIN_INTERVAL}, L{MAX_INTERVAL}]. A series with a single reading has no
cadence yet: it gets L{DEFAULT_INTERVAL} (or the configured one).

With C{age = now - last_seen} (both the server's reception clock):

  - C{live}: C{age <= late_after * interval};
  - C{late}: up to C{silent_after * interval};
  - C{silent}: beyond that;
  - C{never}: nothing stored (a provisioned sensor that never sent).

The same rules are written in SQL by L{sensornet.store.fleet} (to filter
and count a fleet in the database); L{Cadence.sqlParameters} hands it the
numbers, so the two cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Dict, Optional, Tuple

__all__ = [
    "LIVE",
    "LATE",
    "SILENT",
    "NEVER",
    "STATES",
    "MIN_INTERVAL",
    "MAX_INTERVAL",
    "DEFAULT_INTERVAL",
    "LATE_AFTER",
    "SILENT_AFTER",
    "Cadence",
]

LIVE = "live"
LATE = "late"
SILENT = "silent"
NEVER = "never"

#: Every state, in the order an overview lists them.
STATES: Tuple[str, ...] = (LIVE, LATE, SILENT, NEVER)

#: Bounds of an expected interval, in seconds: a burst of readings within a
#: millisecond must not make a series "late" a few milliseconds later, nor
#: a sensor that sent twice a year ago stay "live" for another year.
MIN_INTERVAL = 1.0
MAX_INTERVAL = 86_400.0

#: The expected interval of a series with one reading (no cadence yet), in
#: seconds, unless one is configured.
DEFAULT_INTERVAL = 60.0

#: Intervals without a reading after which a series is late.
LATE_AFTER = 2.0

#: Intervals without a reading after which a series is silent (the server's
#: C{--silent-after} default): 2 to 5 intervals is the "late" band, wide
#: enough that a client batching its readings or reconnecting does not flap
#: between live and silent.
SILENT_AFTER = 5.0


#: The most intervals C{--silent-after} (and a rule's C{silent_for}) takes.
MAX_INTERVALS = 1000.0


def _clamp(seconds: float) -> float:
    return min(MAX_INTERVAL, max(MIN_INTERVAL, seconds))


@dataclass(frozen=True)
class Cadence:
    """
    How states are decided for a whole server.

    @ivar expected: The configured interval in seconds for every series, or
        L{None} to learn each one's from its history.
    @ivar lateAfter: Intervals after which a series is late (> 0).
    @ivar silentAfter: Intervals after which it is silent (>= C{lateAfter}).
    """

    expected: Optional[float] = None
    lateAfter: float = LATE_AFTER
    silentAfter: float = SILENT_AFTER

    def __post_init__(self) -> None:
        if self.expected is not None and not (math.isfinite(self.expected) and self.expected > 0):
            raise ValueError(f"the expected interval must be a positive number of seconds, not {self.expected!r}")
        if not (math.isfinite(self.lateAfter) and self.lateAfter > 0):
            raise ValueError(f"late-after must be a positive number of intervals, not {self.lateAfter!r}")
        # The upper bound keeps the SQL form's integer products far from
        # 64-bit overflow (1000 * 1000 * a day in microseconds < 2**63).
        if not (math.isfinite(self.silentAfter) and self.lateAfter <= self.silentAfter <= MAX_INTERVALS):
            raise ValueError(
                f"silent-after must be a number of intervals from late-after ({self.lateAfter:g}) to "
                f"{MAX_INTERVALS:g}, not {self.silentAfter!r}"
            )

    def intervalMicros(self, count: int, firstSeen: Optional[int], lastSeen: Optional[int]) -> Optional[int]:
        """
        The expected microseconds between a series' readings (see the
        module docstring), from its times in whole microseconds as the store
        keeps them; L{None} for a series with nothing stored. Integer
        arithmetic, as the SQL form's, so both agree to the microsecond.
        """
        p = self._constants
        if not count or lastSeen is None:
            return None
        if p["fixed"] >= 0:
            return p["fixed"]
        if count < 2 or firstSeen is None:
            learned = p["default"]
        else:
            learned = (lastSeen - firstSeen) // (count - 1)
        return max(p["lo"], min(p["hi"], learned))

    def stateMicros(self, now: int, count: int, firstSeen: Optional[int], lastSeen: Optional[int]) -> str:
        """
        The state of a series at C{now}, every time in whole microseconds
        since the epoch (the server's clock): one of L{STATES}.
        """
        interval = self.intervalMicros(count, firstSeen, lastSeen)
        if interval is None or lastSeen is None:
            return NEVER
        p = self._constants
        # As the SQL form: thresholds in whole microseconds, rounded down.
        age = now - lastSeen
        if age <= p["late_milli"] * interval // 1000:
            return LIVE
        if age <= p["silent_milli"] * interval // 1000:
            return LATE
        return SILENT

    @cached_property
    def _constants(self) -> Dict[str, int]:
        # The parameters but now, computed once (a page asks per row).
        return self.sqlParameters(0.0)

    def interval(self, count: int, firstSeen: Optional[float], lastSeen: Optional[float]) -> Optional[float]:
        """
        L{intervalMicros} in seconds, from times in seconds.
        """
        micros = self.intervalMicros(count, _micros(firstSeen), _micros(lastSeen))
        return None if micros is None else micros / 1_000_000

    def state(self, now: float, count: int, firstSeen: Optional[float], lastSeen: Optional[float]) -> str:
        """
        L{stateMicros} from times in seconds since the epoch.
        """
        return self.stateMicros(int(round(now * 1_000_000)), count, _micros(firstSeen), _micros(lastSeen))

    def sqlParameters(self, now: float) -> Dict[str, int]:
        """
        The numbers the SQL form of L{stateMicros} needs, in whole
        microseconds (as the store keeps times): C{now}, C{fixed} (the
        configured interval, clamped, or -1), C{default}, C{lo}, C{hi} (the
        clamp), and the two thresholds in thousandths of an interval
        (C{late_milli}, C{silent_milli}).
        """
        return {
            "now": int(round(now * 1_000_000)),
            "fixed": int(round(_clamp(self.expected) * 1_000_000)) if self.expected is not None else -1,
            "default": int(DEFAULT_INTERVAL * 1_000_000),
            "lo": int(MIN_INTERVAL * 1_000_000),
            "hi": int(MAX_INTERVAL * 1_000_000),
            "late_milli": int(round(self.lateAfter * 1000)),
            "silent_milli": int(round(self.silentAfter * 1000)),
        }


def _micros(seconds: Optional[float]) -> Optional[int]:
    return None if seconds is None else int(round(seconds * 1_000_000))

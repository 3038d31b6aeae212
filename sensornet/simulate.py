"""
Simulated sensor values: bounded random walks, reproducible from a seed.

Pure: a L{RandomWalk} draws from the C{random.Random} it is given, so the
same seed gives the same values on every machine.
"""

from __future__ import annotations

import random
from typing import Dict, NamedTuple, Optional

__all__ = ["KINDS", "Kind", "RandomWalk"]


class Kind(NamedTuple):
    """
    How a kind of sensor behaves: its unit, the range its values stay in,
    the largest step between two readings, and its default interval (s).
    """

    unit: str
    low: float
    high: float
    step: float
    interval: float


#: The seed's two sensors: temperature every 2 s (15-35 degrees C), humidity
#: every 3 s (30-90 %).
KINDS: Dict[str, Kind] = {
    "temperature": Kind("C", 15.0, 35.0, 0.5, 2.0),
    "humidity": Kind("%", 30.0, 90.0, 1.5, 3.0),
}


class RandomWalk:
    """
    Values that wander within [low, high] by at most C{step} per reading,
    rounded to two decimals like the seed's, starting somewhere in the
    middle half of the range.
    """

    def __init__(self, kind: Kind, rng: Optional[random.Random] = None) -> None:
        self.kind = kind
        self.rng = rng if rng is not None else random.Random()
        span = kind.high - kind.low
        self.value = kind.low + span * (0.25 + 0.5 * self.rng.random())

    def next(self) -> float:
        """
        The next value, always within [low, high].
        """
        kind = self.kind
        value = self.value + self.rng.uniform(-kind.step, kind.step)
        if value < kind.low:
            value = 2 * kind.low - value
        elif value > kind.high:
            value = 2 * kind.high - value
        self.value = min(max(value, kind.low), kind.high)
        return round(self.value, 2)

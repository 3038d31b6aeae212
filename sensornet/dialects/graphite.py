"""
The Graphite plaintext dialect: C{path value timestamp}.

    sensors.client-1.temperature 25.34 1718100942

Exactly three fields separated by whitespace. The last component of the
path is the kind (lower-cased), the one before it the sensor; any earlier
components (C{sensors.} by convention) are ignored, and so are Graphite
tags (C{;name=value}) after the path. The value is a decimal number; the
timestamp is seconds since the epoch, integer or fractional, rounded to
the nanosecond; C{-1} or C{N} mean "now" (no timestamp). The unit is the
kind's implied unit (C{C} for temperature, C{%} for humidity, else none).
"""

from __future__ import annotations

from typing import Union

from ..reading import EMPTY_LINE, LineError, Reading
from ._common import (
    IMPLIED_UNITS,
    MAX_KIND,
    MAX_SENSOR,
    NS_PER_SECOND,
    BadLine,
    checkName,
    checkSeconds,
    decodeName,
    decodeText,
    nanoseconds,
    parseNumber,
    quote,
)

__all__ = ["parseGraphite"]

_NOW = frozenset([b"-1", b"N"])


def _seconds(raw: bytes) -> Union[float, None]:
    if raw in _NOW:
        return None
    if raw.isdigit() and len(raw) <= 10:
        # Whole seconds, the usual case, are exact as they are.
        return float(int(raw))
    ts = checkSeconds(parseNumber(raw, "timestamp"), raw)
    # Round to the nanosecond, so that the reading reads back unchanged
    # from the native line formatNative writes for it.
    return nanoseconds(ts) / NS_PER_SECOND


def parseGraphite(line: bytes) -> Union[Reading, LineError]:
    """
    Parse C{line} as Graphite plaintext; any line that is neither seed text
    nor line protocol ends up here.

    @return: the reading, or a L{LineError}: dialect C{"graphite"} when the
        line has two or three fields, C{"unknown"} otherwise, and for a
        blank line L{sensornet.reading.EMPTY_LINE} itself.
    """
    tokens = line.split()
    if len(tokens) != 3:
        if not tokens:
            return EMPTY_LINE
        if len(tokens) == 2:
            return LineError("timestamp missing (expected 'path value timestamp')", None, "graphite")
        return LineError(
            "unrecognised line: expected 'NAME - Kind: VALUE', line protocol or 'path value timestamp'"
        )
    path, valueRaw, tsRaw = tokens
    try:
        components = path.partition(b";")[0].split(b".")
        if len(components) < 2:
            raise BadLine(f"path needs at least two components, sensor.kind: {quote(path)}")
        sensor = decodeName(components[-2], "sensor name", MAX_SENSOR)
        kind = decodeText(components[-1], "kind").lower()
        checkName(kind, "kind", MAX_KIND)
        value = parseNumber(valueRaw)
        ts = _seconds(tsRaw)
    except BadLine as e:
        return LineError(e.message, None, "graphite")
    return Reading(sensor, kind, value, IMPLIED_UNITS.get(kind, ""), ts, None, "graphite")

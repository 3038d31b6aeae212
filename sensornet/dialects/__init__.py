"""
The three line dialects a sensornet server understands, as pure functions
of one line's bytes.

L{parseLine} tells the dialect of each line by itself, so one connection may
mix them:

 1. seed text, C{Sensor1 - Temperatura: 25.34°C} (see L{seed});
 2. otherwise, when the text after the first space holds an C{=}, InfluxDB
    line protocol, C{temperature,sensor=client-1 value=25.34,seq=42i}
    (see L{native});
 3. otherwise Graphite plaintext, C{sensors.client-1.temperature 25.34
    1718100942} (see L{graphite}).

docs/protocol.md describes the wire protocol for users.
"""

from __future__ import annotations

from typing import Union

from ..reading import LineError, Reading
from .graphite import parseGraphite
from .native import formatNative, parseCanonical, parseFast, parseSlow
from .seed import formatSeed, parseSeed

__all__ = ["parseLine", "isWholeSeedMessage", "formatNative", "formatSeed", "MAX_LINE_LENGTH"]

#: The longest line, in bytes without its line terminator, a server
#: accepts; a longer one closes the connection that sent it (the protocol
#: enforces this, not L{parseLine}).
MAX_LINE_LENGTH = 4096

# Bytes that keep a native line off the fast path: the fast path has no
# escapes, no strings, and need not look for control characters in names.
_SLOW_BYTES = bytes(range(0x20)) + b'\x7f\\"'


def parseLine(line: bytes) -> Union[Reading, LineError]:
    """
    Parse one line, given without its C{\\n}; a trailing C{\\r} is ignored.

    Never raises, whatever the bytes: a line that is not a valid reading
    gives a L{LineError} whose message says what is wrong, whose C{dialect}
    is the dialect the line looked like (or C{"unknown"}), and whose C{seq}
    is the native line's seq when it could be read. A blank line gives
    L{sensornet.reading.EMPTY_LINE} itself (compare with C{is}).

    @return: a L{Reading} with C{peer} and C{received_at} left at their
        defaults, or a L{LineError}.
    """
    try:
        # No seed or Graphite line has this shape: try it first, before
        # looking for a CR (the canonical shape has none, so a line that
        # ends with one is only tried again once the CR is gone).
        reading = parseCanonical(line)
        if reading is not None:
            return reading
        if line[-1:] == b"\r":
            line = line[:-1]
            reading = parseCanonical(line)
            if reading is not None:
                return reading
        if b" - " in line:
            result = parseSeed(line)
            if result is not None:
                return result
        head, _, rest = line.partition(b" ")
        if b"=" in rest:
            if line.isascii() and len(line.translate(None, _SLOW_BYTES)) == len(line):
                reading = parseFast(head, rest)
                if reading is not None:
                    return reading
            return parseSlow(line)
        return parseGraphite(line)
    except Exception as e:  # pragma: no cover - a bug; tests hunt for it
        # The promise to the protocol is "never raises": a parser bug must
        # cost one line, not the connection.
        return LineError(f"internal parser error: {type(e).__name__}")


# The units that end a whole message of the seed's clients, as parsed and
# as written (C{°C} and C{ºC} end with C{C}).
_SEED_UNITS_WRITTEN = {"C": b"C", "F": b"F", "%": b"%"}


def isWholeSeedMessage(partial: bytes) -> bool:
    """
    Whether C{partial}, unterminated, is a whole seed message by the seed's
    own grammar: a seed reading whose unit, one of the seed's (C{°C},
    C{ºC}, C{C}, C{°F}, C{ºF}, C{F}, C{%}), is written at its end. A message
    cut before its end is never whole: its unit is missing or cut short
    (C{Temperatura: 2}, C{25.34°}).
    """
    result = parseLine(partial)
    if type(result) is not Reading or result.dialect != "seed":
        return False
    written = _SEED_UNITS_WRITTEN.get(result.unit)
    return written is not None and partial.rstrip().endswith(written)

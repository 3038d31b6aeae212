"""
Rules every dialect shares: name limits, implied units, number syntax and the
wording of error messages.

The dialect modules raise L{BadLine} from their slow, thorough paths; the
public entry point turns it into a L{sensornet.reading.LineError}. The fast
paths never raise: they return L{None} and let the thorough path find the
words for what is wrong.
"""

from __future__ import annotations

import re
from typing import Optional

from ..reading import NS_PER_SECOND  # noqa: F401 (the dialects' name for it)

#: Longest sensor name, in characters (not bytes).
MAX_SENSOR = 128
#: Longest kind, in characters, after lower-casing.
MAX_KIND = 64
#: Longest unit, in characters.
MAX_UNIT = 16

#: The unit a reading gets when its line names none, by kind.
IMPLIED_UNITS = {"temperature": "C", "humidity": "%"}

#: Timestamps must lie within 9223372036 seconds of the epoch (the years
#: 1677 to 2262), which is about what InfluxDB's signed 64-bit nanoseconds
#: hold; a whole number of seconds keeps the bound exact in float seconds, so
#: every timestamp read can be written back as nanoseconds.
MAX_SECONDS = 9223372036.0
MIN_SECONDS = -MAX_SECONDS
MAX_NS = 9223372036 * 10**9
MIN_NS = -MAX_NS

#: Upper bound (exclusive) of a C{seq}.
SEQ_LIMIT = 2**63

# C0 controls, DEL and the C1 controls: none may appear in a name, since
# names end up in log lines, error replies and web pages.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]").search

# A decimal number as every common language writes it: no underscores, no
# surrounding whitespace, no "nan" or "inf" (float() accepts all of those).
NUMBER = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z").match

_NOT_FINITE = frozenset(
    [b"nan", b"inf", b"infinity", b"+nan", b"-nan", b"+inf", b"-inf", b"+infinity", b"-infinity"]
)


class BadLine(Exception):
    """
    A line is malformed; C{message} says why in a short English phrase
    without a newline, C{seq} carries the line's C{seq} when it was read.
    """

    def __init__(self, message: str, seq: Optional[int] = None) -> None:
        Exception.__init__(self, message)
        self.message = message
        self.seq = seq


def quote(raw: bytes, limit: int = 32) -> str:
    """
    Show a piece of a line inside an error message: at most C{limit}
    characters, undecodable bytes and control characters escaped, quoted
    with C{repr} so that the result never contains a newline.
    """
    text = raw.decode("utf-8", "backslashreplace")
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def decodeName(raw: bytes, what: str, limit: int) -> str:
    """
    Decode one name (sensor, kind, unit, field key) from UTF-8 and check it:
    non-empty, at most C{limit} characters, no control characters.

    @raise BadLine: naming C{what} is wrong.
    """
    text = decodeText(raw, what)
    checkName(text, what, limit)
    return text


def decodeText(raw: bytes, what: str) -> str:
    """
    Decode C{raw} from UTF-8.

    @raise BadLine: C{"invalid UTF-8 in <what>"}.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadLine(f"invalid UTF-8 in {what}") from None


def checkName(text: str, what: str, limit: int) -> None:
    """
    Check a decoded name: non-empty, at most C{limit} characters, no control
    characters.

    @raise BadLine: naming C{what} is wrong.
    """
    if not text:
        raise BadLine(f"{what} is empty")
    if len(text) > limit:
        raise BadLine(f"{what} is too long: {len(text)} characters, at most {limit}")
    # isprintable() is the quick answer for nearly every name; it is also
    # false for a few harmless characters (no-break space), hence the regex.
    if not text.isprintable() and _CONTROL(text) is not None:
        raise BadLine(f"control character in {what}")


def hasControl(text: str) -> bool:
    """
    Whether C{text} holds a control character (C0, DEL or C1).
    """
    return _CONTROL(text) is not None


def parseNumber(raw: bytes, what: str = "value") -> float:
    """
    Read a decimal number (C{25.34}, C{-1.5e3}, C{.5}, C{42}) as a finite
    float.

    @raise BadLine: C{"<what> is not a number: '...'"} or, for C{nan},
        C{inf} and numbers too large for a float (C{1e999}),
        C{"<what> is not a finite number: '...'"}.
    """
    if NUMBER(raw) is None:
        if raw.lower() in _NOT_FINITE:
            raise BadLine(f"{what} is not a finite number: {quote(raw)}")
        raise BadLine(f"{what} is not a number: {quote(raw)}")
    value = float(raw)
    if value - value != 0.0:
        raise BadLine(f"{what} is not a finite number: {quote(raw)}")
    return value


def checkSeconds(ts: float, raw: bytes) -> float:
    """
    Check a timestamp in seconds is finite and fits the nanosecond range.

    @raise BadLine: C{"timestamp out of range: '...'"}.
    """
    if not (MIN_SECONDS <= ts <= MAX_SECONDS):
        raise BadLine(f"timestamp out of range: {quote(raw)}")
    return ts


def impliedUnit(kind: str) -> str:
    """
    The unit a reading of C{kind} has when its line names none.
    """
    return IMPLIED_UNITS.get(kind, "")


def nanoseconds(ts: float) -> int:
    """
    C{ts} seconds as the nearest whole number of nanoseconds (halves
    rounded up), computed exactly: C{ts * 1e9} in floating
    point can miss the nearest nanosecond, and then a timestamp written as a
    native line would not read back as the same float.
    """
    numerator, denominator = ts.as_integer_ratio()
    return (2 * numerator * NS_PER_SECOND + denominator) // (2 * denominator)

"""
The Graphite plaintext dialect (C{path value timestamp}) and the lines that
are no dialect at all.
"""

import pytest

from sensornet.dialects import parseLine
from sensornet.reading import EMPTY_LINE, LineError, Reading


def graphite(sensor, kind, value, unit, ts):
    return Reading(sensor, kind, value, unit, ts, None, "graphite")


def test_issue_example():
    """
    The issue's example: the component before the last names the sensor,
    the last the kind, and the unit is implied.
    """
    line = b"sensors.client-1.temperature 25.34 1718100942"
    assert parseLine(line) == graphite("client-1", "temperature", 25.34, "C", 1718100942.0)


def test_path_forms():
    """
    Earlier components are ignored, two are enough, the kind is lower-cased,
    and Graphite tags after C{;} are ignored.
    """
    assert parseLine(b"site.a.b.client-2.Humidity 61 10") == graphite("client-2", "humidity", 61.0, "%", 10.0)
    assert parseLine(b"client-3.lux 300 10") == graphite("client-3", "lux", 300.0, "", 10.0)
    assert parseLine(b"s.c.temperature;room=kitchen 20 10") == graphite("c", "temperature", 20.0, "C", 10.0)


def test_timestamps():
    """
    Seconds may be fractional (kept to the nanosecond); C{-1} and C{N} mean
    now, which is no timestamp.
    """
    assert parseLine(b"s.c.t 1 1718100942.5").ts == 1718100942.5
    assert parseLine(b"s.c.t 1 0.0000000004").ts == 0.0
    assert parseLine(b"s.c.t 1 -1").ts is None
    assert parseLine(b"s.c.t 1 N").ts is None
    assert parseLine(b"s.c.t 1 -20").ts == -20.0


def test_whitespace():
    """
    Any run of spaces or tabs separates the fields; CR LF is accepted.
    """
    assert parseLine(b"  s.c.t\t1   2 \r") == graphite("c", "t", 1.0, "", 2.0)


@pytest.mark.parametrize(
    "line, message, dialect",
    [
        (b"temperature 25 1", "path needs at least two components, sensor.kind: 'temperature'", "graphite"),
        (b"s.c.t abc 1", "value is not a number: 'abc'", "graphite"),
        (b"s.c.t NaN 1", "value is not a finite number: 'NaN'", "graphite"),
        (b"s.c.t 1e999 1", "value is not a finite number: '1e999'", "graphite"),
        (b"s.c.t 1 yesterday", "timestamp is not a number: 'yesterday'", "graphite"),
        (b"s.c.t 1 1e300", "timestamp out of range: '1e300'", "graphite"),
        (b"s.c.t 1 99999999999", "timestamp out of range: '99999999999'", "graphite"),
        (b"s.c. 1 2", "kind is empty", "graphite"),
        (b".t 1 2", "sensor name is empty", "graphite"),
        (b"s.\xff.t 1 2", "invalid UTF-8 in sensor name", "graphite"),
        (b"s.c\x1c.t 1 2", "control character in sensor name", "graphite"),
        (b"s.c.t 25", "timestamp missing (expected 'path value timestamp')", "graphite"),
        (b"hello", "unrecognised line: expected 'NAME - Kind: VALUE', line protocol or 'path value timestamp'", "unknown"),
        (b"a b c d", "unrecognised line: expected 'NAME - Kind: VALUE', line protocol or 'path value timestamp'", "unknown"),
        (b"\x00\xff\xfe", "unrecognised line: expected 'NAME - Kind: VALUE', line protocol or 'path value timestamp'", "unknown"),
    ],
)
def test_errors(line, message, dialect):
    """
    Each malformed line gets a message saying what is wrong.
    """
    assert parseLine(line) == LineError(message, None, dialect)


@pytest.mark.parametrize("line", [b"", b"\r", b" ", b" \t \r"])
def test_blank_lines_give_the_empty_line_sentinel(line):
    """
    A blank line is the error C{empty line} of no dialect, and always the
    same object, L{EMPTY_LINE}, so the protocol tells it from a malformed
    line by identity when it decides to ignore it.
    """
    assert parseLine(line) == LineError("empty line", None, "unknown")
    assert parseLine(line) is EMPTY_LINE

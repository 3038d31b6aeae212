"""
The reading log's escaping of wire text and the events it publishes, apart
from any connection.
"""

from __future__ import annotations

from io import StringIO

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import Logger, LogLevel, formatEvent, textFileLogObserver

from sensornet.reading import LineError
from sensornet.readinglog import ReadingLog, _lineText, _linesText, escapeLine, escapeText


@pytest.mark.parametrize(
    "raw, logged",
    [
        (b"t,sensor=a value=1", "t,sensor=a value=1"),
        ("Sensor1 - Temperatura: 25.34°C".encode("utf-8"), "Sensor1 - Temperatura: 25.34°C"),
        ("Pressão: 1013 hPa, é".encode("utf-8"), "Pressão: 1013 hPa, é"),
        (b"a\x1b[2Jb", "a\\x1b[2Jb"),
        (b"a\rb\nc\td\x00e", "a\\rb\\nc\\td\\x00e"),
        (b"a\x7fb", "a\\x7fb"),
        ("a\x9b31mb\x85c".encode("utf-8"), "a\\x9b31mb\\x85c"),
        ("a\u2028b\u202ec".encode("utf-8"), "a\\u2028b\\u202ec"),
        (b"bad \xff\xfe utf-8", "bad \\xff\\xfe utf-8"),
        (b"back\\slash", "back\\slash"),
    ],
)
def test_escape_line_leaves_no_control_character(raw, logged):
    """
    C0, DEL and C1 controls, line and paragraph separators, format
    characters (a bidi override) and invalid UTF-8 are written as escapes;
    printable text, C{°} and accented letters included, is kept.
    """
    assert escapeLine(raw) == logged
    assert escapeLine(raw).isprintable()


def test_escape_text_keeps_printable_text_as_the_same_object():
    """
    The common case, printable text, costs one check and no copy.
    """
    text = "Received from 10.0.2.135:54812"
    assert escapeText(text) is text


def test_each_line_is_one_event_in_the_seed_shape_at_the_given_time():
    """
    L{ReadingLog.received} publishes one event per line, without the CR of
    a CRLF terminator, at the time given, at level info, from its logger's
    namespace.
    """
    events: list = []
    log = ReadingLog(Logger(namespace="test.readinglog", observer=events.append))
    log.received("10.0.2.135:54812", 1718100942.5, [b"a value=1\r", b"b {x} value=2"])
    assert [formatEvent(e) for e in events] == [
        "Received from 10.0.2.135:54812: a value=1",
        "Received from 10.0.2.135:54812: b {x} value=2",
    ]
    assert [e["log_time"] for e in events] == [1718100942.5] * 2
    assert {e["log_level"] for e in events} == {LogLevel.info}
    assert {e["log_namespace"] for e in events} == {"test.readinglog"}
    assert [e["line"] for e in events] == ["a value=1", "b {x} value=2"]


def test_a_refused_line_is_a_warning_with_its_reason():
    out = StringIO()
    log = ReadingLog(Logger(namespace="test.readinglog", observer=textFileLogObserver(out)))
    log.rejected("10.0.2.135:54812", 1718100942.5, b"x\x1b\r", LineError("unrecognised line"))
    (line,) = out.getvalue().splitlines()
    assert line.endswith(" [test.readinglog#warn] Rejected from 10.0.2.135:54812 (unrecognised line): x\\x1b")


_LINE = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from([b"t,sensor=a value=1,seq=1i", b"", b"x\x7f", b"x\r", b"\r", b"a\x1b[2J", b"\xc3\xa9", b"\xff"]),
)


@given(st.lists(_LINE, max_size=8))
def test_a_chunk_of_lines_becomes_the_texts_its_lines_do(lines):
    """
    L{_linesText}'s whole-chunk path gives, for any lines (control
    characters, DEL, CR, invalid UTF-8, blanks), exactly what
    L{_lineText} gives line by line.
    """
    assert _linesText(lines) == [_lineText(line) for line in lines]


def test_every_byte_in_a_printable_chunk_is_escaped_as_alone():
    for byte in range(256):
        if byte == 0x0A:
            continue
        lines = [b"t,sensor=a value=1", b"before" + bytes([byte]) + b"after"]
        assert _linesText(lines) == [_lineText(line) for line in lines], byte

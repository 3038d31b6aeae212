"""
The native dialect (InfluxDB line protocol): what a valid line gives, how
escapes are undone, what each malformed line is told, and how
L{formatNative} writes readings.
"""

import pytest

from sensornet.dialects import formatNative, parseLine
from sensornet.dialects.native import parseSlow
from sensornet.reading import LineError, Reading

EXAMPLE = b"temperature,sensor=client-1,unit=C value=25.34,seq=42i 1718100942123456789"


def native(sensor, kind, value, unit="", ts=None, seq=None):
    return Reading(sensor, kind, value, unit, ts, seq, "native")


def both(line):
    """
    Parse C{line} through L{parseLine} and through the thorough parser
    alone, check they agree, and return the result.
    """
    result = parseLine(line)
    assert parseSlow(line.rstrip(b"\r")) == result
    return result


def test_issue_example():
    """
    The issue's example line gives every field of the reading, with the
    nanosecond timestamp turned into float seconds.
    """
    assert both(EXAMPLE) == native("client-1", "temperature", 25.34, "C", 1718100942123456789 / 1e9, 42)


def test_minimal_line():
    """
    Without unit, seq and timestamp the unit is implied by the kind and seq
    and ts are None.
    """
    assert both(b"temperature,sensor=a value=1") == native("a", "temperature", 1.0, "C")
    assert both(b"humidity,sensor=a value=61.2") == native("a", "humidity", 61.2, "%")
    assert both(b"pressure,sensor=a value=1013") == native("a", "pressure", 1013.0, "")


def test_carriage_return_ignored():
    """
    A line ended by CR LF parses like one ended by LF.
    """
    assert parseLine(EXAMPLE + b"\r") == parseLine(EXAMPLE)


def test_measurement_lower_cased():
    """
    The kind is the measurement in lower case, and so is the implied unit's
    lookup.
    """
    assert both(b"Temperature,sensor=A value=1") == native("A", "temperature", 1.0, "C")


def test_host_tag_fallback():
    """
    Without a sensor tag the host tag names the sensor; with both, sensor
    wins.
    """
    assert both(b"cpu,host=server01 value=3") == native("server01", "cpu", 3.0)
    assert both(b"cpu,host=h,sensor=s value=3").sensor == "s"


def test_other_tags_and_orders():
    """
    Extra tags are ignored; tags and fields may come in any order.
    """
    line = b"temperature,host=h,region=eu,unit=C,sensor=s seq=7i,value=20.5 1000000000"
    assert both(line) == native("s", "temperature", 20.5, "C", 1.0, 7)


def test_other_field_key_extends_kind():
    """
    A value field with a key other than C{value} makes the kind
    C{measurement.key}.
    """
    assert both(b"env,sensor=a Temp=21.5") == native("a", "env.temp", 21.5)


@pytest.mark.parametrize(
    "field, expected",
    [
        (b"5i", 5.0),
        (b"-5i", -5.0),
        (b"5u", 5.0),
        (b"9223372036854775807i", 9223372036854775807.0),
        (b"-9223372036854775808i", -9223372036854775808.0),
        (b"18446744073709551615u", 18446744073709551615.0),
        (b"-1.5e3", -1500.0),
        (b".5", 0.5),
        (b"1e300", 1e300),
    ],
)
def test_numeric_values(field, expected):
    """
    Integer (C{i}), unsigned (C{u}) and float values all become floats.
    """
    result = both(b"m,sensor=a value=" + field)
    assert result == native("a", "m", expected)


def test_unsigned_seq():
    """
    seq may be written as an unsigned integer too.
    """
    assert both(b"m,sensor=a value=1,seq=42u").seq == 42
    assert both(b"m,sensor=a value=1,seq=9223372036854775807i").seq == 2**63 - 1


def test_negative_timestamp():
    """
    Timestamps before 1970 are negative nanoseconds.
    """
    assert both(b"m,sensor=a value=1 -1500000000").ts == -1.5


def test_escapes_in_names():
    """
    Backslash escapes commas and spaces in the measurement, and commas,
    equals signs and spaces in tag keys and values; two backslashes stand
    for one, and a backslash before anything else is itself.
    """
    line = rb"temp\ erature\,x,sensor=client\,1\=x\ y,unit=deg\ C value=1"
    assert both(line) == native("client,1=x y", "temp erature,x", 1.0, "deg C")
    assert both(rb"m,sensor=a\\b\c value=1").sensor == "a\\b\\c"
    assert both(rb"m,sensor=a\\ value=1").sensor == "a\\"
    assert both(rb"m\=x,sensor=a value=1").kind == "m\\=x"
    assert both(rb"m,sensor=a val\ ue=1").kind == "m.val ue"


def test_quoted_strings_are_tokenised_properly():
    """
    A quoted string may hold commas, spaces, equals signs, escaped quotes
    and backslashes: the line still splits at the right places, so the
    error names the string field and the seq.
    """
    line = rb'm,sensor=a seq=3i,value="a \" b, c=d \\ e"'
    assert both(line) == LineError("value is a string, not a number", 3, "native")


def test_utf8_names():
    """
    Names may hold any printable Unicode, written as UTF-8.
    """
    line = "temperatura,sensor=sala-café,unit=°C value=21".encode()
    assert both(line) == native("sala-café", "temperatura", 21.0, "°C")


@pytest.mark.parametrize(
    "line, message, seq",
    [
        (b"m,unit=C value=1,seq=9i", "sensor tag missing", 9),
        (b"m,sensor=a value=1,other=2,seq=9i", "one value field per line", 9),
        (b"m,sensor=a seq=9i", "no value field (expected value=<number>)", 9),
        (b"m,sensor=a value=nan,seq=9i", "value is not a finite number: 'nan'", 9),
        (b"m,sensor=a value=-inf,seq=9i", "value is not a finite number: '-inf'", 9),
        (b"m,sensor=a value=1e999,seq=9i", "value is not a finite number: '1e999'", 9),
        (b"m,sensor=a value=abc,seq=9i", "value is not a number: 'abc'", 9),
        (b"m,sensor=a value=1_000", "value is not a number: '1_000'", None),
        (b"m,sensor=a value=true,seq=9i", "value is a boolean, not a number", 9),
        (b"m,sensor=a x=F,seq=9i", "field 'x' is a boolean, not a number", 9),
        (b'm,sensor=a x="s",seq=9i', "field 'x' is a string, not a number", 9),
        (b"m,sensor=a value=,seq=9i", "value is empty", 9),
        (b"m,sensor=a value=9223372036854775808i", "value out of range for a 64-bit integer: '9223372036854775808i'", None),
        (b"m,sensor=a value=18446744073709551616u", "value out of range for a 64-bit integer: '18446744073709551616u'", None),
        (b"m,sensor=a value=-1u", "value is not an integer: '-1u'", None),
        (b"m,sensor=a value=1,seq=-1i", "seq out of range (0 <= seq < 2**63): '-1i'", None),
        (b"m,sensor=a value=1,seq=9223372036854775808i", "seq out of range (0 <= seq < 2**63): '9223372036854775808i'", None),
        (b"m,sensor=a value=1,seq=1.5", "seq must be an integer such as 42i: '1.5'", None),
        (b'm,sensor=a value=1,seq="4"', "seq must be an integer such as 42i: '4'", None),
        (b"m,sensor=a value=1,seq=1i,seq=2i", "more than one seq field", None),
        (b"m,sensor=a value=1,seq=9i 12.5", "timestamp is not an integer number of nanoseconds: '12.5'", 9),
        (b"m,sensor=a value=1,seq=9i 9223372036854775808", "timestamp out of range: '9223372036854775808'", 9),
        (b"m,sensor=a value=1,seq=9i 1 2", "timestamp is not an integer number of nanoseconds: '1 2'", 9),
        (b'm,sensor=a seq=9i,value="abc', "unterminated string in field 'value'", 9),
        (b'm,sensor=a seq=9i,value="abc"x', "text after a quoted field value", 9),
        (b"m,sensor=a=b value=1,seq=9i", "unescaped '=' in the value of tag 'sensor'", 9),
        (b"m,sensor value=1,seq=9i", "tag without a value: 'sensor'", 9),
        (b"m,,sensor=a value=1,seq=9i", "tag key is empty", 9),
        (b"m,sensor=a,unit= value=1,seq=9i", "tag 'unit' has an empty value", 9),
        (b"m,sensor=a,sensor=b value=1,seq=9i", "duplicate tag 'sensor'", 9),
        (b"m,sensor=a seq=9i,value=1,", "field set ends with a comma", 9),
        (b"m,sensor=a seq=9i,value", "field without a value: 'value'", 9),
        (b"m,sensor=a seq=9i,,value=1", "field key is empty", 9),
        (b",sensor=a value=1,seq=9i", "measurement is empty", 9),
        (b"m,sensor=a\xff value=1,seq=9i", "invalid UTF-8 in sensor name", 9),
        (b"m,sensor=a\x01b value=1,seq=9i", "control character in sensor name", 9),
        (b"m,sensor=a\xc2\x85b value=1,seq=9i", "control character in sensor name", 9),
        (b"m,sensor=" + b"s" * 129 + b" value=1,seq=9i", "sensor name is too long: 129 characters, at most 128", 9),
        (b"m" * 65 + b",sensor=a value=1,seq=9i", "kind is too long: 65 characters, at most 64", 9),
        (b"m,sensor=a,unit=" + b"u" * 17 + b" value=1,seq=9i", "unit is too long: 17 characters, at most 16", 9),
        (b"m\xff,sensor=a value=1,seq=9i", "invalid UTF-8 in kind", 9),
        (rb"m\ x=1", "no field set (expected 'measurement,tags fields [timestamp]')", None),
    ],
)
def test_errors(line, message, seq):
    """
    Each malformed line gets a message saying what is wrong, naming the seq
    whenever the seq field itself could be read.
    """
    assert both(line) == LineError(message, seq, "native")


def test_limits_are_inclusive():
    """
    A sensor name of 128 characters, a kind of 64 and a unit of 16 are
    accepted.
    """
    line = b"k" * 64 + b",sensor=" + b"s" * 128 + b",unit=" + b"u" * 16 + b" value=1"
    assert both(line) == native("s" * 128, "k" * 64, 1.0, "u" * 16)


def test_format_native_example():
    """
    formatNative writes the issue's example line (the timestamp rounded to
    what a float holds), and it reads back as the same reading.
    """
    reading = parseLine(EXAMPLE)
    line = formatNative(reading)
    assert line == b"temperature,sensor=client-1,unit=C value=25.34,seq=42i 1718100942123456717"
    assert parseLine(line) == reading


def test_format_native_optional_parts():
    """
    Without unit, seq and timestamp those parts are left out.
    """
    assert formatNative(native("a", "pressure", 1013.0)) == b"pressure,sensor=a value=1013.0"


def test_format_native_escapes():
    """
    formatNative escapes what the line protocol needs escaped, and the line
    reads back as the same reading.
    """
    reading = native("a b,c=d\\", "x y,z=w", 1.5, "°C e", 2.5, 1)
    line = formatNative(reading)
    assert line == "x\\ y\\,z=w,sensor=a\\ b\\,c\\=d\\\\,unit=°C\\ e value=1.5,seq=1i 2500000000".encode()
    assert parseLine(line) == reading


@pytest.mark.parametrize(
    "reading",
    [
        native("a", "m", float("nan")),
        native("a", "m", float("inf")),
        native("", "m", 1.0),
        native("a\nb", "m", 1.0),
        native("a", "m", 1.0, seq=-1),
        native("a", "m", 1.0, seq=2**63),
        native("a", "m", 1.0, ts=1e300),
    ],
)
def test_format_native_refuses_what_cannot_be_written(reading):
    """
    formatNative refuses readings no valid line can carry.
    """
    with pytest.raises(ValueError):
        formatNative(reading)


def test_timestamp_range():
    """
    Timestamps are accepted up to 9223372036 seconds from the epoch either
    way, and refused beyond.
    """
    assert both(b"m,sensor=a value=1 9223372036000000000").ts == 9223372036.0
    assert both(b"m,sensor=a value=1 -9223372036000000000").ts == -9223372036.0
    assert both(b"m,sensor=a value=1 9223372036000000001") == LineError(
        "timestamp out of range: '9223372036000000001'", None, "native"
    )


def test_protocol_document_examples():
    """
    The examples docs/protocol.md gives for the native dialect read as the
    document says.
    """
    assert both(b"humidity,sensor=client-2 value=61.2,seq=7i") == native("client-2", "humidity", 61.2, "%", None, 7)
    assert both(b"env,sensor=room-1 pressure=1013.25") == native("room-1", "env.pressure", 1013.25)
    line = "temp\\ outside,sensor=garden\\,north,unit=°C value=12.5".encode()
    assert both(line) == native("garden,north", "temp outside", 12.5, "°C")
    assert both(b"m,sensor=a value=1,seq=-1i") == LineError("seq out of range (0 <= seq < 2**63): '-1i'", None, "native")

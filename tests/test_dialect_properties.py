"""
Properties of the dialect parsers over generated input: no bytes make
L{parseLine} raise, every result keeps the promises of L{Reading} and
L{LineError}, L{formatNative} and L{parseLine} are inverses, and the fast
native paths agree with the thorough one.
"""

import math

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sensornet.dialects import formatNative, parseLine
from sensornet.dialects._common import IMPLIED_UNITS
from sensornet.dialects import native
from sensornet.dialects.native import parseCanonical, parseFast, parseSlow
from sensornet.reading import DIALECTS, LineError, Reading

FAST = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def checkResult(result):
    """
    Assert C{result} keeps every promise a L{Reading} or L{LineError} makes.
    """
    if isinstance(result, LineError):
        assert isinstance(result.message, str) and result.message
        assert "\n" not in result.message and "\r" not in result.message
        assert not result.message.startswith("internal"), result
        assert len(result.message) < 200
        assert result.dialect in DIALECTS or result.dialect == "unknown"
        assert result.seq is None or (type(result.seq) is int and 0 <= result.seq < 2**63)
        return
    assert isinstance(result, Reading), result
    assert type(result.value) is float and math.isfinite(result.value)
    assert 1 <= len(result.sensor) <= 128
    assert 1 <= len(result.kind) <= 64
    assert len(result.unit) <= 16
    for name in (result.sensor, result.kind, result.unit):
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name)
    assert result.kind == result.kind.lower()
    assert result.dialect in DIALECTS
    assert result.seq is None or (type(result.seq) is int and 0 <= result.seq < 2**63)
    assert result.ts is None or (type(result.ts) is float and math.isfinite(result.ts))
    assert (result.peer, result.received_at) == ("", 0.0)


@FAST
@given(st.binary(max_size=300))
def test_any_bytes(line):
    """
    Any bytes at all give a reading or an error, never an exception.
    """
    checkResult(parseLine(line))


# Pieces of valid lines of every dialect, and junk, to be shaken together.
TOKENS = [
    b"temperature", b"humidity", b"Sensor1", b"client-1", b"sensors.", b".", b",", b"=", b" ", b"\t",
    b"\\", b'"', b"\\ ", b"\\,", b"\\=", b'\\"', b"\\\\", b"sensor=", b"host=", b"unit=", b"C", b"%",
    b"value=", b"seq=", b"42i", b"42u", b"-1i", b"9223372036854775808i", b"25.34", b"-0.5e3", b"1e999",
    b"nan", b"inf", b"true", b"9" * 25, b"1718100942123456789", b"1718100942", b"-1", b"N", b" - ",
    b"Temperatura:", b"Umidade:", "°C".encode(), "ºC".encode(), b"%", b",", b";tag=x", b"\r", b"\x00",
    b"\x1f", b"\x7f", b"\xc2\x85", b"\xff", "é".encode(), b"\xe9", b"_", b"i", b"u", b"0",
]


@FAST
@given(st.lists(st.sampled_from(TOKENS) | st.binary(max_size=3), max_size=25))
def test_mixed_tokens(tokens):
    """
    Lines made of valid pieces and junk in any order never raise, and the
    fast native parsers never accept a line the thorough one reads
    differently.
    """
    line = b"".join(tokens)
    result = parseLine(line)
    checkResult(result)
    assertFastAgrees(line.rstrip(b"\r"))


def assertFastAgrees(line):
    canonical = parseCanonical(line)
    if canonical is not None:
        assert parseSlow(line) == canonical
    head, _, rest = line.partition(b" ")
    if line.isascii() and not any(c < 0x20 or c in b'\x7f\\"' for c in line):
        fast = parseFast(head, rest)
        if fast is not None:
            assert parseSlow(line) == fast


NAME_CHARS = st.characters(blacklist_categories=("Cc", "Cs"))
CANONICAL_PIECES = st.sampled_from([b"temperature", b"Humidity", b"m", b"a-b", b"x" * 70, "é".encode()])
NUMBERS = st.sampled_from([b"25.34", b"1", b"-0", b"1e5", b"1e999", b".5", b"5.", b"+1", b"1-2", b"e", b"1_0"])
INTEGERS = st.sampled_from([b"0", b"42", b"9223372036854775807", b"9223372036854775808", b"18446744073709551616", b"-5", b"-9223372036854775809"])


@FAST
@given(
    meas=CANONICAL_PIECES,
    sensor=CANONICAL_PIECES,
    unit=st.none() | CANONICAL_PIECES,
    value=NUMBERS | INTEGERS.map(lambda i: i + b"i") | INTEGERS.map(lambda i: i + b"u"),
    seq=st.none() | INTEGERS.map(lambda i: i + b"i"),
    ts=st.none() | INTEGERS,
    extraTag=st.booleans(),
    seqFirst=st.booleans(),
)
def test_fast_paths_agree_with_thorough_parser(meas, sensor, unit, value, seq, ts, extraTag, seqFirst):
    """
    On near-canonical native lines, whatever the fast paths accept the
    thorough parser reads the same way.
    """
    head = meas + (b",a=b" if extraTag else b"") + b",sensor=" + sensor + (b"" if unit is None else b",unit=" + unit)
    fields = [b"value=" + value] + ([] if seq is None else [b"seq=" + seq])
    if seqFirst:
        fields.reverse()
    line = head + b" " + b",".join(fields) + (b"" if ts is None else b" " + ts)
    checkResult(parseLine(line))
    assertFastAgrees(line)
    assert parseLine(line) == parseSlow(line)


@st.composite
def readings(draw):
    """
    Readings as L{parseLine} can return them for native lines: lower-case
    kinds, timestamps that are whole nanoseconds, a unit for the kinds that
    imply one.
    """
    kind = draw(
        st.sampled_from(["temperature", "humidity", "pressure"])
        | st.text(NAME_CHARS, min_size=1, max_size=64).filter(lambda k: k == k.lower())
    )
    unit = draw(st.sampled_from(["C", "%", ""]) | st.text(NAME_CHARS, max_size=16))
    assume(unit or kind not in IMPLIED_UNITS)
    ns = draw(st.none() | st.integers(-9223372036 * 10**9, 9223372036 * 10**9) | st.integers(0, 2 * 10**18))
    return Reading(
        sensor=draw(st.text(NAME_CHARS, min_size=1, max_size=128)),
        kind=kind,
        value=draw(st.floats(allow_nan=False, allow_infinity=False)),
        unit=unit,
        ts=None if ns is None else ns / 1_000_000_000,
        seq=draw(st.none() | st.integers(0, 2**63 - 1)),
        dialect="native",
    )


@FAST
@given(readings())
def test_format_native_round_trip(reading):
    """
    formatNative writes every reading so that parseLine (and the thorough
    parser alone) give it back.
    """
    line = formatNative(reading)
    assert b"\n" not in line
    assert parseLine(line) == reading
    assert parseSlow(line) == reading


# Heads (measurement and tags) for the cache tests: canonical ones, some
# with names at and over their length limits, and some that share a
# canonical head's beginning but leave the canonical shape after it.
CACHE_HEADS = st.sampled_from(
    [
        b"temperature,sensor=client-1,unit=C",
        b"temperature,sensor=client-1",
        b"Humidity,sensor=client-2",
        b"pressure,sensor=p,unit=hPa",
        b"temperature,sensor=client-1,unit=C,site=x",
        b"temperature,sensor=client-1,unit=" + b"u" * 17,
        b"temperature,sensor=client-1,unit=" + b"u" * 16,
        b"temperature,sensor=" + b"s" * 129,
        b"temperature,sensor=" + b"s" * 128,
        b"m" * 65 + b",sensor=a",
        b"temperature,sensor=client\\ 1",
        "temperature,sensor=clïent".encode(),
        b"temperature,host=client-1",
        b"temperature,sensor=client-1,unit=C,unit=F",
        b"temperature,sensor=client-1\r",
        b"temperature",
        b"",
    ]
)

# What follows the head: valid and invalid values, seqs and timestamps, and
# junk after an otherwise canonical rest.
CACHE_RESTS = st.tuples(
    st.sampled_from([b"value=", b"value=", b"seq=1i,value=", b"Value=", b"other="]),
    NUMBERS | INTEGERS.map(lambda i: i + b"i") | st.sampled_from([b"21.25", b"-3", b"1e5", b"nan", b'"x"', b""]),
    st.just(b"") | INTEGERS.map(lambda i: b",seq=" + i + b"i") | st.sampled_from([b",seq=42u", b",seq=42", b",seq=x"]),
    st.just(b"") | INTEGERS.map(lambda i: b" " + i) | st.sampled_from([b" 1718100942123456789", b" ", b" 1 2", b" 1e9"]),
    st.sampled_from([b"", b"", b"", b"\r", b" ", b"\t", b",x=1", b" junk"]),
).map(b"".join)


def parseUncached(line):
    """
    Parse C{line} as a server seeing it first would: with an empty head
    cache.
    """
    native._heads.clear()
    return parseLine(line)


@FAST
@given(st.lists(st.tuples(CACHE_HEADS, CACHE_RESTS), min_size=1, max_size=30))
def test_head_cache_never_changes_results(pairs):
    """
    Lines parsed one after another, so that later ones find their head
    cached (repeated heads with varying values, seqs and timestamps, and
    lines that share a cached head but go wrong after it), give exactly what
    each gives parsed alone with an empty cache; and what the canonical path
    accepts, the thorough parser reads the same way.
    """
    lines = [head + b" " + rest for head, rest in pairs]
    expected = [parseUncached(line) for line in lines]
    native._heads.clear()
    for line, want in zip(lines, expected):
        got = parseLine(line)
        assert got == want, line
        checkResult(got)
        canonical = parseCanonical(line)
        if canonical is not None:
            assert canonical == want
            assert parseSlow(line) == canonical


def test_head_cache_is_bounded():
    """
    However many different heads arrive, the cache holds at most its limit,
    and lines keep parsing the same way once it has been emptied.
    """
    native._heads.clear()
    for i in range(native._HEADS_LIMIT * 2 + 10):
        line = b"temperature,sensor=s%d value=%d.5,seq=%di 1000000000" % (i, i, i)
        assert parseLine(line) == Reading(f"s{i}", "temperature", i + 0.5, "C", 1.0, i, "native")
        assert 1 <= len(native._heads) <= native._HEADS_LIMIT
    assert parseLine(b"temperature,sensor=s0 value=0.5,seq=0i 1000000000") == Reading(
        "s0", "temperature", 0.5, "C", 1.0, 0, "native"
    )

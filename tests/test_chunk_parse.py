"""
L{sensornet.dialects.native.parseCanonicalChunk}, the one-pass parse of a
chunk of canonical native lines, and the protocol's use of it: the same
readings as L{parseCanonical} line by line, or L{None}; the same replies
and the same readings stored, chunk by chunk, as the line-by-line path.
"""

from __future__ import annotations

from typing import Any, List, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from sensornet.dialects import native
from sensornet.dialects._common import MAX_NS, SEQ_LIMIT
from sensornet.dialects.native import parseCanonical, parseCanonicalChunk
from sensornet.reading import Reading
from sensornet.runs import ChunkReadings

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_HEADS = [
    b"temperature,sensor=s1,unit=C", b"humidity,sensor=s2", b"Temperature,sensor=S-3,unit=%25",
    b"t,sensor={b},unit=\xc2\xb0C", b"t,sensor=a", b"t,sensor=" + b"x" * 129, b"t,sensor=a,host=h",
    b"t,sensor=a,unit=" + b"u" * 17, b"t sensor=a", b"",
]
_VALUES = [b"1", b"-0", b"0.5", b".5", b"5.", b"1e5", b"1E-3", b"+2", b"1e999", b"-1e999", b"nan", b"1.2.3",
           b"--1", b"e", b"", b"123456789012345678901234567890"]
_SEQS = [b"", b",seq=0i", b",seq=7u", b",seq=%di" % (SEQ_LIMIT - 1), b",seq=%di" % SEQ_LIMIT,
         b",seq=9999999999999999999i", b",seq=12345678901234567890i", b",seq=-1i", b",seq=5"]
_TIMES = [b"", b" 1718100942250000000", b" %d" % MAX_NS, b" %d" % (MAX_NS + 1), b" -%d" % MAX_NS,
          b" -%d" % (MAX_NS + 1), b" 0", b" 12345678901234567890", b" x"]


@st.composite
def lines(draw: Any) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([b"", b"   ", b"Sensor1 - Temperatura: 25.34\xc2\xb0C", b"a.b.c 1 1718100942",
                                     b"auth x", b"garbage"]))
    line = (draw(st.sampled_from(_HEADS)) + b" value=" + draw(st.sampled_from(_VALUES))
            + draw(st.sampled_from(_SEQS)) + draw(st.sampled_from(_TIMES)))
    if draw(st.integers(0, 19)) == 0:
        line += b"\r"
    return line


def fields(reading: Optional[Reading]) -> Any:
    return None if reading is None else reading._key()


@SETTINGS
@given(st.lists(lines(), min_size=1, max_size=12))
def test_a_chunk_parses_as_its_lines_do_or_not_at_all(chunk: List[bytes]) -> None:
    """
    Whatever the lines: L{None}, or exactly what L{parseCanonical} gives
    for each line; and when each line gives a reading, whose head has been
    seen, the chunk is parsed.
    """
    one = [parseCanonical(line) for line in chunk]  # also learns the heads
    result = parseCanonicalChunk(chunk)
    if result is not None:
        assert [fields(r) for r in result] == [fields(r) for r in one]
    else:
        assert None in one


def test_an_unseen_head_sends_the_chunk_line_by_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_heads", {})
    chunk = [b"t,sensor=new value=1,seq=1i", b"t,sensor=new value=2,seq=2i"]
    assert parseCanonicalChunk(chunk) is None
    parseCanonical(chunk[0])
    assert [r.value for r in parseCanonicalChunk(chunk)] == [1.0, 2.0]


# -- the protocol, with and without it -----------------------------------------

PEER = IPv4Address("TCP", "10.0.2.135", 54812)


class Principal:
    """
    A gateway that may write as any name but C{forbidden}.
    """

    name = "gw"

    def mayWrite(self, sensor: str) -> bool:
        return sensor != "forbidden"


#: What the last protocol L{serve} made submitted, call by call.
SUBMITTED: List[List[Reading]] = []


def serve(fastPath: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    from sensornet.accounting import ChunkAccounting
    from sensornet.metrics import ServerMetrics
    from sensornet.protocol import ConnectionAuth, ImmediateSink, SensorServerFactory

    import sensornet.protocol as protocolModule

    monkeypatch.setattr(protocolModule, "parseCanonicalChunk", parseCanonicalChunk if fastPath else lambda lines, *stamp: None)
    clock = Clock()
    clock.advance(1718100942.0)
    metrics = ServerMetrics()
    sink = ImmediateSink()
    stored: List[Reading] = []
    submitted = SUBMITTED
    del submitted[:]
    submit = sink.submit

    def keep(readings: List[Reading]) -> Any:
        stored.extend(readings)
        submitted.append(readings)
        return submit(readings)

    sink.submit = keep  # type: ignore[method-assign]
    factory = SensorServerFactory(sink, clock, metrics, accounting=ChunkAccounting(metrics, observer=lambda e: None))
    protocol = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    protocol.makeConnection(transport)
    protocol.auth = ConnectionAuth.authenticated
    protocol.principal = Principal()
    return protocol, transport, stored, clock


_PROTOCOL_LINES = st.one_of(
    lines(),
    st.sampled_from([
        b"t,sensor=forbidden value=1,seq=1i",
        b"t,sensor=a value=1,seq=3i 1918100942000000000",  # far ahead of the clock
        b"t,sensor=a value=2,seq=4i 1718100941000000000",
    ]),
)


@SETTINGS
@given(st.lists(st.lists(_PROTOCOL_LINES, min_size=1, max_size=8), min_size=1, max_size=4))
def test_the_protocol_answers_and_stores_the_same_with_or_without_it(chunks: List[List[bytes]]) -> None:
    """
    Chunks of canonical readings, refused lines, blanks, a name the
    gateway may not write as and readings stamped ahead of the clock: the
    replies and the readings stored are the same, byte for byte and field
    for field, whether whole chunks are parsed at once or line by line.
    """
    for chunk in chunks:
        for line in chunk:
            parseCanonical(line)  # heads known, so the fast path is taken where it can be
    outcomes = []
    for fastPath in (True, False):
        with pytest.MonkeyPatch.context() as monkeypatch:
            protocol, transport, stored, clock = serve(fastPath, monkeypatch)
            for chunk in chunks:
                if protocol._closing:
                    break
                protocol.dataReceived(b"\n".join(chunk) + b"\n")
                clock.advance(0.5)
            outcomes.append((transport.value(), [r._key() for r in stored], sorted(protocol.sensors)))
    assert outcomes[0] == outcomes[1]


def test_a_chunk_of_known_canonical_lines_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The protocol does use it: a chunk of readings is parsed in one call,
    not line by line.
    """
    import sensornet.protocol as protocolModule

    protocol, transport, stored, _ = serve(True, monkeypatch)
    chunk = [b"temperature,sensor=s%d,unit=C value=%d,seq=%di" % (i % 3, i, i) for i in range(1, 7)]
    for line in chunk:
        parseCanonical(line)

    def refuse(line: bytes) -> Any:
        raise AssertionError("parsed line by line")

    monkeypatch.setattr(protocolModule, "parseLine", refuse)
    protocol.dataReceived(b"\n".join(chunk) + b"\n")
    assert transport.value() == b"".join(b"ack %d\n" % i for i in range(1, 7))
    assert [(r.sensor, r.value, r.seq, r.peer) for r in stored] == [
        (f"s{i % 3}", float(i), i, "10.0.2.135:54812") for i in range(1, 7)
    ]
    # Submitted with its runs (sensornet.runs), stamped as its readings are.
    [submitted] = SUBMITTED
    assert isinstance(submitted, ChunkReadings)
    assert (submitted.peer, submitted.receivedAt) == ("10.0.2.135:54812", 1718100942.0)
    assert [(names, positions, seqs) for names, positions, _, seqs, _ in submitted.runs.values()] == [
        (("s1", "temperature", "C"), [0, 3], [1, 4]),
        (("s2", "temperature", "C"), [1, 4], [2, 5]),
        (("s0", "temperature", "C"), [2, 5], [3, 6]),
    ]

"""
The text log observer a twistd server writes through (L{sensornet.textlog}):
the same bytes as twistd's own observer, with the reading log written a
chunk at a time.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from io import BytesIO, StringIO
from typing import Any, Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.application.service import Application, MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, Logger, formatTime, textFileLogObserver
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile

from sensornet.accounting import ChunkAccounting
from sensornet.metrics import ServerMetrics
from sensornet.protocol import ImmediateSink, SensorServerFactory
from sensornet.textlog import BATCH_KEY, OffersLogObserver, ReadingLogFileObserver, observerForTwistd

from serverproc import ServerProcess

PEER = IPv4Address("TCP", "10.0.2.135", 54812)


def serve(observer: Any, batched: bool, clock: Clock) -> Any:
    """
    A connection from L{PEER} whose server logs to C{observer}, its reading
    log batched or not.
    """
    metrics = ServerMetrics()
    accounting = ChunkAccounting(metrics, observer=observer, clock=clock, maxRejectedLogPerSecond=1000)
    accounting.readingLog.batched = batched
    factory = SensorServerFactory(ImmediateSink(), clock, metrics, accounting=accounting)
    protocol = factory.buildProtocol(PEER)
    protocol.makeConnection(StringTransport(peerAddress=PEER))
    return protocol


def logBoth(chunks: List[bytes], start: float, step: float) -> "tuple[str, str]":
    """
    The log twistd's own observer writes for C{chunks} (one event per
    reading) and the one L{ReadingLogFileObserver} writes (one batch event
    per chunk), C{step} seconds apart from C{start}; other events (a
    Logger call with fields, a failure) in between.
    """
    outputs = []
    for batched in (False, True):
        out = StringIO()
        observer = ReadingLogFileObserver(out) if batched else textFileLogObserver(out)
        clock = Clock()
        clock.advance(start)
        protocol = serve(observer, batched, clock)
        # Stamped by the test's clock, not the wall clock: the two runs
        # must not differ by a second boundary crossed between them.
        other = Logger(
            namespace="sensornet.test",
            observer=lambda event, observer=observer, clock=clock: observer({**event, "log_time": clock.seconds()}),
        )
        for index, chunk in enumerate(chunks):
            protocol.dataReceived(chunk)
            if index % 3 == 1:
                other.info("between {a} and {b!r}", a=index, b={"x": "{y}"})
            if index % 5 == 2:
                other.failure("failed at {index}", Failure(ValueError("nope\nsecond line")), index=index)
            clock.advance(step)
        outputs.append(out.getvalue())
    return outputs[0], outputs[1]


HOSTILE_CHUNKS = [
    b"t,sensor=a value=1,seq=1i\nt,sensor=a value=2,seq=2i\n",
    "Sensor1 - Temperatura: 25.34\u00b0C\r\n".encode("utf-8"),
    b"t,sensor={a},x=}} value=3,seq=3i\nt,sensor=a,x=\x1b[2J value=4,seq=4i\r\n",
    b"not \x1b]0;owned\x07 a reading\nt,sensor=a value=5,seq=5i\n\n  \nt,sensor=a value=6,seq=6i\n",
    b"t,sensor=a,x=\xff\xfe value=7,seq=7i\nt,sensor=a,u=\xe2\x80\xae value=8,seq=8i\n",
    b"t,sensor=a value=9,seq=9i\n" * 50,
    b"\n\n",
    b"garbage {0} {x!r}\n",
]


def test_batched_reading_log_writes_the_bytes_twistds_observer_writes():
    """
    Chunks of readings, refused lines, blanks, braces, control characters,
    invalid UTF-8 and bidi overrides, with other events between them: the
    batched log is byte for byte what twistd's observer writes with one
    event per reading, and the chunks cross second boundaries.
    """
    perLine, batched = logBoth(HOSTILE_CHUNKS, start=1718100942.75, step=0.2)
    assert perLine == batched
    assert batched.count("Received from 10.0.2.135:54812: ") == 59  # the invalid UTF-8 line is refused
    assert "Rejected from 10.0.2.135:54812" in batched
    stamps = {line.split(" ", 1)[0] for line in batched.splitlines() if "] Received from " in line}
    # The last two chunks hold no reading.
    assert stamps == {formatTime(1718100942.75 + 0.2 * i) for i in range(len(HOSTILE_CHUNKS) - 2)}
    assert len(stamps) == 2


_LINE = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b""))


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(
        st.lists(
            st.one_of(_LINE, st.integers(0, 99).map(lambda i: b"t,sensor=s%d value=%d,seq=%di" % (i % 7, i, i))),
            min_size=1, max_size=8,
        ).map(lambda lines: b"\n".join(lines) + b"\n"),
        min_size=1, max_size=6,
    ),
    start=st.floats(1_500_000_000, 1_900_000_000),
    step=st.sampled_from([0.0, 0.3, 1.0, 7.5]),
)
def test_any_chunks_log_the_same_bytes_batched_or_not(chunks, start, step):
    perLine, batched = logBoth(chunks, start, step)
    assert perLine == batched


@pytest.mark.parametrize("fraction", [0.0, 0.4999996, 0.9999994, 0.9999995, 0.9999996, 0.99999999])
def test_each_moment_is_stamped_as_twistd_stamps_it(fraction):
    """
    Formatting rounds a time to the microsecond: a moment just before a
    second's end is written as the next second, by both.
    """
    observer = ReadingLogFileObserver(StringIO())
    for when in (1718100942.2, 1718100942 + fraction, 1718100941 + fraction, 1718100942 + fraction):
        assert observer.formatTime(when) == formatTime(when)


def test_a_batch_event_renders_every_line_for_any_other_observer():
    """
    Another observer (a structured one, or twistd's own when it was not
    ours) sees a chunk's batch as one event whose text holds every line,
    with the lines themselves under C{lines}.
    """
    events: List[Dict[str, Any]] = []
    protocol = serve(events.append, True, Clock())
    protocol.dataReceived(b"t,sensor=a value=1,seq=1i\nt,sensor={b} value=2,seq=2i\n")
    (event,) = events
    assert event["lines"] == ["t,sensor=a value=1,seq=1i", "t,sensor={b} value=2,seq=2i"]
    assert BATCH_KEY in event
    out = StringIO()
    textFileLogObserver(out)(event)
    assert out.getvalue().split(" [", 1)[1] == (
        "sensornet.accounting#info] Received from 10.0.2.135:54812: t,sensor=a value=1,seq=1i\n"
        "\tReceived from 10.0.2.135:54812: t,sensor={b} value=2,seq=2i\n"
    )


def test_binary_files_get_utf8_as_twistd_writes_them(tmp_path):
    """
    twistd's log file is binary: the text is written as UTF-8, as twistd's
    observer writes it.
    """
    out = BytesIO()
    observer = ReadingLogFileObserver(out)
    protocol = serve(observer, True, Clock())
    protocol.dataReceived("Sensor1 - Temperatura: 25.34\u00b0C\n".encode("utf-8"))
    assert out.getvalue().endswith("Received from 10.0.2.135:54812: Sensor1 - Temperatura: 25.34\u00b0C\n".encode())


# -- what twistd's options ask for ------------------------------------------


class Signals:
    def __init__(self, current: Any = signal.SIG_DFL) -> None:
        self.current = current
        self.installed: List[Any] = []

    def get(self, signum: int) -> Any:
        assert signum == signal.SIGUSR1
        return self.current

    def install(self, signum: int, handler: Any) -> None:
        self.installed.append((signum, handler))


def build(options: Dict[str, Any], signals: Signals) -> Any:
    return observerForTwistd(options, installSignal=signals.install, getSignal=signals.get)


@pytest.mark.parametrize("options", [
    {"syslog": True, "logfile": "x.log"},
    {"logger": "some.module.observer", "logfile": "x.log"},
    {"logfile": "-", "nodaemon": False},
])
def test_other_observers_are_left_to_twistd(options):
    """
    syslog, a --logger factory, or a daemon asked to log to standard output
    (which twistd refuses): no observer, twistd does what it does.
    """
    signals = Signals()
    assert build(options, signals) is None
    assert signals.installed == []


@pytest.mark.parametrize("options", [{"logfile": "-", "nodaemon": True}, {"logfile": "", "nodaemon": True}])
def test_standard_output_as_twistd_chooses_it(options):
    observer = build(options, Signals())
    assert observer.outFile is sys.stdout


def test_a_log_file_rotated_as_twistd_rotates_it(tmp_path):
    """
    A path: a L{LogFile} there with twistd's defaults, and a SIGUSR1
    handler, unless the signal already has one.
    """
    path = tmp_path / "log.txt"
    signals = Signals()
    observer = build({"logfile": str(path), "nodaemon": False}, signals)
    assert isinstance(observer.outFile, LogFile)
    assert observer.outFile.path == str(path)
    import inspect

    assert observer.outFile.rotateLength == inspect.signature(LogFile).parameters["rotateLength"].default
    assert [signum for signum, _ in signals.installed] == [signal.SIGUSR1]
    observer.outFile.close()
    taken = Signals(current=lambda *args: None)
    other = build({"logfile": str(path)}, taken)
    assert taken.installed == []
    other.outFile.close()


def test_no_logfile_as_a_daemon_is_twistd_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    observer = build({"logfile": None, "nodaemon": False}, Signals())
    assert observer.outFile.path == os.path.join(str(tmp_path), "twistd.log")
    observer.outFile.close()


# -- offered to twistd's application ----------------------------------------


class Offering(OffersLogObserver, MultiService):
    def __init__(self, observer: Any) -> None:
        super().__init__()
        self.logObserver = observer
        self.taken: List[Any] = []

    def logObserverTaken(self, observer: Any) -> None:
        self.taken.append(observer)


def test_an_application_takes_the_offered_observer():
    observer = ReadingLogFileObserver(StringIO())
    application = Application("sensornet")
    service = Offering(observer)
    service.setServiceParent(application)
    assert application.getComponent(ILogObserver) is observer
    assert service.taken == [observer]


def test_an_observer_already_chosen_is_kept():
    """
    An application that has an observer (a .tac file's choice) keeps it,
    and the service is not told its offer was taken.
    """
    chosen = textFileLogObserver(StringIO())
    application = Application("sensornet")
    application.setComponent(ILogObserver, chosen)
    service = Offering(ReadingLogFileObserver(StringIO()))
    service.setServiceParent(application)
    assert application.getComponent(ILogObserver) is chosen
    assert service.taken == []


def test_nothing_offered_or_a_parent_without_components():
    application = Application("sensornet")
    Offering(None).setServiceParent(application)
    assert application.getComponent(ILogObserver, None) is None
    parent = MultiService()
    service = Offering(ReadingLogFileObserver(StringIO()))
    service.setServiceParent(parent)
    assert service.taken == []


def test_the_server_batches_its_reading_log_only_for_this_observer():
    from sensornet.server import SensorServerService, ServerConfig

    for observer, batched in [(ReadingLogFileObserver(StringIO()), True), (textFileLogObserver(StringIO()), False)]:
        server = SensorServerService(ServerConfig(store="none", http=None, listen=["tcp:0"]), Clock())
        server.logObserver = observer
        server.setServiceParent(Application("sensornet"))
        assert server.factory.accounting.readingLog.batched is batched


# -- a real twistd ------------------------------------------------------------

_RECEIVED = re.compile(r"(\S+) \[sensornet\.accounting#info\] Received from 127\.0\.0\.1:(\d+): (.*)\Z")


def test_twistd_logfile_gets_a_timestamped_line_per_reading_and_rotates_on_sigusr1(tmp_path):
    """
    A real C{twistd --logfile} server: every reading of a chunk is its own
    C{TIMESTAMP [sensornet.accounting#info] Received from PEER: LINE} line,
    in order, hostile text escaped; twistd's own lines are there too; and
    SIGUSR1 rotates the file.
    """
    server = ServerProcess("none", str(tmp_path)).start()
    try:
        lines = [b"t,sensor=a value=%d,seq=%di" % (i, i) for i in range(1, 201)]
        lines[7] = b"t,sensor=a,x=\x1b[2J{0} value=8,seq=8i"
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(b"\n".join(lines) + b"\n")
            received = b""
            while received.count(b"\n") < len(lines):
                data = conn.recv(65536)
                assert data, "connection closed early"
                received += data
        server.process.send_signal(signal.SIGUSR1)
        rotated = os.path.join(str(tmp_path), "server.log.1")
        deadline = 100
        while not os.path.exists(rotated) and deadline:
            import time

            time.sleep(0.1)
            deadline -= 1
        assert os.path.exists(rotated), "SIGUSR1 did not rotate the log"
    finally:
        server.terminate()
    with open(rotated, encoding="utf-8") as f:
        text = f.read()
    matches = [_RECEIVED.match(line) for line in text.splitlines() if "Received from" in line]
    assert all(matches)
    expected = [line.decode() for line in lines]
    expected[7] = "t,sensor=a,x=\\x1b[2J{0} value=8,seq=8i"
    assert [m.group(3) for m in matches] == expected
    assert len({m.group(2) for m in matches}) == 1
    assert "sensornet-server" in text or "Starting" in text or "twistd" in text


@pytest.fixture
def sigusr1():
    """
    SIGUSR1's handler restored after the test (twistd's options install one
    for rotation).
    """
    previous = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, previous)


@pytest.mark.parametrize("role, args", [
    ("sensornet-server", ["--store", "none", "--http", "none", "--listen", "tcp:0"]),
    ("sensornet-demo", ["--store", "none", "--http", "none", "--port", "6000"]),
])
def test_under_twistds_options_both_roles_log_through_it(tmp_path, sigusr1, role, args):
    """
    Parsed as twistd parses them (C{twistd -n --logfile PATH ROLE ...}), the
    server's and the demo's services give twistd's application the
    observer for that file, and their reading log is batched.
    """
    from twisted.internet.testing import MemoryReactorClock
    from twisted.scripts.twistd import ServerOptions

    from sensornet.tap import demo as demotap
    from sensornet.tap import server as servertap

    path = tmp_path / "log.txt"
    options = ServerOptions()
    options.parseOptions(["-n", "--logfile", str(path), role, *args])
    tap = servertap if role == "sensornet-server" else demotap
    service = tap.makeService(options.subOptions, MemoryReactorClock())
    application = Application(role)
    service.setServiceParent(application)
    observer = application.getComponent(ILogObserver)
    assert isinstance(observer, ReadingLogFileObserver)
    assert observer.outFile.path == str(path)
    server = service if role == "sensornet-server" else service.server
    assert server.factory.accounting.readingLog.batched is True
    observer.outFile.close()


def test_with_syslog_twistd_keeps_its_own(tmp_path, sigusr1):
    from twisted.internet.testing import MemoryReactorClock
    from twisted.scripts.twistd import ServerOptions

    from sensornet.tap import server as servertap

    options = ServerOptions()
    options.parseOptions(["-n", "--syslog", "sensornet-server", "--store", "none", "--http", "none"])
    service = servertap.makeService(options.subOptions, MemoryReactorClock())
    application = Application("x")
    service.setServiceParent(application)
    assert application.getComponent(ILogObserver, None) is None
    assert service.factory.accounting.readingLog.batched is False

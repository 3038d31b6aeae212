"""
Nothing lost, nothing doubled: a real server process killed, a real
PostgreSQL restarted or stopped, a network cut, a flood, a stop; on both
backends where the backend matters.

The sensors run in the test's reactor; the server runs as its own process
(the installed twistd plugin) so it can be killed for real.
"""

from __future__ import annotations

import random
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, clientFromString
from twisted.internet.protocol import Factory, Protocol

from sensornet.client import SimulatedSensor
from sensornet.outbox import Outbox
from sensornet.simulate import KINDS
from sensornet.store import openStore

from serverproc import ServerProcess

TIMEOUT = 60


class RecordingOutbox(Outbox):
    """
    An outbox that remembers every seq the server acknowledged.
    """

    def __init__(self) -> None:
        super().__init__(maxSize=1_000_000)
        self.acked: set = set()

    def acknowledge(self, seq: int) -> bool:
        self.acked.add(seq)
        return super().acknowledge(seq)


def sensors(reactor, port, count, prefix, interval=0.02):
    made = []
    for index in range(count):
        kind = "temperature" if index % 2 == 0 else "humidity"
        sensor = SimulatedSensor(
            f"{prefix}-{index}", kind, KINDS[kind],
            clientFromString(reactor, f"tcp:host=127.0.0.1:port={port}"), reactor,
            interval=interval, rng=random.Random(index), outbox=RecordingOutbox(),
            ackTimeout=1.0, deadTimeout=3.0,
            retryPolicy=lambda attempt: min(0.1 * (attempt + 1), 0.5),
        )
        sensor.startService()
        made.append(sensor)
    return made


def sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def waitFor(reactor, predicate, timeout=TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        yield sleep(reactor, 0.05)


@defer.inlineCallbacks
def drain(reactor, made):
    """
    Stop producing, wait until every reading is acknowledged, stop.
    """
    for sensor in made:
        if sensor.loop.running:
            sensor.loop.stop()
    yield waitFor(reactor, lambda: all(len(s.outbox) == 0 for s in made), what="all outboxes empty")
    yield stopSensors(made)


@defer.inlineCallbacks
def stopSensors(made):
    """
    Stop every sensor still running (clean-up after a failed assertion).
    """
    for sensor in made:
        if sensor.running:
            yield sensor.stopService()


def storedRows(url):
    """
    (sensor, seq) of every stored row, through the database's own client.
    """
    store = openStore(url)
    try:
        return [(r["sensor"], r["seq"]) for r in store.readings(limit=10**7)]
    finally:
        store.close()


def assertExactlyOnce(url, made):
    """
    Per sensor, the stored seqs are every seq it produced, each once; and
    everything the server acknowledged is among them.
    """
    rows = storedRows(url)
    for sensor in made:
        seqs = sorted(seq for name, seq in rows if name == sensor.name)
        produced = sensor.nextSeq - seqs[0] if seqs else 0
        assert seqs == list(range(seqs[0], sensor.nextSeq)), (
            f"{sensor.name}: {len(seqs)} stored of {produced} produced; "
            f"duplicates: {len(seqs) - len(set(seqs))}"
        )
        assert sensor.outbox.acked <= set(seqs)


@pytest_twisted.inlineCallbacks
def test_sigkill_while_streaming_loses_nothing_and_doubles_nothing(reactor, tmp_path, store_url):
    server = ServerProcess(store_url, str(tmp_path)).start()
    made = sensors(reactor, server.port, 4, "crash")
    try:
        yield waitFor(reactor, lambda: all(len(s.outbox.acked) > 10 for s in made), what="first acks")
        server.kill()
        yield sleep(reactor, 0.5)
        assert all(s.protocol is None for s in made)
        server = ServerProcess(store_url, str(tmp_path), port=server.port).start()
        yield sleep(reactor, 1.0)
        yield drain(reactor, made)
    finally:
        yield stopSensors(made)
        server.kill()
    assertExactlyOnce(store_url, made)
    assert all(s.connections >= 2 for s in made)


@pytest_twisted.inlineCallbacks
def test_postgresql_restart_under_load_is_survived(reactor, tmp_path, postgresql_server, postgresql_db):
    url = postgresql_db
    postgresql = postgresql_server
    server = ServerProcess(url, str(tmp_path)).start()
    made = sensors(reactor, server.port, 4, "pgrestart")
    try:
        yield waitFor(reactor, lambda: all(len(s.outbox.acked) > 10 for s in made), what="first acks")
        yield threads.deferToThread(postgresql.restart)
        before = {s.name: len(s.outbox.acked) for s in made}
        yield waitFor(
            reactor, lambda: all(len(s.outbox.acked) > before[s.name] + 10 for s in made),
            what="acks after the restart",
        )
        assert server.alive()
        yield drain(reactor, made)
    finally:
        yield stopSensors(made)
        server.terminate()
    assertExactlyOnce(url, made)


@pytest_twisted.inlineCallbacks
def test_database_gone_acknowledges_nothing_and_the_server_keeps_serving(
    reactor, tmp_path, postgresql_server, postgresql_db
):
    url = postgresql_db
    postgresql = postgresql_server
    server = ServerProcess(url, str(tmp_path)).start()
    made = sensors(reactor, server.port, 2, "dbgone")
    try:
        yield waitFor(reactor, lambda: all(len(s.outbox.acked) > 5 for s in made), what="first acks")
        yield threads.deferToThread(postgresql.stop)
        try:
            yield sleep(reactor, 0.5)
            ackedWhileDown = {s.name: set(s.outbox.acked) for s in made}
            yield sleep(reactor, 2.0)
            # Nothing acknowledged while the database is down...
            assert {s.name: set(s.outbox.acked) for s in made} == ackedWhileDown
            assert all(len(s.outbox) > 20 for s in made)
            # ...yet the server is up and answers a new connection.
            reply = yield threads.deferToThread(exchange, server.port, b"this is not a reading\n")
            assert reply.startswith(b"error")
            assert server.alive()
        finally:
            yield threads.deferToThread(postgresql.start)
        yield drain(reactor, made)
    finally:
        yield stopSensors(made)
        server.terminate()
    assertExactlyOnce(url, made)


def exchange(port, data, timeout=10.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return s.recv(4096)


@pytest_twisted.inlineCallbacks
def test_sigterm_commits_and_acknowledges_what_it_holds(reactor, tmp_path, store_url):
    """
    Readings in flight when SIGTERM arrives are committed and acknowledged
    before the server exits: what was acknowledged is exactly what is stored.
    """
    server = ServerProcess(store_url, str(tmp_path)).start()
    count = 20_000
    lines = b"".join(b"temperature,sensor=term,unit=C value=20.5,seq=%di\n" % i for i in range(count))

    def sendThenStop():
        acked = []
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(lines)
            time.sleep(0.05)
            server.process.send_signal(15)
            buffer = b""
            while True:
                data = s.recv(1 << 16)
                if not data:
                    break
                buffer += data
        for line in buffer.splitlines():
            if line.startswith(b"ack "):
                acked.append(int(line[4:]))
        return acked

    acked = yield threads.deferToThread(sendThenStop)
    status = yield threads.deferToThread(server.process.wait, 30)
    # twistd re-raises the signal that stopped it once shutdown is complete,
    # so a clean SIGTERM exit shows as -15.
    assert status in (0, -15), server.log()
    assert "sensornet server stopped" in server.log()
    stored = sorted(seq for name, seq in storedRows(store_url) if name == "term")
    assert len(acked) > 0
    assert sorted(acked) == stored


@pytest_twisted.inlineCallbacks
def test_flood_and_a_client_that_never_reads_cannot_grow_server_memory(reactor, tmp_path):
    """
    One connection floods readings and never reads its acks: the server stops
    reading from it instead of buffering, its memory stays bounded, and other
    connections are still served.
    """
    store = f"sqlite:{tmp_path / 'flood.db'}"
    server = ServerProcess(store, str(tmp_path), extra=["--no-log-readings"]).start()
    chunk = b"".join(b"temperature,sensor=flood,unit=C value=20.5,seq=%di\n" % i for i in range(20_000))

    def flood(seconds=6.0, most=400 * 1024 * 1024):
        sent = 0
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.settimeout(0.2)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and sent < most:
                try:
                    sent += s.send(chunk)
                except socket.timeout:
                    pass
            # Still connected, never having read a byte: the server must
            # answer another connection meanwhile.
            other = exchange(server.port, b"temperature,sensor=other value=1,seq=1i\n")
        return sent, other

    try:
        startRss = server.rss()
        sent, other = yield threads.deferToThread(flood)
        grown = server.rss() - startRss
    finally:
        server.terminate()
    assert other == b"ack 1\n"
    # The flooder got far less through than it tried: the server stopped
    # reading (TCP backpressure), so it could not have buffered it all...
    assert sent < 400 * 1024 * 1024
    # ...and the server's memory stayed bounded (send buffers, one batch,
    # the per-connection pending limit), far below what was offered.
    assert grown < 150 * 1024 * 1024, f"server grew by {grown / 2**20:.0f} MiB"


class Blackhole:
    """
    A TCP relay between sensors and the server that can be cut silently:
    while cut, bytes in either direction are dropped and no FIN is sent, as
    when a network link goes down without either end noticing.
    """

    def __init__(self, reactor, target):
        self.reactor = reactor
        self.target = target
        self.cut = False
        self.pairs = []

    def factory(self):
        hole = self

        class Inbound(Protocol):
            def connectionMade(self):
                self.peer = None
                self.transport.pauseProducing()
                endpoint = TCP4ClientEndpoint(hole.reactor, "127.0.0.1", hole.target)
                d = endpoint.connect(Factory.forProtocol(lambda: Outbound(self)))
                d.addErrback(lambda _: self.transport.loseConnection())
                hole.pairs.append(self)

            def dataReceived(self, data):
                if not hole.cut and self.peer is not None:
                    self.peer.transport.write(data)

            def connectionLost(self, reason):
                if self.peer is not None:
                    self.peer.transport.loseConnection()

        class Outbound(Protocol):
            def __init__(self, inbound):
                self.inbound = inbound

            def connectionMade(self):
                self.inbound.peer = self
                self.inbound.transport.resumeProducing()

            def dataReceived(self, data):
                if not hole.cut:
                    self.inbound.transport.write(data)

            def connectionLost(self, reason):
                self.inbound.transport.loseConnection()

        return Factory.forProtocol(Inbound)


@pytest_twisted.inlineCallbacks
def test_network_cut_then_restored_loses_nothing(reactor, tmp_path):
    store = f"sqlite:{tmp_path / 'cut.db'}"
    server = ServerProcess(store, str(tmp_path)).start()
    hole = Blackhole(reactor, server.port)
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(hole.factory())
    made = sensors(reactor, port.getHost().port, 2, "cut")
    try:
        yield waitFor(reactor, lambda: all(len(s.outbox.acked) > 5 for s in made), what="first acks")
        hole.cut = True
        yield sleep(reactor, 1.5)
        assert all(len(s.outbox) > 20 for s in made)
        # The sensors notice the silence (no ack for deadTimeout) and reconnect
        # while the old connections still look open.
        yield waitFor(reactor, lambda: all(s.connections >= 2 for s in made), timeout=15, what="reconnects")
        hole.cut = False
        yield drain(reactor, made)
    finally:
        yield stopSensors(made)
        yield port.stopListening()
        for pair in hole.pairs:
            pair.transport.loseConnection()
        server.terminate()
    assertExactlyOnce(store, made)


@pytest.fixture
def tinyDisk(tmp_path):
    """
    A 4 MiB tmpfs mounted for the test: a disk that really fills up.
    """
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fillDisk(directory):
    """
    Write a filler file until the filesystem is full; returns its path.
    """
    filler = directory / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(block)
            except OSError:
                break
        # The last bytes, in smaller pieces.
        for size in (4096, 512, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError:
                    break
    return filler


@pytest_twisted.inlineCallbacks
def test_disk_full_acknowledges_nothing_unstored_and_recovers(reactor, tmp_path, tinyDisk):
    """
    The SQLite store's disk fills up while sensors stream: nothing is
    acknowledged that was not stored, the server stays up and answers
    other connections, and once space is freed every reading is stored
    exactly once.
    """
    store = f"sqlite:{tinyDisk / 'sensornet.db'}"
    server = ServerProcess(store, str(tmp_path), extra=["--no-log-readings"]).start()
    made = sensors(reactor, server.port, 2, "diskfull")
    filler = None
    try:
        yield waitFor(reactor, lambda: all(len(s.outbox.acked) > 5 for s in made), what="first acks")
        filler = yield threads.deferToThread(fillDisk, tinyDisk)
        yield sleep(reactor, 1.0)
        ackedWhileFull = {s.name: set(s.outbox.acked) for s in made}
        yield sleep(reactor, 1.5)
        # The disk stays full: nothing more is acknowledged...
        assert {s.name: set(s.outbox.acked) for s in made} == ackedWhileFull
        assert all(len(s.outbox) > 20 for s in made)
        # ...the server is up and answers another connection...
        reply = yield threads.deferToThread(exchange, server.port, b"temperature,sensor=x value=1,seq=1i\n")
        assert reply.startswith(b"error seq=1: not stored, try again"), reply
        assert server.alive()
        # ...and freeing space lets everything through.
        filler.unlink()
        yield drain(reactor, made)
    finally:
        yield stopSensors(made)
        server.terminate()
    assertExactlyOnce(store, made)


@pytest_twisted.inlineCallbacks
def test_constraint_error_rejects_only_the_bad_reading(reactor, tmp_path, postgresql_db):
    """
    A reading the database refuses (a CHECK constraint the operator added to
    the sensor dictionary, refusing a sensor's name) is answered "rejected"
    and not stored; the readings around it
    in the same chunk are stored and acknowledged; the server keeps serving.
    """
    import psycopg

    server = ServerProcess(postgresql_db, str(tmp_path)).start()
    try:
        # The server created the schema on start; now the operator tightens it.
        reply = yield threads.deferToThread(exchange, server.port, b"temperature,sensor=c value=1,seq=1i\n")
        assert reply == b"ack 1\n"
        with psycopg.connect(postgresql_db, autocommit=True) as db:
            db.execute("ALTER TABLE sensors ADD CONSTRAINT plausible CHECK (name <> 'banned')")
        lines = (
            b"temperature,sensor=c value=20,seq=2i\n"
            b"temperature,sensor=banned value=5000,seq=3i\n"
            b"temperature,sensor=c value=21,seq=4i\n"
        )

        def send():
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                s.sendall(lines)
                data = b""
                while data.count(b"\n") < 3:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                return data

        replies = (yield threads.deferToThread(send)).splitlines()
        assert replies[0] == b"ack 2"
        assert replies[1].startswith(b"error seq=3: rejected: ") and b"plausible" in replies[1]
        assert replies[2] == b"ack 4"
        reply = yield threads.deferToThread(exchange, server.port, b"temperature,sensor=c value=22,seq=5i\n")
        assert reply == b"ack 5\n"
    finally:
        server.terminate()
    assert sorted(seq for name, seq in storedRows(postgresql_db) if name == "c") == [1, 2, 4, 5]

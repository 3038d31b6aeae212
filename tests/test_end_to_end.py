"""
End to end over real loopback sockets, in the test reactor: the server
service, the simulated sensors, a seed-style blocking client, many
concurrent connections, a server restart under a streaming sensor.
"""

from __future__ import annotations

import random
import socket

import pytest_twisted
from twisted.internet import defer, task, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.protocols.basic import LineOnlyReceiver

from sensornet.client import SimulatedSensor
from sensornet.server import SensorServerService, ServerConfig
from sensornet.simulate import KINDS
from sensornet.store import openStore

TIMEOUT = 30


def startServer(reactor, store="none", port=0, **kw):
    config = ServerConfig(listen=[f"tcp:{port}:interface=127.0.0.1"], http=None, store=store, **kw)
    service = SensorServerService(config, reactor)
    service.startService()
    return service


@defer.inlineCallbacks
def listeningPort(service):
    ports = yield service.whenListening()
    return ports[0].getHost().port


def makeSensor(reactor, port, name, kind, interval, seed=1):
    from twisted.internet.endpoints import clientFromString

    return SimulatedSensor(
        name, kind, KINDS[kind], clientFromString(reactor, f"tcp:host=127.0.0.1:port={port}"),
        reactor, interval=interval, rng=random.Random(seed),
    )


@defer.inlineCallbacks
def waitFor(reactor, predicate, timeout=TIMEOUT, step=0.02):
    """
    Poll C{predicate} until true; fail after C{timeout} seconds.
    """
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        yield task.deferLater(reactor, step, lambda: None)
        waited += step


def storedSeqs(path, sensor):
    store = openStore("sqlite:" + str(path))
    try:
        return sorted(r["seq"] for r in store.readings(sensor=sensor, limit=10**7))
    finally:
        store.close()


@pytest_twisted.inlineCallbacks
def test_server_and_both_seed_sensors_with_acknowledgements(reactor, tmp_path):
    """
    The demo's shape: a temperature and a humidity sensor stream to one
    server; every reading they produce is acknowledged and stored once.
    """
    db = str(tmp_path / "e2e.db")
    server = startServer(reactor, store=f"sqlite:{db}")
    port = yield listeningPort(server)
    temperature = makeSensor(reactor, port, "Sensor1", "temperature", 0.05)
    humidity = makeSensor(reactor, port, "Sensor2", "humidity", 0.075)
    temperature.startService()
    humidity.startService()
    try:
        yield waitFor(reactor, lambda: temperature.connections and humidity.connections)
        yield task.deferLater(reactor, 0.6, lambda: None)
    finally:
        temperature.loop.stop()
        humidity.loop.stop()
    yield waitFor(reactor, lambda: not len(temperature.outbox) and not len(humidity.outbox))
    yield temperature.stopService()
    yield humidity.stopService()
    yield server.stopService()
    for sensor in (temperature, humidity):
        seqs = storedSeqs(db, sensor.name)
        assert len(seqs) >= 5
        assert seqs == list(range(seqs[0], sensor.nextSeq))
    assert set(server.factory.connectedSensors()) == set()


@pytest_twisted.inlineCallbacks
def test_seed_style_blocking_client_is_answered(reactor):
    """
    A client written for the seed's server: sendall() without a newline,
    then a blocking recv() for the reply.
    """
    server = startServer(reactor)
    port = yield listeningPort(server)

    def seedClient():
        replies = []
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            for message in ("Sensor1 - Temperatura: 25.34°C", "Sensor1 - Temperatura: 25.80°C"):
                s.sendall(message.encode("utf-8"))
                replies.append(s.recv(1024).decode("utf-8"))
        return replies

    try:
        replies = yield threads.deferToThread(seedClient).addTimeout(TIMEOUT, reactor)
    finally:
        yield server.stopService()
    assert replies == ["Dados recebidos com sucesso.\n"] * 2


class AckWaiter(LineOnlyReceiver):
    delimiter = b"\n"

    def __init__(self, seq):
        self.seq = seq
        self.acked = defer.Deferred()

    def connectionMade(self):
        self.sendLine(b"temperature,sensor=c%d value=21.5,seq=%di" % (self.seq, self.seq))

    def lineReceived(self, line):
        if not self.acked.called:
            self.acked.callback(line)


@pytest_twisted.inlineCallbacks
def test_500_concurrent_connections_served_by_one_reactor(reactor):
    server = startServer(reactor, logReadings=False)
    port = yield listeningPort(server)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    protocols = []
    try:
        connecting = [connectProtocol(endpoint, AckWaiter(i)) for i in range(500)]
        protocols = yield defer.gatherResults(connecting).addTimeout(TIMEOUT, reactor)
        acks = yield defer.gatherResults([p.acked for p in protocols]).addTimeout(TIMEOUT, reactor)
        assert acks == [b"ack %d" % i for i in range(500)]
        assert server.metrics.registry.get_sample_value("sensornet_connections_open") == 500
        assert len(server.factory.connectedSensors()) == 500
    finally:
        for p in protocols:
            p.transport.loseConnection()
        yield waitFor(reactor, lambda: not server.factory.protocols)
        yield server.stopService()


@pytest_twisted.inlineCallbacks
def test_sensor_resends_what_it_held_after_the_server_restarts(reactor, tmp_path):
    """
    The server goes away while a sensor streams; the sensor keeps its
    readings, reconnects by itself when a server is back on the port, and
    every reading ends up stored exactly once.
    """
    db = str(tmp_path / "restart.db")
    server = startServer(reactor, store=f"sqlite:{db}")
    port = yield listeningPort(server)
    sensor = makeSensor(reactor, port, "restarter", "temperature", 0.05)
    sensor.startService()
    try:
        yield waitFor(reactor, lambda: sensor.connections == 1)
        yield task.deferLater(reactor, 0.3, lambda: None)
        yield server.stopService()
        yield waitFor(reactor, lambda: sensor.protocol is None)
        yield task.deferLater(reactor, 0.5, lambda: None)
        held = len(sensor.outbox)
        assert held >= 5
        server = startServer(reactor, store=f"sqlite:{db}", port=port)
        yield waitFor(reactor, lambda: sensor.connections >= 2)
        yield task.deferLater(reactor, 0.2, lambda: None)
    finally:
        sensor.loop.stop()
    yield waitFor(reactor, lambda: not len(sensor.outbox))
    yield sensor.stopService()
    yield server.stopService()
    seqs = storedSeqs(db, "restarter")
    assert seqs == list(range(seqs[0], sensor.nextSeq))


@pytest_twisted.inlineCallbacks
def test_client_metrics_endpoint_counts_what_the_sensors_did(reactor):
    """
    twistd sensornet-client --metrics ENDPOINT: the process's sensors report
    sent readings, acks, reconnects and the outbox over HTTP, summed.
    """
    import treq
    from prometheus_client.parser import text_string_to_metric_families

    from sensornet.tap import client as clienttap

    server = startServer(reactor)
    port = yield listeningPort(server)
    options = clienttap.Options()
    options.parseOptions([
        "--kind", "humidity", "--server", f"127.0.0.1:{port}", "--sensors", "3",
        "--interval", "0.05", "--metrics", "tcp:0:interface=127.0.0.1",
    ])
    service = clienttap.makeService(options, reactor)
    service.startService()
    sensors = service.sensors
    try:
        webPort = yield service.whenMetricsListening()
        yield waitFor(reactor, lambda: all(s.connections for s in sensors))
        yield task.deferLater(reactor, 0.3, lambda: None)
        for s in sensors:
            s.loop.stop()
        yield waitFor(reactor, lambda: not any(len(s.outbox) for s in sensors))
        response = yield treq.get(f"http://127.0.0.1:{webPort.getHost().port}/metrics").addTimeout(TIMEOUT, reactor)
        text = yield treq.text_content(response)
    finally:
        yield service.stopService()
        yield server.stopService()
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    produced = sum(s.produced for s in sensors)
    assert values["sensornet_client_connected"] == 3
    assert values["sensornet_client_outbox_length"] == 0
    assert values["sensornet_client_acks_received_total"] == produced
    assert values["sensornet_client_readings_sent_total"] >= produced
    assert values["sensornet_client_reconnects_total"] == 0


def selfSignedCertificate(directory):
    """
    A key and a self-signed certificate for localhost / 127.0.0.1, as PEM
    files in C{directory}; returns (key path, certificate path).
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    keyPath = directory / "key.pem"
    certPath = directory / "cert.pem"
    keyPath.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    certPath.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return keyPath, certPath


@pytest_twisted.inlineCallbacks
def test_sensor_over_tls_with_endpoint_strings(reactor, tmp_path):
    """
    TLS comes from endpoint strings alone: the server listens on ssl:...,
    the sensor connects with tls:... and verifies the server's certificate.
    """
    keyPath, certPath = selfSignedCertificate(tmp_path)
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "cert.pem").write_bytes(certPath.read_bytes())
    config = ServerConfig(
        listen=[f"ssl:0:interface=127.0.0.1:privateKey={keyPath}:certKey={certPath}"], http=None, store="none"
    )
    server = SensorServerService(config, reactor)
    server.startService()
    port = yield listeningPort(server)
    from twisted.internet.endpoints import clientFromString

    sensor = SimulatedSensor(
        "tls-sensor", "temperature", KINDS["temperature"],
        clientFromString(reactor, f"tls:host=127.0.0.1:port={port}:trustRoots={roots}"),
        reactor, interval=0.05, rng=random.Random(3),
    )
    sensor.startService()
    try:
        yield waitFor(reactor, lambda: sensor.produced >= 5 and sensor.connections)
        sensor.loop.stop()
        yield waitFor(reactor, lambda: not len(sensor.outbox))
        received = server.metrics.registry.get_sample_value("sensornet_readings_received_total", {"dialect": "native"})
        assert received >= 5
        assert sensor.protocol.transport.getPeerCertificate() is not None
    finally:
        yield sensor.stopService()
        yield server.stopService()

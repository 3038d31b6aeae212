"""
TLS client certificates on the sensor port (issue 10, item 2): a real CA
and certificates made with C{cryptography}, real handshakes over loopback
against a server whose C{ssl:} listener requires certificates from that
CA (C{ServerConfig.clientCA}, C{--client-ca}).
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Dict, List, Optional, Tuple

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, threads
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS

from sensornet.identity import Registry
from sensornet.identity.tls import certificateNames
from sensornet.server import SensorServerService, ServerConfig

from test_identity_auth import TIMEOUT, LineClient, exchange, native, sample, stored

pytestmark = pytest.mark.timeout(120)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def makeCA(common: str) -> Tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def issue(
    ca: Tuple[Any, x509.Certificate], common: str, dns: Tuple[str, ...] = (), server: bool = False
) -> Tuple[Any, x509.Certificate]:
    caKey, caCertificate = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(caCertificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    names: List[x509.GeneralName] = [x509.DNSName(name) for name in dns]
    if server:
        import ipaddress

        names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(caKey, hashes.SHA256())


def pem(key: Any, certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: Any) -> Dict[str, Any]:
    """
    A sensors' CA and one from elsewhere, the server's certificate, and
    client certificates: C{A} by its CN, C{B} by a DNS SAN only, C{ghost}
    (no such sensor), C{A} from the other CA.
    """
    directory = tmp_path_factory.mktemp("pki")
    ca = makeCA("sensornet sensors CA")
    other = makeCA("someone else's CA")
    serverKey, serverCertificate = issue(ca, "localhost", ("localhost",), server=True)
    (directory / "server.pem").write_bytes(pem(serverKey, serverCertificate))
    (directory / "ca.pem").write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    clients = {
        "A": issue(ca, "A"),
        "B-by-SAN": issue(ca, "device 17", ("B",)),
        "ghost": issue(ca, "ghost"),
        "A-other-CA": issue(other, "A"),
    }
    return {
        "dir": str(directory),
        "ca": ca,
        "serverPEM": str(directory / "server.pem"),
        "caPEM": str(directory / "ca.pem"),
        "clients": {name: PrivateCertificate.loadPEM(pem(*pair)) for name, pair in clients.items()},
        "raw": clients,
    }


@defer.inlineCallbacks
def startTLSServer(reactor: Any, store: str, pki: Dict[str, Any]) -> Any:
    listen = f"ssl:0:interface=127.0.0.1:privateKey={pki['serverPEM']}"
    config = ServerConfig(listen=[listen], http=None, store=store, anonymousFrom="none", clientCA=pki["caPEM"])
    service = SensorServerService(config, reactor)
    service.startService()
    ports = yield service.whenListening()
    yield service.credentials.ready.addTimeout(TIMEOUT, reactor)
    return service, ports[0].getHost().port


@defer.inlineCallbacks
def connectTLS(reactor: Any, port: int, pki: Dict[str, Any], client: Optional[str]) -> Any:
    trust = Certificate.loadPEM(pki["ca"][1].public_bytes(serialization.Encoding.PEM))
    options = optionsForClientTLS(
        "localhost", trustRoot=trust, clientCertificate=pki["clients"][client] if client else None
    )
    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, options, timeout=5)
    protocol = yield connectProtocol(endpoint, LineClient())
    return protocol


def provision(store: str, *names: str) -> None:
    registry = Registry(store)
    try:
        for name in names:
            registry.add(name)
    finally:
        registry.close()


@pytest.fixture
def sqlite_store(tmp_path: Any) -> str:
    return "sqlite:" + os.path.join(str(tmp_path), "sensornet.db")


@pytest_twisted.inlineCallbacks
def test_a_certificate_writes_as_the_sensor_it_names_and_no_other(reactor, sqlite_store, pki):
    """
    A client certificate from the configured CA whose CN is sensor A
    writes as A (acknowledged, stored) and not as B (refused, not stored);
    no C{auth} line is needed.
    """
    yield threads.deferToThread(provision, sqlite_store, "A", "B")
    service, port = yield startTLSServer(reactor, sqlite_store, pki)
    try:
        client = yield connectTLS(reactor, port, pki, "A")
        lines = yield exchange(reactor, client, native("A", 1) + native("B", 2), 2)
        assert lines == [b"ack 1", b"error seq=2: not authorized to write as B"]
        assert sample(service, "sensornet_auth_successes_total", {"method": "certificate"}) == 1
        client.transport.loseConnection()
        yield client.closed
        a = yield threads.deferToThread(stored, sqlite_store, "A")
        b = yield threads.deferToThread(stored, sqlite_store, "B")
        assert [row["seq"] for row in a] == [1] and b == []
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_a_dns_subject_alternative_name_names_the_sensor(reactor, sqlite_store, pki):
    """
    A certificate whose CN is no sensor but whose DNS SAN is sensor B
    writes as B.
    """
    yield threads.deferToThread(provision, sqlite_store, "B")
    service, port = yield startTLSServer(reactor, sqlite_store, pki)
    try:
        client = yield connectTLS(reactor, port, pki, "B-by-SAN")
        lines = yield exchange(reactor, client, native("B", 5), 1)
        assert lines == [b"ack 5"]
        client.transport.loseConnection()
        yield client.closed
    finally:
        yield service.stopService()


@pytest.mark.parametrize("client", ["A-other-CA", None])
@pytest_twisted.inlineCallbacks
def test_a_certificate_from_another_ca_or_none_fails_the_handshake(reactor, sqlite_store, pki, client):
    """
    A certificate signed by another CA, or none at all: the TLS handshake
    fails, the connection closes without a reply, nothing is stored.
    """
    yield threads.deferToThread(provision, sqlite_store, "A")
    service, port = yield startTLSServer(reactor, sqlite_store, pki)
    try:
        protocol = yield connectTLS(reactor, port, pki, client)
        protocol.transport.write(native("A", 1))
        yield protocol.closed.addTimeout(TIMEOUT, reactor)
        assert protocol.lines == []
        rows = yield threads.deferToThread(stored, sqlite_store, "A")
        assert rows == []
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_a_certificate_naming_no_live_sensor_is_refused(reactor, sqlite_store, pki):
    """
    A good certificate is an identity, not a permission: naming a sensor
    the registry does not have, or one revoked, gets C{error auth:
    refused} and the close.
    """
    yield threads.deferToThread(provision, sqlite_store, "A")
    service, port = yield startTLSServer(reactor, sqlite_store, pki)
    try:
        ghost = yield connectTLS(reactor, port, pki, "ghost")
        lines = yield exchange(reactor, ghost, native("ghost", 1), 1)
        yield ghost.closed.addTimeout(TIMEOUT, reactor)
        assert lines == [b"error auth: refused"]
        # A live connection of A is cut when A is revoked, and A's
        # certificate is refused from then on.
        live = yield connectTLS(reactor, port, pki, "A")
        lines = yield exchange(reactor, live, native("A", 1), 1)
        assert lines == [b"ack 1"]
        registry = Registry(sqlite_store)
        try:
            yield threads.deferToThread(registry.revoke, "A")
        finally:
            registry.close()
        yield live.closed.addTimeout(5, reactor)
        assert live.lines[-1] == b"error: credential revoked or replaced; closing the connection"
        again = yield connectTLS(reactor, port, pki, "A")
        lines = yield exchange(reactor, again, native("A", 2), 1)
        yield again.closed.addTimeout(TIMEOUT, reactor)
        assert lines == [b"error auth: refused"]
    finally:
        yield service.stopService()


def test_certificate_names_are_the_cn_then_the_dns_sans(pki):
    key, certificate = issue(pki["ca"], "device 17", ("B", "device 17", "C"))
    assert certificateNames(certificate) == ["device 17", "B", "C"]
    assert certificateNames(pki["clients"]["A"].original) == ["A"]


@pytest_twisted.inlineCallbacks
def test_the_client_connects_with_its_certificate(reactor, sqlite_store, pki, tmp_path):
    """
    C{sensornet-client --cert --key --ca}: TLS to the server, the
    certificate names the sensor, readings are acknowledged and stored.
    """
    from sensornet.client import ClientConfig, SensorClientService

    from test_identity_auth import waitFor

    yield threads.deferToThread(provision, sqlite_store, "A")
    service, port = yield startTLSServer(reactor, sqlite_store, pki)
    key, certificate = pki["raw"]["A"]
    (tmp_path / "a.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "a.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    client = SensorClientService(
        ClientConfig(
            kind="temperature", sensor="A", endpoint=f"tcp:host=localhost:port={port}", interval=0.05,
            tlsCertificate=str(tmp_path / "a.crt"), tlsKey=str(tmp_path / "a.key"), tlsCA=pki["caPEM"],
        ),
        reactor,
    )
    client.startService()
    try:
        yield waitFor(reactor, lambda: (client.metrics.acksReceived._value.get() or 0) >= 3)
    finally:
        yield client.stopService()
        yield service.stopService()
    rows = yield threads.deferToThread(stored, sqlite_store, "A")
    assert len(rows) >= 3

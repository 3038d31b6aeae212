"""
The credential registry on both backends (real SQLite files and a real
PostgreSQL server): add, rotate, revoke, list; what is refused; what is
stored (a hash, never the token); the revision every cache polls; two
registries on one store agree; a sensor credential shares the sensor
dictionary's id with the sensor's readings.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from typing import Any, List, Tuple

import pytest

from sensornet.identity import Principal, Registry
from sensornet.identity.registry import DuplicateCredential, RegistryError, UnknownCredential, checkGrant
from sensornet.identity.tokens import (
    MIN_TOKEN_BITS,
    checkImportedToken,
    estimatedBits,
    looksLikeToken,
    newToken,
    tokenHash,
)
from sensornet.reading import Reading
from sensornet.store import openStore, parseStoreURL
from sensornet.store.base import loadMigrations

pytestmark = pytest.mark.timeout(60)


def query(url: str, sql: str, params: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
    """
    Rows of C{sql} read straight from the database, beside any registry.
    """
    parsed = parseStoreURL(url)
    if parsed.backend == "sqlite":
        db = sqlite3.connect(parsed.target)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql.replace("?", "%s"), params).fetchall()


@pytest.fixture
def registry(store_url: str):
    r = Registry(store_url)
    yield r
    r.close()


# -- tokens (pure) ------------------------------------------------------------


def test_new_tokens_are_long_random_and_recognisable() -> None:
    """
    A new token is C{snt_} + 43 URL-safe base64 characters (256 bits), never
    the same twice, and passes the import check.
    """
    tokens = {newToken() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert token.startswith("snt_") and len(token) == 47
        assert looksLikeToken(token)
        assert estimatedBits(token) >= MIN_TOKEN_BITS
        checkImportedToken(token)
    assert len(tokenHash(next(iter(tokens)))) == 32


@pytest.mark.parametrize(
    "weak",
    ["short", "a" * 64, "abcdefghij" * 5, "password123password123", "0123456789abcdef0123"],
)
def test_weak_tokens_are_refused_without_echoing_them(weak: str) -> None:
    with pytest.raises(ValueError) as caught:
        checkImportedToken(weak)
    assert weak not in str(caught.value)


@pytest.mark.parametrize("bad", ["", "has space in the middle of it!!", "tab\there-but-long-enough-xx", "é" * 30, None, 42])
def test_malformed_tokens_do_not_look_like_tokens(bad: Any) -> None:
    assert not looksLikeToken(bad)


def test_principal_rights() -> None:
    """
    A sensor writes only as itself, a gateway as what its grants match, a
    reader never writes and is the only one that reads.
    """
    sensor = Principal("lab-1", "sensor")
    gateway = Principal("gw", "gateway", ("lab-*", "roof"))
    reader = Principal("grafana", "reader")
    assert sensor.mayWrite("lab-1") and not sensor.mayWrite("lab-2") and not sensor.mayRead()
    assert gateway.mayWrite("lab-2") and gateway.mayWrite("roof") and not gateway.mayWrite("roof-2")
    assert not gateway.mayWrite("la") and not gateway.mayRead()
    assert not reader.mayWrite("grafana") and reader.mayRead()
    assert Principal("all", "gateway", ("*",)).mayWrite("anything")


@pytest.mark.parametrize("bad", ["", "a*b", "**", "x,y", "bad\x00"])
def test_bad_grants_are_refused(bad: str) -> None:
    with pytest.raises(RegistryError):
        checkGrant(bad)


# -- the registry, on both backends -------------------------------------------


def test_schema_3_is_applied_by_a_normal_store_open(store_url: str) -> None:
    """
    Opening the store as a server does creates the credentials tables (the
    003 migration); the registry finds them.
    """
    backend = parseStoreURL(store_url).backend
    store = openStore(store_url)
    try:
        assert store.schemaVersion() == len(loadMigrations(backend)) >= 3
    finally:
        store.close()
    assert query(store_url, "SELECT revision FROM credentials_revision") == [(0,)]
    assert query(store_url, "SELECT count(*) FROM credentials") == [(0,)]


def test_add_list_rotate_revoke(registry: Registry) -> None:
    """
    The whole life of a credential; list shows every one, revoked too,
    and never a token or hash.
    """
    before = time.time()
    token = registry.add("lab-1")
    registry.add("gw", role="gateway", grants=["lab-*", "roof"])
    registry.add("grafana", role="reader")
    listed = {c.name: c for c in registry.list()}
    assert [c.name for c in registry.list()] == ["grafana", "gw", "lab-1"]
    lab = listed["lab-1"]
    assert lab.role == "sensor" and lab.sensor is not None and lab.grants == ()
    assert before - 1 <= lab.createdAt <= time.time() + 1
    assert lab.rotatedAt is None and lab.revokedAt is None and not lab.revoked
    assert listed["gw"].grants == ("lab-*", "roof") and listed["gw"].sensor is None
    assert listed["grafana"].role == "reader"
    assert token not in repr(registry.list())

    revision, principals = registry.snapshot()
    assert principals[tokenHash(token)] == Principal("lab-1", "sensor", ())
    assert len(principals) == 3

    rotated = registry.rotate("lab-1")
    assert rotated != token
    _, principals = registry.snapshot()
    assert tokenHash(token) not in principals
    assert principals[tokenHash(rotated)].name == "lab-1"
    assert {c.name: c for c in registry.list()}["lab-1"].rotatedAt is not None

    assert registry.revoke("lab-1") is True
    assert registry.revoke("lab-1") is False
    _, principals = registry.snapshot()
    assert tokenHash(rotated) not in principals and len(principals) == 2
    assert {c.name: c for c in registry.list()}["lab-1"].revoked

    # Rotating a revoked credential reinstates it with a new token only.
    again = registry.rotate("lab-1")
    _, principals = registry.snapshot()
    assert principals[tokenHash(again)].name == "lab-1"
    assert tokenHash(rotated) not in principals


def test_refusals(registry: Registry) -> None:
    """
    A taken name (revoked too), an unknown name, bad roles and grants, and
    a weak or reused imported token are refused, changing nothing.
    """
    registry.add("lab-1")
    registry.add("old")
    registry.revoke("old")
    revision = registry.revision()
    with pytest.raises(DuplicateCredential):
        registry.add("lab-1")
    with pytest.raises(DuplicateCredential):
        registry.add("old", role="reader")
    with pytest.raises(UnknownCredential):
        registry.revoke("nobody")
    with pytest.raises(UnknownCredential):
        registry.rotate("nobody")
    with pytest.raises(RegistryError):
        registry.add("x", role="admin")
    with pytest.raises(RegistryError):
        registry.add("gw", role="gateway")
    with pytest.raises(RegistryError):
        registry.add("r", role="reader", grants=["lab-*"])
    with pytest.raises(RegistryError):
        registry.add("bad,name")
    with pytest.raises(RegistryError):
        registry.add("a" * 129)
    with pytest.raises(RegistryError) as weak:
        registry.add("weak", token="abcdefghij" * 5)
    assert "abcdefghij" not in str(weak.value)
    imported = newToken()
    registry.add("imported", token=imported)
    with pytest.raises(RegistryError):
        registry.add("copy", token=imported)
    with pytest.raises(RegistryError):
        registry.rotate("lab-1", token="short")
    assert registry.revision() == revision + 1
    assert sorted(c.name for c in registry.list()) == ["imported", "lab-1", "old"]


def test_imported_token_is_the_one_accepted(registry: Registry) -> None:
    token = newToken()
    assert registry.add("gw", role="gateway", grants=["*"], token=token) == token
    _, principals = registry.snapshot()
    assert principals[tokenHash(token)].mayWrite("anything")


def test_only_the_hash_is_stored(registry: Registry, store_url: str) -> None:
    """
    The table holds the SHA-256 of the token and nothing from which the
    token could be read back; for SQLite, the token's text is in no byte
    of the database files.
    """
    token = registry.add("lab-1")
    rows = query(store_url, "SELECT name, role, grants, token_hash FROM credentials")
    assert len(rows) == 1
    name, role, grants, digest = rows[0]
    assert bytes(digest) == hashlib.sha256(token.encode()).digest()
    assert token not in repr(rows)
    parsed = parseStoreURL(store_url)
    if parsed.backend == "sqlite":
        registry.close()
        for suffix in ("", "-wal"):
            try:
                with open(parsed.target + suffix, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            assert token.encode() not in data
            assert token[4:].encode() not in data


def test_revision_grows_with_every_change_only(registry: Registry) -> None:
    seen = [registry.revision()]
    registry.add("a")
    seen.append(registry.revision())
    registry.rotate("a")
    seen.append(registry.revision())
    registry.revoke("a")
    seen.append(registry.revision())
    registry.revoke("a")  # already revoked: no change
    registry.list()
    registry.snapshot()
    seen.append(registry.revision())
    assert seen == [seen[0], seen[0] + 1, seen[0] + 2, seen[0] + 3, seen[0] + 3]
    assert registry.snapshot()[0] == seen[-1]


def test_two_registries_on_one_store_agree(store_url: str) -> None:
    """
    What one registry (one server, one admin command) changes, another
    sees at its next call.
    """
    first, second = Registry(store_url), Registry(store_url)
    try:
        token = first.add("lab-1")
        revision, principals = second.snapshot()
        assert principals[tokenHash(token)].name == "lab-1"
        assert second.revision() == first.revision() == revision
        assert second.revoke("lab-1")
        assert first.snapshot()[1] == {}
        assert first.revision() == revision + 1
        with pytest.raises(DuplicateCredential):
            second.add("lab-1")
    finally:
        first.close()
        second.close()


def _reading(sensor: str, seq: int) -> Reading:
    now = time.time()
    return Reading(sensor, "temperature", 20.0 + seq, "C", ts=now - 10 + seq, seq=seq, dialect="native",
                   peer="127.0.0.1:4000", received_at=now)


def test_sensor_credential_shares_the_sensor_row_with_its_readings(store_url: str) -> None:
    """
    A credential for a sensor whose readings are stored points at that
    sensor's row; a sensor provisioned before its first reading gets the
    row its readings are then stored under.
    """
    store = openStore(store_url)
    registry = Registry(store_url)
    try:
        store.write([_reading("early", seq) for seq in range(5)])
        registry.add("early")
        registry.add("late")
        store.write([_reading("late", seq) for seq in range(3)])
        store.write([_reading("early", 5)])
        ids = dict(query(store_url, "SELECT name, id FROM sensors"))
        assert sorted(ids) == ["early", "late"]
        credentials = {c.name: c.sensor for c in registry.list()}
        assert credentials == {"early": ids["early"], "late": ids["late"]}
        # The readings are stored under those ids, and read back by name.
        joined = query(
            store_url,
            "SELECT c.name, count(se.id) FROM credentials c JOIN series se ON se.sensor = c.sensor GROUP BY c.name",
        )
        assert sorted(joined) == [("early", 1), ("late", 1)]
        assert len(store.readings(sensor="early")) == 6
        assert len(store.readings(sensor="late")) == 3
    finally:
        registry.close()
        store.close()


def test_a_registry_survives_its_connection_being_dropped(registry: Registry) -> None:
    """
    After C{close} (or a lost connection) the next call connects again.
    """
    registry.add("a")
    registry.close()
    assert [c.name for c in registry.list()] == ["a"]


def test_a_lost_postgresql_connection_is_unavailable_once_then_made_again(postgresql_db: str) -> None:
    """
    The server ends the registry's session (a failover, an idle timeout):
    the next call says the store is unavailable, the one after connects
    again, so a cache polling it recovers by itself.
    """
    from sensornet.store import StoreUnavailable

    registry = Registry(postgresql_db)
    try:
        registry.add("lab-1")
        before = registry.revision()
        ended = query(
            postgresql_db,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'sensornet-registry'",
        )
        assert ended == [(True,)]
        with pytest.raises(StoreUnavailable):
            registry.revision()
        assert registry.revision() == before
        assert [c.name for c in registry.list()] == ["lab-1"]
    finally:
        registry.close()

"""
The credential registry: who may write as which sensor and who may read,
kept in the store (table C{credentials}, schema 3) beside the sensor
dictionary, so every server sharing a database agrees.

L{Registry} is a plain blocking object holding one database connection of
its own, for one thread at a time: the C{sensornet} command uses it
directly, a server through L{sensornet.identity.cache.CredentialCache} on a
thread of its own. Only the SHA-256 of each token is stored
(L{sensornet.identity.tokens.tokenHash}); a token leaves a L{Registry} once,
as the return value of L{Registry.add} or L{Registry.rotate}.
"""

from __future__ import annotations

import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..store.base import StoreUnavailable, parseStoreURL
from .tokens import checkImportedToken, newToken, tokenHash

__all__ = [
    "ROLES",
    "Principal",
    "Credential",
    "Registry",
    "RegistryError",
    "DuplicateCredential",
    "UnknownCredential",
    "checkName",
    "checkGrant",
]

#: The roles a credential may have: C{sensor} writes as the sensor of its
#: own name, C{gateway} writes for the sensors its grants name, C{reader}
#: reads the HTTP API.
ROLES = ("sensor", "gateway", "reader")

# C0 controls, DEL and the C1 controls (as for sensor names), the comma
# (grants are stored as a comma list) and the star (it marks a prefix).
_BAD_NAME = re.compile("[\x00-\x1f\x7f-\x9f,*]").search


class RegistryError(ValueError):
    """
    A change to the registry was refused; the message says why and is fit
    to show a user (it never holds a token).
    """


class DuplicateCredential(RegistryError):
    """
    A credential of that name exists already (revoked ones too: names are
    never reused silently; rotate it instead).
    """


class UnknownCredential(RegistryError, LookupError):
    """
    No credential has that name.
    """


def checkName(name: object) -> str:
    """
    C{name} if it may name a credential: 1 to 128 characters, no control
    characters, no comma or C{*}, no leading or trailing space.

    @raise RegistryError: Otherwise.
    """
    if not isinstance(name, str) or not 1 <= len(name) <= 128:
        raise RegistryError("a credential name must be 1 to 128 characters")
    if _BAD_NAME(name) or name != name.strip():
        raise RegistryError(
            f"credential name {name!r} may not hold control characters, ',' or '*', "
            "nor start or end with a space"
        )
    return name


def checkGrant(pattern: object) -> str:
    """
    C{pattern} if it is a gateway grant: an exact sensor name, or a prefix
    followed by one C{*} at the end (C{lab-*}; C{*} alone grants every
    sensor).

    @raise RegistryError: Otherwise.
    """
    if not isinstance(pattern, str) or not pattern:
        raise RegistryError("an empty grant: give a sensor name or a prefix ending in '*'")
    stem = pattern[:-1] if pattern.endswith("*") else pattern
    if stem and (_BAD_NAME(stem) or stem != stem.lstrip() or len(stem) > 128):
        raise RegistryError(
            f"grant {pattern!r}: a sensor name or a prefix ending in '*' (one '*', at the end; no ',')"
        )
    return pattern


@dataclass(frozen=True)
class Principal:
    """
    Who a valid token speaks for, as the servers see it.

    @ivar name: The credential's name (for a C{sensor}, the sensor's name).
    @ivar role: One of L{ROLES}.
    @ivar grants: For a C{gateway}: exact sensor names and C{prefix*}
        patterns it may write for; empty for the other roles.
    """

    name: str
    role: str
    grants: Tuple[str, ...] = ()

    def mayWrite(self, sensor: str) -> bool:
        """
        Whether this principal may write readings as C{sensor}: a C{sensor}
        only as itself, a C{gateway} as any sensor its grants match, a
        C{reader} never.
        """
        if self.role == "sensor":
            return sensor == self.name
        if self.role == "gateway":
            for grant in self.grants:
                if grant.endswith("*"):
                    if sensor.startswith(grant[:-1]):
                        return True
                elif sensor == grant:
                    return True
        return False

    def mayRead(self) -> bool:
        """
        Whether this principal may read the HTTP API (readings, CSV, the
        live stream, C{/metrics}): C{reader}s only.
        """
        return self.role == "reader"


@dataclass(frozen=True)
class Credential:
    """
    One row of the registry as L{Registry.list} shows it: everything but the
    token's hash.

    @ivar sensor: The id of the sensor's row in the sensor dictionary (the
        id its readings are stored under), for a C{sensor} credential;
        L{None} for the other roles.
    @ivar createdAt: When it was added, float seconds since the epoch.
    @ivar rotatedAt: When its token was last replaced, or L{None}.
    @ivar revokedAt: When it was revoked, or L{None} while it is valid.
    """

    id: int
    name: str
    role: str
    sensor: Optional[int]
    grants: Tuple[str, ...]
    createdAt: float
    rotatedAt: Optional[float]
    revokedAt: Optional[float]

    @property
    def revoked(self) -> bool:
        """
        Whether the credential is revoked (no token of it is accepted).
        """
        return self.revokedAt is not None

    def principal(self) -> Principal:
        """
        The L{Principal} its token speaks for.
        """
        return Principal(self.name, self.role, self.grants)


def _micro(seconds: float) -> int:
    return round(seconds * 1_000_000)


def _seconds(micro: Optional[int]) -> Optional[float]:
    return None if micro is None else micro / 1_000_000


def _grants(text: str) -> Tuple[str, ...]:
    return tuple(part for part in text.split(",") if part)


_COLUMNS = "id, name, role, sensor, grants, created_at, rotated_at, revoked_at"
_BUMP = "UPDATE credentials_revision SET revision = revision + 1 WHERE id = 1"


class _Backend:
    """
    What differs between SQLite and PostgreSQL for the registry: connecting,
    transactions, the parameter style and the errors.
    """

    def connect(self) -> None:
        raise NotImplementedError()

    def close(self) -> None:
        raise NotImplementedError()

    @contextmanager
    def transaction(self, write: bool) -> Iterator[Callable[..., List[Tuple[Any, ...]]]]:
        """
        Run the body in one transaction; it gets C{execute(sql, params)}
        returning all rows. SQL is written with C{?} placeholders. A read
        (C{write=False}) body runs ONE statement, which is its own snapshot:
        no transaction block is opened for it (a cache polls every second:
        one round trip, not three).
        """
        raise NotImplementedError()
        yield  # pragma: no cover

    def isUniqueViolation(self, error: BaseException, constraint: str) -> bool:
        raise NotImplementedError()


class _SQLite(_Backend):
    def __init__(self, path: str, busyTimeout: float = 5.0) -> None:
        self.path = path
        self.busyTimeout = busyTimeout
        self.db: Optional[sqlite3.Connection] = None

    def connect(self) -> None:
        if self.db is None:
            # Autocommit: every transaction is an explicit BEGIN .. COMMIT;
            # check_same_thread=False: one thread at a time, not always the
            # one that connected.
            self.db = sqlite3.connect(
                self.path, timeout=self.busyTimeout, isolation_level=None, check_same_thread=False
            )

    def close(self) -> None:
        db, self.db = self.db, None
        if db is not None:
            try:
                db.close()
            except Exception:
                pass

    @contextmanager
    def transaction(self, write: bool) -> Iterator[Callable[..., List[Tuple[Any, ...]]]]:
        self.connect()
        db = self.db
        assert db is not None

        def execute(sql: str, params: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
            return db.execute(sql, params).fetchall()

        try:
            if not write:
                yield execute
                return
            # IMMEDIATE takes the write lock up front (waiting the busy
            # timeout for a writer).
            db.execute("BEGIN IMMEDIATE")
            try:
                yield execute
                db.execute("COMMIT")
            except BaseException:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
        except sqlite3.OperationalError as e:
            self.close()
            raise StoreUnavailable(f"SQLite: {e}") from e

    def isUniqueViolation(self, error: BaseException, constraint: str) -> bool:
        return isinstance(error, sqlite3.IntegrityError) and f"credentials.{constraint}" in str(error)


class _PostgreSQL(_Backend):
    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: Any = None

    def connect(self) -> None:
        if self.conn is not None and not self.conn.closed:
            return
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(self.url)
        params.setdefault("connect_timeout", "5")
        params.setdefault("application_name", "sensornet-registry")
        try:
            self.conn = psycopg.connect(make_conninfo("", **params), autocommit=True)
        except psycopg.Error as e:
            raise StoreUnavailable(f"PostgreSQL: {e}") from e

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    @contextmanager
    def transaction(self, write: bool) -> Iterator[Callable[..., List[Tuple[Any, ...]]]]:
        import psycopg

        self.connect()
        conn = self.conn

        def execute(sql: str, params: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
            cursor = conn.execute(sql.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description is not None else []

        try:
            if not write:
                yield execute
                return
            with conn.transaction():
                yield execute
        except psycopg.OperationalError as e:
            self.close()
            raise StoreUnavailable(f"PostgreSQL: {e}") from e

    def isUniqueViolation(self, error: BaseException, constraint: str) -> bool:
        import psycopg.errors

        return (
            isinstance(error, psycopg.errors.UniqueViolation)
            and getattr(error.diag, "constraint_name", None) == f"credentials_{constraint}"
        )


class Registry:
    """
    The credentials of the store at C{storeURL} (C{sqlite:PATH} or
    C{postgresql://...}, as the server's C{--store} takes them after
    C{env:} is resolved).

    Blocking; one thread at a time. The store's schema is created or
    migrated on first use (as a server opening the store would), then the
    registry keeps one connection of its own, dropped after a connection
    failure and made again at the next call.

    Every change is one transaction that also bumps the registry's
    revision, so a L{sensornet.identity.cache.CredentialCache} polling
    L{revision} sees it.

    @raise StoreUnavailable: From any method but L{close}, when the
        database cannot be reached.
    """

    def __init__(self, storeURL: str, clock: Callable[[], float] = time.time) -> None:
        """
        @raise ValueError: C{storeURL} is not a store URL.
        """
        parsed = parseStoreURL(storeURL)
        self.storeURL = storeURL
        self._clock = clock
        self._migrated = False
        self._backend: _Backend
        if parsed.backend == "sqlite":
            self._backend = _SQLite(parsed.target)
        else:
            self._backend = _PostgreSQL(parsed.target)

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Callable[..., List[Tuple[Any, ...]]]]:
        if not self._migrated:
            from ..store import openStore

            openStore(self.storeURL).close()
            self._migrated = True
        with self._backend.transaction(write) as execute:
            yield execute

    def close(self) -> None:
        """
        Drop the connection. Never raises; the registry may be used again.
        """
        self._backend.close()

    # -- changes ------------------------------------------------------------

    def add(self, name: str, role: str = "sensor", grants: Iterable[str] = (), token: Optional[str] = None) -> str:
        """
        Add a credential and return its token (the only time it is known:
        only its hash is stored). For role C{sensor}, the sensor's row in
        the sensor dictionary is created if absent, so the credential and
        the sensor's readings share one id.

        @param grants: For a C{gateway} (at least one): exact sensor names
            and C{prefix*} patterns. Refused for the other roles.
        @param token: A token generated elsewhere to import (checked by
            L{sensornet.identity.tokens.checkImportedToken}), or L{None} to
            make a new one.
        @raise DuplicateCredential: The name is taken (revoked too).
        @raise RegistryError: A bad name, role, grant or token.
        """
        checkName(name)
        if role not in ROLES:
            raise RegistryError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        grantList = [checkGrant(g) for g in grants]
        if role == "gateway" and not grantList:
            raise RegistryError("a gateway needs at least one grant (a sensor name or a prefix ending in '*')")
        if role != "gateway" and grantList:
            raise RegistryError(f"only a gateway takes grants, not a {role}")
        token = self._tokenFor(token)
        digest = tokenHash(token)
        now = _micro(self._clock())
        try:
            with self._transaction(write=True) as execute:
                if execute("SELECT 1 FROM credentials WHERE name = ?", (name,)):
                    raise DuplicateCredential(f"a credential named {name!r} exists already")
                sensor = None
                if role == "sensor":
                    execute(
                        "INSERT INTO sensors (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                        (name, now),
                    )
                    sensor = execute("SELECT id FROM sensors WHERE name = ?", (name,))[0][0]
                execute(
                    "INSERT INTO credentials (name, role, sensor, grants, token_hash, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (name, role, sensor, ",".join(grantList), digest, now),
                )
                execute(_BUMP)
        except (StoreUnavailable, RegistryError):
            raise
        except Exception as e:
            self._uniqueViolation(e, name)
            raise
        return token

    def rotate(self, name: str, token: Optional[str] = None) -> str:
        """
        Give credential C{name} a new token and return it; the old token is
        refused from then on. A revoked credential is reinstated with the
        new token (its revoked token stays dead).

        @param token: A token to import instead of making one.
        @raise UnknownCredential: No credential has that name.
        """
        token = self._tokenFor(token)
        digest = tokenHash(token)
        now = _micro(self._clock())
        try:
            with self._transaction(write=True) as execute:
                if not execute("SELECT 1 FROM credentials WHERE name = ?", (name,)):
                    raise UnknownCredential(f"no credential named {name!r}")
                execute(
                    "UPDATE credentials SET token_hash = ?, rotated_at = ?, revoked_at = NULL WHERE name = ?",
                    (digest, now, name),
                )
                execute(_BUMP)
        except (StoreUnavailable, RegistryError):
            raise
        except Exception as e:
            self._uniqueViolation(e, name)
            raise
        return token

    def revoke(self, name: str) -> bool:
        """
        Revoke credential C{name}: its token is refused from then on (by
        each server once its cache has seen the change).

        @return: C{True} if this call revoked it, C{False} if it was revoked
            already (nothing changes then).
        @raise UnknownCredential: No credential has that name.
        """
        with self._transaction(write=True) as execute:
            rows = execute("SELECT revoked_at FROM credentials WHERE name = ?", (name,))
            if not rows:
                raise UnknownCredential(f"no credential named {name!r}")
            if rows[0][0] is not None:
                return False
            execute("UPDATE credentials SET revoked_at = ? WHERE name = ?", (_micro(self._clock()), name))
            execute(_BUMP)
        return True

    # -- reading --------------------------------------------------------------

    def list(self) -> List[Credential]:
        """
        Every credential, revoked ones included, ordered by name (code
        points). No token or hash.
        """
        with self._transaction(write=False) as execute:
            rows = execute(f"SELECT {_COLUMNS} FROM credentials")
        # Sorted here, by code point: the same order on both backends
        # whatever PostgreSQL's collation.
        rows.sort(key=lambda row: row[1])
        return [
            Credential(
                int(id_), name, role, None if sensor is None else int(sensor), _grants(grants),
                _seconds(created) or 0.0, _seconds(rotated), _seconds(revoked),
            )
            for id_, name, role, sensor, grants, created, rotated, revoked in rows
        ]

    def revision(self) -> int:
        """
        The registry's revision: it grows with every change (add, rotate,
        revoke), never otherwise. One cheap query: what caches poll.
        """
        with self._transaction(write=False) as execute:
            return int(execute("SELECT revision FROM credentials_revision WHERE id = 1")[0][0])

    def snapshot(self) -> Tuple[int, Dict[bytes, Principal]]:
        """
        The revision and every valid (not revoked) credential, by token
        hash, as of one moment (one statement, so one snapshot on either
        backend).
        """
        with self._transaction(write=False) as execute:
            rows = execute(
                "SELECT r.revision, c.token_hash, c.name, c.role, c.grants FROM credentials_revision r "
                "LEFT JOIN credentials c ON c.revoked_at IS NULL WHERE r.id = 1"
            )
        revision = int(rows[0][0])
        principals = {
            bytes(digest): Principal(name, role, _grants(grants))
            for _, digest, name, role, grants in rows
            if digest is not None
        }
        return revision, principals

    # -- helpers ------------------------------------------------------------

    @staticmethod
    def _tokenFor(token: Optional[str]) -> str:
        if token is None:
            return newToken()
        try:
            checkImportedToken(token)
        except ValueError as e:
            raise RegistryError(str(e)) from None
        return token

    def _uniqueViolation(self, error: BaseException, name: str) -> None:
        """
        Turn a unique violation a concurrent change caused into the registry
        error it means; return for any other error (the caller re-raises).
        """
        if self._backend.isUniqueViolation(error, "name"):
            raise DuplicateCredential(f"a credential named {name!r} exists already") from None
        if self._backend.isUniqueViolation(error, "token_hash"):
            raise RegistryError("that token is in use by another credential: use a fresh one") from None

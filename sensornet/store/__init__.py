"""
Where readings are kept: one L{Store} interface, two backends (SQLite, the
default, and PostgreSQL), chosen by a store URL.

Stores are blocking objects for one thread at a time; the asynchronous,
reactor-facing side is L{sensornet.writer.BatchWriter} (writes) and
L{sensornet.store.queries.StoreQueries} (reads). See C{docs/storage.md}.
"""

from __future__ import annotations

from .base import (
    DEFAULT_STORE,
    Store,
    StoreError,
    StoreRejected,
    StoreUnavailable,
    StoreURL,
    WriteResult,
    parseStoreURL,
)

__all__ = [
    "DEFAULT_STORE",
    "Store",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
    "StoreURL",
    "WriteResult",
    "parseStoreURL",
    "storeFromURL",
    "openStore",
    "redactURL",
]


def redactURL(url: str) -> str:
    """
    C{url} fit for a log line: its password, if any, replaced by C{***}.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user, colon, _password = credentials.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def storeFromURL(url: str) -> Store:
    """
    A store for C{url}, not yet connected (call its C{open}).

    @raise ValueError: C{url} is not a store URL (see L{parseStoreURL}).
    """
    parsed = parseStoreURL(url)
    if parsed.backend == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(parsed.target, synchronous=parsed.options["synchronous"], url=url)
    from .postgresql import PostgreSQLStore

    return PostgreSQLStore(parsed.target)


def openStore(url: str) -> Store:
    """
    A store for C{url}, connected and with its schema created or migrated
    (calling C{open} on it again does nothing).

    @raise ValueError: C{url} is not a store URL.
    @raise StoreUnavailable: The database cannot be reached or migrated.
    """
    store = storeFromURL(url)
    store.open()
    return store

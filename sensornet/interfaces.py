"""
The seams between sensornet's parts, as zope Interfaces.

Each part depends on the interface of its neighbour, never on its class, so
a test (or an embedder) can put anything that provides the interface in its
place; tests check every implementation with
L{zope.interface.verify.verifyObject}.

Who provides what:

  - L{IReadingSink}: L{sensornet.writer.BatchWriter} (stores, then fires)
    and L{sensornet.protocol.ImmediateSink} (C{--store none}).
  - L{IPressureObserver}: L{sensornet.protocol.SensorServerFactory}, told
    by the writer when to stop and resume reading from sockets.
  - L{IBlockingRunner}: L{sensornet.store.threads.WorkerThreads}; tests
    give the writer a runner whose Deferreds they fire by hand.
  - L{IStore}: L{sensornet.store.sqlite.SQLiteStore},
    L{sensornet.store.postgresql.PostgreSQLStore}.
  - L{ICheckpointedStore}: L{sensornet.store.sqlite.SQLiteStore}, whose
    write-ahead log a checkpointer keeps bounded; the server's metrics
    report on it.
  - L{IStoreQueries}: L{sensornet.store.queries.StoreQueries}, the read side
    the HTTP API uses; L{IRollupQueries} extends it with rollups (the same
    class provides both; a stand-in may provide only the first).
  - L{IChunkObserver}: L{sensornet.accounting.ChunkAccounting}, told once per
    chunk what a sensor connection received and answered.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = [
    "IReadingSink",
    "IPressureObserver",
    "IBlockingRunner",
    "IStore",
    "ICheckpointedStore",
    "IStoreQueries",
    "IRollupQueries",
    "IChunkObserver",
]


class IReadingSink(Interface):
    """
    Where a server puts the readings it parsed.
    """

    def submit(readings):  # type: ignore[no-untyped-def]
        """
        Take C{readings} (a list of L{sensornet.reading.Reading}), in order.
        The caller must not change the list afterwards. Never raises.

        @return: A L{Deferred} firing, once every reading is durably stored
            (or was already stored), with C{{index: reason}} for the readings
            refused for good (usually empty); or failing with
            L{sensornet.store.StoreUnavailable} when none of them could be
            stored this time (the sender should resend).
        """


class IPressureObserver(Interface):
    """
    Told, on the reactor thread, when a store writer's backlog crosses its
    marks.
    """

    def writerOverloaded():  # type: ignore[no-untyped-def]
        """
        The backlog passed the high-water mark: stop taking more readings.
        """

    def writerRecovered():  # type: ignore[no-untyped-def]
        """
        The backlog fell below the low-water mark: take readings again.
        """


class IBlockingRunner(Interface):
    """
    Runs blocking calls away from the reactor thread and reports back on it.
    """

    def start():  # type: ignore[no-untyped-def]
        """
        Get ready to run calls.
        """

    def run(function, *args, **kwargs):  # type: ignore[no-untyped-def]
        """
        Call C{function(*args, **kwargs)} off the reactor thread, after the
        calls given before it (one runner thread: in order).

        @return: A L{Deferred} firing on the reactor thread with the result,
            or failing with what it raised.
        """

    def stop():  # type: ignore[no-untyped-def]
        """
        Finish the calls already given, then stop. A call given after this
        never runs (its Deferred never fires): whoever still needs one (a
        close of a store opened by a call given up on) must give it before
        stopping the runner.

        @return: A L{Deferred} firing once stopped; it may never fire if a
            call never returns.
        """


class IStore(Interface):
    """
    A database holding readings: what both backends promise.

    A store is a plain blocking object holding at most one database
    connection, used by one thread at a time; it never touches the reactor.
    Every method but C{close} raises L{sensornet.store.StoreUnavailable}
    when the database cannot be reached; the caller then closes it and opens
    it again.
    """

    url = Attribute("The URL this store was made from (for logs: may hold a password).")

    def open():  # type: ignore[no-untyped-def]
        """
        Connect, then create or migrate the schema to the newest version.
        Does nothing if already open.
        """

    def close():  # type: ignore[no-untyped-def]
        """
        Drop the connection, rolling back anything uncommitted. Never raises.
        """

    def write(readings):  # type: ignore[no-untyped-def]
        """
        Store C{readings} in one transaction, dropping duplicates of
        (C{sensor}, C{seq}).

        @return: A L{sensornet.store.WriteResult}.
        @raise sensornet.store.StoreRejected: Some reading is refused for
            good; nothing of this call is committed.
        @raise sensornet.store.StoreUnavailable: A transient failure;
            nothing of this call is committed.
        """

    def sensors():  # type: ignore[no-untyped-def]
        """
        One dict per (sensor, kind) stored; see L{sensornet.store.base.Store.sensors}.
        """

    def readings(sensor=None, kind=None, since=None, until=None, limit=1000, after=None):  # type: ignore[no-untyped-def]
        """
        One page of readings in (C{ts}, C{id}) order; see
        L{sensornet.store.base.Store.readings}.
        """

    def ping():  # type: ignore[no-untyped-def]
        """
        Whether the database answers now. Never raises.
        """

    def schemaVersion():  # type: ignore[no-untyped-def]
        """
        The schema version of the open database.
        """


class ICheckpointedStore(IStore):
    """
    A store with a write-ahead log that a checkpointer copies back into the
    database in the background (SQLite in WAL mode): how that is going, for
    C{/metrics}. Both may be read from any thread.
    """

    checkpointFailures = Attribute(
        "How many checkpoint rounds of this store object have failed so far; never decreases."
    )

    def walBytes():  # type: ignore[no-untyped-def]
        """
        The size of the write-ahead log on disk now, in bytes.
        """


class IStoreQueries(Interface):
    """
    The asynchronous read side the HTTP API uses. Every method returns a
    L{Deferred} and runs its query off the reactor thread.
    """

    def sensors():  # type: ignore[no-untyped-def]
        """
        Every (sensor, kind) stored, as dicts (see
        L{sensornet.store.queries.StoreQueries.sensors}); fails with
        L{sensornet.store.StoreUnavailable} when the store cannot be read.
        """

    def readings(sensor=None, kind=None, since=None, until=None, limit=1000, cursor=None):  # type: ignore[no-untyped-def]
        """
        One page of readings, C{{"readings": [...], "next": cursor or
        None}}; fails with L{ValueError} for a bad argument or cursor and
        with L{sensornet.store.StoreUnavailable} when the store cannot be
        read.
        """

    def ping():  # type: ignore[no-untyped-def]
        """
        Whether the store answers now; never fails.
        """


class IRollupQueries(IStoreQueries):
    """
    The read side with rollups too: what C{GET /api/readings?step=...}
    needs. A separate interface, so that a query side written against
    L{IStoreQueries} alone still serves every other request.
    """

    def rollups(sensor, kind, since, until, step, encode=None):  # type: ignore[no-untyped-def]
        """
        One sensor's readings folded into buckets of C{step} (C{"1m"} or
        C{"1h"}) overlapping [C{since}, C{until}) (seconds since the epoch),
        of one kind or every kind (C{kind} L{None}): dicts with keys
        C{sensor}, C{kind}, C{ts}, C{count}, C{min}, C{max}, C{mean},
        C{last} ordered by (C{ts}, C{kind}) (see
        L{sensornet.store.queries.StoreQueries.rollups}); with C{encode},
        what C{encode(buckets)} returns, called off the reactor thread.
        Fails with
        L{ValueError} for a bad argument (an unknown step, a range of more
        than L{sensornet.store.queries.MAX_BUCKETS} buckets) and with
        L{sensornet.store.StoreUnavailable} when the store cannot be read.
        """


class IChunkObserver(Interface):
    """
    Per-chunk accounting of sensor connections (metrics and the reading
    log): told once per chunk, never once per line, so its cost per reading
    stays small. Its methods never raise.
    """

    logReadings = Attribute(
        "Whether each reading received is logged (the seed's log.txt); refused lines are logged regardless."
    )

    def chunkParsed(peer, received, lines, readings, rejected):  # type: ignore[no-untyped-def]
        """
        One chunk of complete lines from the connection at C{peer} (text
        such as C{"10.0.2.135:54812"}) was parsed.

        @param received: When the chunk arrived, in seconds since the epoch
            by the server's clock.
        @param lines: Every complete line of the chunk (bytes without the
            delimiter; a C{\\r} before it is still there), in order.
        @param readings: The readings taken from them, in line order.
        @param rejected: C{(index, error)} for each line refused, in line
            order: C{lines[index]} and its L{sensornet.reading.LineError}.
            A line neither refused nor a reading is blank.
        """

    def chunksAnswered(latencies):  # type: ignore[no-untyped-def]
        """
        Replies holding readings went out; C{latencies} holds, per chunk
        answered, the seconds from its arrival to its reply.
        """

    def lineTooLong(peer, limit):  # type: ignore[no-untyped-def]
        """
        The connection at C{peer} sent a line longer than C{limit} bytes
        (not counting its terminator) and is being closed.
        """

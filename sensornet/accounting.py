"""
Per-chunk accounting of sensor connections: the metrics and the reading log
of what each chunk brought and how fast it was answered.

A L{sensornet.protocol.SensorProtocol} tells its L{ChunkAccounting} (an
L{IChunkObserver}) once per chunk, never once per line: metrics are updated
once per chunk and dialect, and the reading log costs one small prebuilt
event per reading (see L{sensornet.readinglog}). The protocol keeps the
wire, the factory the state connections share.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, cast

from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from zope.interface import implementer

from .interfaces import IChunkObserver
from .metrics import ServerMetrics
from .reading import DIALECTS, LineError, Reading
from .readinglog import ReadingLog, RejectedLogLimit, escapeText
from .runs import ChunkReadings

__all__ = ["ChunkAccounting"]


@implementer(IChunkObserver)
class ChunkAccounting:
    """
    Counts readings and refused lines by dialect, observes acknowledgement
    latency, and writes the reading log.

    @ivar logReadings: Log each reading received (C{Received from PEER:
        LINE}, the seed's C{log.txt}); refused lines and oversized lines are
        logged whatever this says.
    @cvar maxRejectedLogged: How many refused lines of one chunk are logged
        one by one; the rest of them are counted in one more log line.
    @ivar readingLog: The L{ReadingLog} the lines are logged with.
    @ivar rejectedLogLimit: The server-wide limit on refused lines logged
        per second (a L{RejectedLogLimit}), or L{None}: no limit but the
        per-chunk one.
    """

    maxRejectedLogged = 10

    def __init__(
        self,
        metrics: ServerMetrics,
        logReadings: bool = True,
        observer: ILogObserver = globalLogPublisher,
        clock: Optional[IReactorTime] = None,
        maxRejectedLogPerSecond: Optional[int] = None,
    ) -> None:
        """
        @param metrics: The server's metrics, updated here.
        @param observer: Where log events go; what twistd writes to its log
            file by default.
        @param clock: Times the summary of refused lines not logged over
            C{maxRejectedLogPerSecond}; required with it.
        @param maxRejectedLogPerSecond: At most this many refused lines
            (C{>= 1}) are logged one by one per second, across all
            connections; L{None} or C{0}: no such limit.
        """
        self.metrics = metrics
        self.logReadings = logReadings
        self._log = Logger(namespace=__name__, observer=observer)
        self.readingLog = ReadingLog(self._log)
        self.rejectedLogLimit: Optional[RejectedLogLimit] = None
        if maxRejectedLogPerSecond:
            if clock is None:
                raise ValueError("maxRejectedLogPerSecond needs a clock")
            self.rejectedLogLimit = RejectedLogLimit(self.readingLog, clock, maxRejectedLogPerSecond)
        self._unlogged = metrics.rejectedLinesUnlogged
        # A reading always has one of DIALECTS; a refused line may be of
        # none ("unknown").
        self._received = {dialect: metrics.readingsReceived.labels(dialect) for dialect in DIALECTS}
        self._rejected = {
            dialect: metrics.linesRejected.labels(dialect) for dialect in DIALECTS + ("unknown",)
        }
        self._ackLatency = metrics.ackLatency

    def chunkParsed(
        self,
        peer: str,
        received: float,
        lines: Sequence[bytes],
        readings: Sequence[Reading],
        rejected: Sequence[Tuple[int, LineError]],
    ) -> None:
        """
        See L{IChunkObserver.chunkParsed}.
        """
        if readings:
            if len(readings) == 1:
                self._received[readings[0].dialect].inc()
            elif type(readings) is ChunkReadings:
                # Parsed in one pass: native lines only.
                self._received["native"].inc(len(readings))
            else:
                counts: Dict[str, int] = {}
                for reading in readings:
                    counts[reading.dialect] = counts.get(reading.dialect, 0) + 1
                for dialect, count in counts.items():
                    self._received[dialect].inc(count)
        log = self.readingLog
        logReadings = self.logReadings and readings
        if not rejected:
            if logReadings:
                # A line not refused is a reading, or blank (what every
                # dialect takes for blank: nothing but ASCII whitespace).
                log.received(peer, received, lines if len(readings) == len(lines) else _nonBlank(lines))
            return
        unknown = self._rejected["unknown"]
        for _, error in rejected:
            self._rejected.get(error.dialect, unknown).inc()
        # The rare chunk with refused lines: logged in line order, at most
        # maxRejectedLogged of them, and fewer if the server-wide limit
        # says so.
        perChunk = min(len(rejected), self.maxRejectedLogged)
        rateLimit = self.rejectedLogLimit
        allowed = perChunk if rateLimit is None else rateLimit.take(received, perChunk)
        start = 0
        for logged, (index, error) in enumerate(rejected):
            if logReadings and index > start:
                log.received(peer, received, _nonBlank(lines[start:index]))
            start = index + 1
            if logged < allowed:
                log.rejected(peer, received, lines[index], error)
        if logReadings:
            log.received(peer, received, _nonBlank(lines[start:]))
        unlogged = len(rejected) - allowed
        if unlogged:
            self._unlogged.inc(unlogged)
            if allowed < perChunk:
                # Over the server-wide limit: one summary a second.
                cast(RejectedLogLimit, rateLimit).suppressed(unlogged)
            else:
                log.rejectedUnlogged(peer, received, unlogged)

    def chunksAnswered(self, latencies: List[float]) -> None:
        """
        See L{IChunkObserver.chunksAnswered}.
        """
        observe = self._ackLatency.observe
        for latency in latencies:
            observe(latency)

    def flush(self) -> None:
        """
        Log now the summary of refused lines not logged, if one is pending,
        and cancel its timer: what the factory does when its last
        connection closes (so a stopped server leaves no timer).
        """
        if self.rejectedLogLimit is not None:
            self.rejectedLogLimit.flush()

    def lineTooLong(self, peer: str, limit: int) -> None:
        """
        See L{IChunkObserver.lineTooLong}.
        """
        self.metrics.linesOversized.inc()
        self._log.warn(
            "Closing connection from {peer}: line longer than {max} bytes", peer=escapeText(peer), max=limit
        )


def _nonBlank(lines: Sequence[bytes]) -> List[bytes]:
    return [line for line in lines if line.strip()]

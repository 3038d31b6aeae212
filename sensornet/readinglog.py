"""
The reading log: what the seed's C{log.txt} held, one timestamped line per
reading received, C{Received from PEER: LINE}, and now also one line per
line refused, C{Rejected from PEER (REASON): LINE}.

Every line is its own log event, so that twistd's stock file observer
(C{twistd --logfile log.txt}) gives each its own timestamp: a log event of
several lines would be written as one timestamped line followed by
tab-indented continuation lines without one. To keep that cheap, the events
are small prebuilt dicts published straight to a log observer, not made by
a L{Logger} call each; they carry the time their chunk arrived as
C{log_time}.

Where the server's log goes through L{sensornet.textlog}'s observer (a
twistd server's does, see L{sensornet.textlog.observerForTwistd}), a chunk's
readings are instead one I{batch} event (L{ReadingLog.batched}), which that
observer writes as the same timestamped lines, one per reading, in one
write: about a tenth of the time per reading. Any other observer sees the
batch as one event rendering all its lines.

Wire text is never logged raw: L{escapeLine} writes every character that is
not printable (control characters C0, DEL and C1, line and paragraph
separators, format characters such as bidi overrides) and every invalid
UTF-8 byte as a Python escape, so one wire line is always one log line and
no sensor can move a terminal's cursor or forge a log line.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel

from .reading import LineError
from .textlog import BATCH_KEY

__all__ = ["escapeText", "escapeLine", "ReadingLog", "RejectedLogLimit"]

def escapeText(text: str) -> str:
    """
    C{text} with every character L{str.isprintable} refuses (all but the
    plain space among them) written as its Python escape; printable text,
    C{°} or C{é} included, is kept as it is.
    """
    if text.isprintable():
        return text
    # repr() escapes exactly what str.isprintable() refuses, as \t, \r,
    # \n, \xNN, \uNNNN or \UNNNNNNNN.
    return "".join([c if c.isprintable() else repr(c)[1:-1] for c in text])


def escapeLine(line: bytes) -> str:
    """
    One wire line, given without its terminator, as log text: decoded from
    UTF-8, each invalid byte written C{\\xNN}, and escaped by L{escapeText}.
    The result holds no control character, so it is one log line.
    """
    return escapeText(line.decode("utf-8", "backslashreplace"))


class ReadingLog:
    """
    Publishes the reading log's events for one L{Logger}: to its observer,
    under its namespace, as if it had made them.

    @ivar logger: Its C{observer} is where the events go: the global log
        publisher in a server (what twistd writes to C{log.txt}), anything
        providing L{ILogObserver} in a test.
    @ivar batched: Whether a chunk's readings are one batch event (under
        L{BATCH_KEY}: C{(prefix, texts)}, written a line per text by
        L{sensornet.textlog.ReadingLogFileObserver}) rather than one event
        each; set it only when that observer writes the log.
    """

    def __init__(self, logger: Logger, batched: bool = False) -> None:
        self.logger = logger
        self.batched = batched

    def _event(self, level: LogLevel, peerText: str, when: float) -> Dict[str, object]:
        # What a Logger call would put in an event, less what differs per
        # line, which the callers add to a copy.
        return {
            "log_logger": self.logger,
            "log_level": level,
            "log_namespace": self.logger.namespace,
            "log_source": None,
            "log_time": when,
            "peer": peerText,
        }

    def received(self, peer: str, when: float, lines: Iterable[bytes]) -> None:
        """
        Log each of C{lines} (readings received from C{peer} at C{when},
        seconds since the epoch) as C{Received from PEER: LINE}, in order:
        one event per line, or one batch event for them all (L{batched}).
        """
        publish = self.logger.observer
        # Escaped too (a UNIX socket's name is anything), once per chunk.
        peerText = escapeText(peer)
        template = self._event(LogLevel.info, peerText, when)
        if self.batched:
            prefix = "Received from " + peerText + ": "
            texts = _linesText(lines if isinstance(lines, list) else list(lines))
            if texts:
                # For any other observer, a format rendering every line.
                template["log_format"] = _literal(prefix + ("\n" + prefix).join(texts))
                template[BATCH_KEY] = (prefix, texts)
                template["lines"] = texts
                publish(template)
            return
        # The text is the format itself (braces doubled): rendering a
        # literal costs a third less than substituting fields into it (10
        # against 15 us per line in twistd's file observer), and the fields
        # are in the event too, for structured observers.
        prefix = "Received from " + _literal(peerText) + ": "
        for line in lines:
            text = _lineText(line)
            event = template.copy()
            event["log_format"] = prefix + _literal(text)
            event["line"] = text
            publish(event)

    def rejected(self, peer: str, when: float, line: bytes, error: LineError) -> None:
        """
        Log one line refused, with its L{LineError}, as a warning:
        C{Rejected from PEER (REASON): LINE}.
        """
        text = escapeLine(line[:-1] if line[-1:] == b"\r" else line)
        reason = escapeText(error.message)
        peerText = escapeText(peer)
        event = self._event(LogLevel.warn, peerText, when)
        event["log_format"] = (
            "Rejected from " + _literal(peerText) + " (" + _literal(reason) + "): " + _literal(text)
        )
        event["line"] = text
        event["reason"] = reason
        self.logger.observer(event)

    def rejectedSuppressed(self, when: float, count: int) -> None:
        """
        Log, as one warning, that C{count} refused lines (from any peer)
        were not logged in the last second, over the server's limit.
        """
        event = self._event(LogLevel.warn, "", when)
        del event["peer"]
        event["log_format"] = "Rejected {count} more line(s) not logged in the last second"
        event["count"] = count
        self.logger.observer(event)

    def rejectedUnlogged(self, peer: str, when: float, count: int) -> None:
        """
        Log, as one warning, that C{count} more lines refused were not
        logged one by one.
        """
        event = self._event(LogLevel.warn, escapeText(peer), when)
        event["log_format"] = "Rejected {count} more line(s) from {peer} in the same chunk, not logged one by one"
        event["count"] = count
        self.logger.observer(event)


class RejectedLogLimit:
    """
    The server-wide limit on C{Rejected from ...} warnings: at most
    C{perSecond} in each second, across all connections; what is over it is
    counted, and one summary warning a second later says how many
    (L{ReadingLog.rejectedSuppressed}). A flood of junk from a few peers
    would otherwise write megabytes of log a second and cost the reactor
    the time to write it.

    A second is a window opened by the first refused line after the last
    one closed, timed by the chunks' arrival times (the factory's clock).
    The summary's timer exists only while something waits to be reported:
    a server whose peers send nothing refused has no timer for this.
    """

    window = 1.0

    def __init__(self, readingLog: ReadingLog, clock: IReactorTime, perSecond: int) -> None:
        """
        @param perSecond: Warnings allowed per second, C{>= 1}.
        """
        self._readingLog = readingLog
        self._clock = clock
        self.perSecond = perSecond
        self._windowStart = -math.inf
        self._logged = 0
        self._suppressed = 0
        self._summary: Optional[IDelayedCall] = None

    def take(self, when: float, wanted: int) -> int:
        """
        How many of C{wanted} warnings about lines received at C{when} may
        be logged now (and are counted as logged).
        """
        if when >= self._windowStart + self.window:
            self._windowStart = when
            self._logged = 0
        allowed = min(wanted, self.perSecond - self._logged)
        if allowed <= 0:
            return 0
        self._logged += allowed
        return allowed

    def suppressed(self, count: int) -> None:
        """
        C{count} warnings were not logged: say so in the summary at the end
        of this window.
        """
        self._suppressed += count
        if self._summary is None:
            delay = max(0.0, self._windowStart + self.window - self._clock.seconds())
            self._summary = self._clock.callLater(delay, self._report)

    def _report(self) -> None:
        self._summary = None
        count, self._suppressed = self._suppressed, 0
        if count:
            self._readingLog.rejectedSuppressed(self._clock.seconds(), count)

    def flush(self) -> None:
        """
        Log the pending summary now, if any, and cancel its timer (the
        server is stopping, or its last connection closed).
        """
        if self._summary is not None:
            if self._summary.active():
                self._summary.cancel()
            self._report()


def _lineText(line: bytes) -> str:
    """
    A received line as log text: without the CR of a CRLF terminator (not
    part of the line), escaped (L{escapeText}) only when it needs to be.
    """
    if line[-1:] == b"\r":
        line = line[:-1]
    text = line.decode("utf-8", "backslashreplace")
    if not text.isprintable():
        text = escapeText(text)
    return text


#: The bytes of a chunk of lines that need no escaping as log text:
#: printable ASCII, and the newlines between the lines.
_PLAIN = bytes(range(0x20, 0x7F)) + b"\n"


def _linesText(lines: List[bytes]) -> List[str]:
    """
    L{_lineText} of each of C{lines}, the whole chunk at once when it is
    printable ASCII (a fleet's chunks are): one check and one decode in C
    instead of a call a line.
    """
    if not lines:
        return []
    joined = b"\n".join(lines)
    if joined.translate(None, _PLAIN):
        return [_lineText(line) for line in lines]
    return joined.decode("ascii").split("\n")


def _literal(text: str) -> str:
    """
    C{text} as a log format that renders as C{text}.
    """
    if "{" in text or "}" in text:
        return text.replace("{", "{{").replace("}", "}}")
    return text

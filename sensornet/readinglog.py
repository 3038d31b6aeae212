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

Wire text is never logged raw: L{escapeLine} writes every character that is
not printable (control characters C0, DEL and C1, line and paragraph
separators, format characters such as bidi overrides) and every invalid
UTF-8 byte as a Python escape, so one wire line is always one log line and
no sensor can move a terminal's cursor or forge a log line.
"""

from __future__ import annotations

from typing import Dict, Iterable

from twisted.logger import Logger, LogLevel

from .reading import LineError

__all__ = ["escapeText", "escapeLine", "ReadingLog"]

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
    """

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

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
        seconds since the epoch) as C{Received from PEER: LINE}, one event
        per line, in order.
        """
        publish = self.logger.observer
        # Escaped too (a UNIX socket's name is anything), once per chunk.
        peerText = escapeText(peer)
        template = self._event(LogLevel.info, peerText, when)
        # The text is the format itself (braces doubled): rendering a
        # literal costs a third less than substituting fields into it (10
        # against 15 us per line in twistd's file observer), and the fields
        # are in the event too, for structured observers.
        prefix = "Received from " + _literal(peerText) + ": "
        for line in lines:
            # The CR of a CRLF terminator is not part of the line.
            if line[-1:] == b"\r":
                line = line[:-1]
            text = line.decode("utf-8", "backslashreplace")
            if not text.isprintable():
                text = escapeText(text)
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

    def rejectedUnlogged(self, peer: str, when: float, count: int) -> None:
        """
        Log, as one warning, that C{count} more lines refused were not
        logged one by one.
        """
        event = self._event(LogLevel.warn, escapeText(peer), when)
        event["log_format"] = "Rejected {count} more line(s) from {peer} in the same chunk, not logged one by one"
        event["count"] = count
        self.logger.observer(event)


def _literal(text: str) -> str:
    """
    C{text} as a log format that renders as C{text}.
    """
    if "{" in text or "}" in text:
        return text.replace("{", "{{").replace("}", "}}")
    return text

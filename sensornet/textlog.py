"""
The text log file observer a twistd server writes through: twistd's own
format, byte for byte, and the reading log written a chunk at a time.

twistd's stock observer (C{twistd --logfile log.txt}) formats and writes
every event on its own: for the reading log, one event per reading, that is
about 27 us of the reactor's time per reading (measured with py-spy, issue
9's W2: 19,000 sensors at 2 s with the log on, 44-46 % of the server's CPU),
most of it converting the same second to local time again and again.

L{ReadingLogFileObserver} writes every other event exactly as twistd's
observer does (L{formatEventAsClassicLogText} with twistd's time format),
and a reading-log I{batch} event, one per chunk (see
L{sensornet.readinglog.ReadingLog}), as the same lines twistd would have
written for one event per reading: each line with its own timestamp and
system, in the order received, in one write. The timestamp of a second is
formatted once.

L{observerForTwistd} builds it for what twistd's options ask (a file with
twistd's rotation, or standard output), and declines when they ask for
something else (syslog, C{--logger}): then twistd's own observer is used and
the reading log stays one event per reading.
"""

from __future__ import annotations

import signal
import sys
from typing import IO, Any, Callable, List, Mapping, Optional, Tuple

from twisted.logger import ILogObserver, LogEvent, formatEventAsClassicLogText, formatTime, timeFormatRFC3339
from twisted.python.compat import ioType
from twisted.python.logfile import LogFile
from zope.interface import implementer

__all__ = ["BATCH_KEY", "ReadingLogFileObserver", "observerForTwistd", "OffersLogObserver"]

#: The key of a reading-log batch event: a tuple C{(prefix, texts)}, each
#: line of the log being C{prefix + text}; C{texts} are escaped (one log line
#: each, see L{sensornet.readinglog.escapeText}).
BATCH_KEY = "sensornet_batch"


@implementer(ILogObserver)
class ReadingLogFileObserver:
    """
    Writes events to a text file as twistd's file observer does, and
    expands each reading-log batch event into one timestamped line per
    reading.

    @ivar outFile: Where the text goes: a file-like object with C{write}
        and C{flush}, taking text, or else UTF-8 bytes (a L{LogFile} is
        binary), as twistd's observer decides.
    """

    def __init__(self, outFile: IO[Any], timeFormat: Optional[str] = timeFormatRFC3339) -> None:
        self.outFile = outFile
        self._encoding: Optional[str] = None if ioType(outFile) is str else "utf-8"
        self._timeFormat = timeFormat
        self._stampSecond: Optional[int] = None
        self._stamp = ""

    def formatTime(self, when: Optional[float]) -> str:
        """
        C{when} as twistd's observer writes it (in local time, with its
        offset); a timestamp of the same second as the one before is not
        formatted again.
        """
        if when is None or self._timeFormat is None:
            return formatTime(when, self._timeFormat)
        second = int(when // 1)
        if when - second >= 0.999999:
            # Formatting rounds to the microsecond: this moment may be
            # written as the next second. Rare; not cached.
            return formatTime(when, self._timeFormat)
        if second != self._stampSecond:
            # The format has no fraction of a second: every moment of a
            # second formats alike (the offset included, which changes on
            # a second boundary).
            self._stamp = formatTime(when, self._timeFormat)
            self._stampSecond = second
        return self._stamp

    def __call__(self, event: LogEvent) -> None:
        batch: Optional[Tuple[str, List[str]]] = event.get(BATCH_KEY)
        if batch is None:
            text = formatEventAsClassicLogText(event, formatTime=self.formatTime)
        else:
            text = self._batchText(event, batch)
        if text:
            self.outFile.write(text if self._encoding is None else text.encode(self._encoding))
            self.outFile.flush()

    def _batchText(self, event: LogEvent, batch: Tuple[str, List[str]]) -> str:
        """
        The lines twistd's observer would have written for one event per
        text of C{batch} (format C{prefix + text}) carrying C{event}'s time,
        namespace and level.
        """
        prefix, texts = batch
        if not texts:
            return ""
        level = event.get("log_level")
        system = event.get("log_system")
        if system is None:
            system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
        head = f"{self.formatTime(event.get('log_time'))} [{system}] {prefix}"
        return head + ("\n" + head).join(texts) + "\n"


def observerForTwistd(
    options: Mapping[str, Any],
    installSignal: Callable[[int, Any], Any] = signal.signal,
    getSignal: Callable[[int], Any] = signal.getsignal,
) -> Optional[ReadingLogFileObserver]:
    """
    The observer twistd would make from its C{options} (its own command
    line: C{logfile}, C{nodaemon}, C{syslog}, C{logger}), as a
    L{ReadingLogFileObserver}; L{None} when they ask for an observer this
    module does not make (C{--syslog}, C{--logger}), or for something twistd
    refuses (a daemon logging to standard output), so that twistd does what
    it does.

    Like twistd: standard output for C{--logfile -} or C{--nodaemon} without
    a log file; otherwise the file (C{twistd.log} by default), rotated as
    twistd rotates it (L{LogFile}'s defaults) and on C{SIGUSR1} unless that
    signal already has a handler.
    """
    if options.get("syslog") or options.get("logger"):
        return None
    name = options.get("logfile") or ""
    nodaemon = bool(options.get("nodaemon"))
    if name == "-":
        if not nodaemon:
            return None
        return ReadingLogFileObserver(sys.stdout)
    if nodaemon and not name:
        return ReadingLogFileObserver(sys.stdout)
    logFile = LogFile.fromFullPath(name or "twistd.log")
    if not getSignal(signal.SIGUSR1):

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(logFile.rotate)  # type: ignore[attr-defined]

        installSignal(signal.SIGUSR1, rotate)
    return ReadingLogFileObserver(logFile)


class OffersLogObserver:
    """
    A mixin for a service that offers twistd a log observer: attached to a
    parent that keeps components (twistd's application), it sets
    C{logObserver} as that parent's L{ILogObserver}, which twistd then
    logs to instead of making its own, unless the parent has one already
    (a C{.tac} file's choice), and says so with L{logObserverTaken}.

    @ivar logObserver: The observer to offer, or L{None} (nothing offered:
        twistd makes its own).
    """

    logObserver: Optional[ILogObserver] = None

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)  # type: ignore[misc]
        offered = self.logObserver
        if offered is None:
            return
        getComponent = getattr(parent, "getComponent", None)
        if getComponent is None or getComponent(ILogObserver, None) is not None:
            return
        parent.setComponent(ILogObserver, offered)
        self.logObserverTaken(offered)

    def logObserverTaken(self, observer: ILogObserver) -> None:
        """
        C{observer} will receive the process's log events: override to
        adapt what is logged to it.
        """

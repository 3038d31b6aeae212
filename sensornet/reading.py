"""
The two values every part of sensornet passes around: a parsed L{Reading} and
a L{LineError} for a line that could not be parsed.

Both are plain slotted classes rather than dataclasses because the hot path
builds hundreds of thousands of them per second: slots keep them small (about
100 bytes each) and cheap to create.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["Reading", "LineError", "DIALECTS", "EMPTY_LINE", "NS_PER_SECOND"]

#: The line dialects a server understands, by the name used in logs, metrics
#: and the C{dialect} attribute of a L{Reading}.
DIALECTS = ("seed", "native", "graphite")

#: Nanoseconds in a second: a line's time in nanoseconds divided (int by
#: int) by this is its L{Reading}'s C{ts}. The parser, the runs that stand
#: in for readings and the store's runs rows all convert with it.
NS_PER_SECOND = 1_000_000_000


class Reading:
    """
    One measurement from one sensor.

    @ivar sensor: The sensor's name (non-empty, at most 128 characters, no
        control characters).
    @ivar kind: What is measured, lower case (C{"temperature"},
        C{"humidity"}, ...).
    @ivar value: The measured value, always a finite float.
    @ivar unit: The unit (C{"C"} for degrees Celsius, C{"%"} for relative
        humidity); C{""} when the sender gave none and none is implied.
    @ivar ts: The reading's own time in seconds since the epoch (UTC), or
        L{None} when the sender gave none; the server then uses
        C{received_at}.
    @ivar seq: The sender's sequence number (0 <= seq < 2**63), or L{None}.
        (C{sensor}, C{seq}) identifies a reading: the store keeps one row per
        pair, which is what makes resending safe.
    @ivar dialect: Which dialect the line was written in, one of
        L{DIALECTS}.
    @ivar peer: The sending connection's address as text (C{"10.0.2.135:54812"}),
        set by the server; C{""} until then.
    @ivar received_at: When the server received it, seconds since the epoch;
        set by the server, C{0.0} until then.
    """

    __slots__ = ("sensor", "kind", "value", "unit", "ts", "seq", "dialect", "peer", "received_at")

    def __init__(
        self,
        sensor: str,
        kind: str,
        value: float,
        unit: str = "",
        ts: Optional[float] = None,
        seq: Optional[int] = None,
        dialect: str = "native",
        peer: str = "",
        received_at: float = 0.0,
    ) -> None:
        self.sensor = sensor
        self.kind = kind
        self.value = value
        self.unit = unit
        self.ts = ts
        self.seq = seq
        self.dialect = dialect
        self.peer = peer
        self.received_at = received_at

    def _key(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reading):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Reading({fields})"


class LineError:
    """
    Why one line could not be turned into a reading.

    @ivar message: A short English sentence for the sender, naming what is
        wrong (C{"value is not a number: 'abc'"}); never contains a newline.
    @ivar seq: The line's C{seq} where it could be read despite the error, so
        a native client can tell which reading was refused; else L{None}.
    @ivar dialect: The dialect the line looked like, one of L{DIALECTS}, or
        C{"unknown"}.
    """

    __slots__ = ("message", "seq", "dialect")

    def __init__(self, message: str, seq: Optional[int] = None, dialect: str = "unknown") -> None:
        self.message = message
        self.seq = seq
        self.dialect = dialect

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LineError):
            return NotImplemented
        return (self.message, self.seq, self.dialect) == (other.message, other.seq, other.dialect)

    def __hash__(self) -> int:
        return hash((self.message, self.seq, self.dialect))

    def __repr__(self) -> str:
        return f"LineError({self.message!r}, seq={self.seq!r}, dialect={self.dialect!r})"


#: What a blank line (nothing but ASCII whitespace) parses to: this one
#: object, so that a caller tells a blank line from a malformed one by
#: identity (C{result is EMPTY_LINE}), never by comparing message texts.
#: Shared by every caller: do not change its attributes.
EMPTY_LINE = LineError("empty line")

"""
A chunk's readings as the chunk parser found them: I{runs}, one per head
(sensor, kind and unit) of the chunk, as columns, and each line's seq in
line order; the chunk's L{Reading}s are made only if something asks for
them.

The runs are what lets a store plan a write batch per run instead of per
reading (L{sensornet.store.layout.planRuns}): a relay's chunk of 500 lines
from 20 sensors is 20 runs of 25, built while the parser has each line in
hand, so neither the reactor nor the writer thread makes or walks an object
per reading. Everything else (the live feed and the alert rules, a store
without a run planner, a batch cut for a refused reading) sees an ordinary
sequence of readings, made on first use (making them costs about what the
parser used to spend on them: a third of a microsecond each).

Nothing here is required: a list without runs (a chunk parsed line by line,
a test's list) is planned reading by reading, as before.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import repeat
from operator import itemgetter, sub
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union, overload

from .reading import NS_PER_SECOND, Reading

__all__ = ["Run", "ChunkReadings", "BatchReadings"]

#: One run: the head's (sensor, kind, unit), then, for each of its readings
#: in line order, its index in the chunk, value, seq and time in integer
#: nanoseconds as the line gave it (its L{Reading}'s C{ts} is that divided
#: by 1_000_000_000; L{None} for none).
Run = Tuple[Tuple[str, str, str], List[int], List[float], List[Optional[int]], List[Optional[int]]]


class _MadeOnDemand(Sequence[Reading]):
    """
    A sequence of L{Reading}s that are made by L{readings} the first time
    anything reads them; equal to any list or such sequence of the same
    readings.
    """

    __slots__ = ()

    def readings(self) -> List[Reading]:
        raise NotImplementedError()

    @overload
    def __getitem__(self, index: int) -> Reading: ...

    @overload
    def __getitem__(self, index: slice) -> List[Reading]: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[Reading, List[Reading]]:
        return self.readings()[index]

    def __iter__(self) -> Iterator[Reading]:
        return iter(self.readings())

    def __eq__(self, other: object) -> bool:
        # As a list of its readings: what tests and callers compare.
        if isinstance(other, (list, _MadeOnDemand)):
            return self.readings() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.readings()!r})"


class ChunkReadings(_MadeOnDemand):
    """
    The readings of one chunk, in line order, as runs; a sequence of
    L{Reading}s, made on first use and kept.

    @ivar runs: The runs, keyed by the head as the lines spelled it, in the
        order of each head's first line. The parser promises that every
        value is finite, every seq is below 2**63, every time within the
        native dialect's range, and every index from 0 to C{len} - 1 in
        exactly one run.
    @ivar seqs: Each reading's seq (or L{None}), in line order: what the
        acknowledgements need, without a reading.
    @ivar peer: The sending connection's address: every reading's C{peer}.
    @ivar receivedAt: Every reading's C{received_at}.
    """

    __slots__ = ("runs", "seqs", "peer", "receivedAt", "_readings")

    def __init__(
        self, runs: Dict[bytes, Run], seqs: List[Optional[int]], peer: str = "", receivedAt: float = 0.0,
    ) -> None:
        self.runs = runs
        self.seqs = seqs
        self.peer = peer
        self.receivedAt = receivedAt
        self._readings: Optional[List[Reading]] = None

    def readings(self) -> List[Reading]:
        """
        The chunk's L{Reading}s, in line order: made on the first call,
        with the C{peer} and C{receivedAt} of that moment, then the same
        list (and objects) every time.
        """
        made = self._readings
        if made is None:
            made = self._readings = self._make()
        return made

    def _make(self) -> List[Reading]:
        out: List[Reading] = [None] * len(self.seqs)  # type: ignore[list-item]
        peer, at = self.peer, self.receivedAt
        for (sensor, kind, unit), positions, values, seqs, times in self.runs.values():
            for index, value, seq, ns in zip(positions, values, seqs, times):
                out[index] = Reading(
                    sensor, kind, value, unit, None if ns is None else ns / NS_PER_SECOND, seq, "native", peer, at,
                )
        return out

    def __len__(self) -> int:
        return len(self.seqs)

    def cut(self, start: int, end: int) -> "ChunkReadings":
        """
        The readings from C{start} up to C{end}, as runs (what a batch takes
        of a chunk that does not fit whole).
        """
        kept = []
        for head, (names, positions, values, seqs, times) in self.runs.items():
            lo = bisect_left(positions, start)
            hi = bisect_left(positions, end)
            if lo < hi:
                kept.append((positions[lo], head, (
                    names, list(map(sub, positions[lo:hi], repeat(start))), values[lo:hi], seqs[lo:hi], times[lo:hi]
                )))
        # In the order of each head's first line in the part, as the parser
        # would have found them.
        kept.sort(key=itemgetter(0))
        part = ChunkReadings({head: run for _, head, run in kept}, self.seqs[start:end], self.peer, self.receivedAt)
        if self._readings is not None:
            # The same objects, as a slice of the list would give.
            part._readings = self._readings[start:end]
        return part


class BatchReadings(_MadeOnDemand):
    """
    The readings of one write batch, with the chunks they came from while
    every one came with its runs; a sequence of L{Reading}s, made on first
    use.

    @ivar parts: (index in the batch of the chunk's first reading, the
        chunk's L{ChunkReadings}), in batch order, covering the whole batch;
        or L{None} when some readings came without runs.
    """

    __slots__ = ("parts", "_size", "_readings")

    def __init__(self) -> None:
        self.parts: Optional[List[Tuple[int, ChunkReadings]]] = []
        self._size = 0
        self._readings: Optional[List[Reading]] = None

    def add(self, source: Sequence[Reading]) -> None:
        """
        Append C{source}'s readings: a L{ChunkReadings} as a part while
        every source so far was one, anything else as readings.
        """
        parts = self.parts
        if parts is not None and type(source) is ChunkReadings:
            parts.append((self._size, source))
        else:
            readings = self.readings()
            self.parts = None
            readings.extend(source)
        self._size += len(source)

    def readings(self) -> List[Reading]:
        """
        The batch's L{Reading}s, in order (its chunks' own objects): made
        on the first call.
        """
        made = self._readings
        if made is None:
            made = self._readings = []
            for _, chunk in self.parts or ():
                made.extend(chunk.readings())
        return made

    def __len__(self) -> int:
        return self._size

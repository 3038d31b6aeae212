"""
A chunk's readings as the chunk parser found them: a list of L{Reading}s in
line order that also carries them grouped into I{runs}, one per head
(sensor, kind and unit) of the chunk, as columns.

The runs are what lets a store plan a write batch per run instead of per
reading (L{sensornet.store.layout.planRuns}): a relay's chunk of 500 lines
from 20 sensors is 20 runs of 25, built while the parser has each line in
hand, so the writer thread never walks the readings one by one. Everything
else (the reading log, the live feed, acknowledgements, any store without
a run planner) sees an ordinary list of readings.

Nothing here is required: a list without runs (a chunk parsed line by line,
a test's list) is planned reading by reading, as before.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import repeat
from operator import itemgetter, sub
from typing import Dict, List, Optional, Sequence, Tuple

from .reading import Reading

__all__ = ["Run", "ChunkReadings", "BatchReadings"]

#: One run: the head's (sensor, kind, unit), then, for each of its readings
#: in line order, its index in the chunk's list, value, seq and time in
#: integer nanoseconds as the line gave it (its L{Reading}'s C{ts} is that
#: divided by 1_000_000_000; L{None} for none).
Run = Tuple[Tuple[str, str, str], List[int], List[float], List[Optional[int]], List[Optional[int]]]


class ChunkReadings(List[Reading]):
    """
    The readings of one chunk, in line order, with their runs.

    @ivar runs: The runs, keyed by the head as the lines spelled it, in the
        order of each head's first line. The parser promises that every
        value is finite, every seq is below 2**63 and every reading of the
        list is in exactly one run.
    @ivar peer: The sending connection's address: every reading's C{peer}.
    @ivar receivedAt: Every reading's C{received_at}.
    """

    __slots__ = ("runs", "peer", "receivedAt")

    def __init__(self, readings: Sequence[Reading] = (), runs: Optional[Dict[bytes, Run]] = None) -> None:
        super().__init__(readings)
        self.runs: Dict[bytes, Run] = {} if runs is None else runs
        self.peer = ""
        self.receivedAt = 0.0

    def cut(self, start: int, end: int) -> "ChunkReadings":
        """
        The readings from C{start} up to C{end}, with their runs (what a
        batch takes of a chunk that does not fit whole).
        """
        part = ChunkReadings(self[start:end])
        part.peer = self.peer
        part.receivedAt = self.receivedAt
        kept = []
        for head, (names, positions, values, seqs, tss) in self.runs.items():
            lo = bisect_left(positions, start)
            hi = bisect_left(positions, end)
            if lo < hi:
                kept.append((positions[lo], head, (
                    names, list(map(sub, positions[lo:hi], repeat(start))), values[lo:hi], seqs[lo:hi], tss[lo:hi]
                )))
        # In the order of each head's first line in the part, as the parser
        # would have found them.
        kept.sort(key=itemgetter(0))
        part.runs.update((head, run) for _, head, run in kept)
        return part


class BatchReadings(List[Reading]):
    """
    The readings of one write batch, with the chunks they came from when
    every one came with its runs.

    @ivar parts: (index in the batch of the chunk's first reading, the
        chunk's L{ChunkReadings}), in batch order, covering the whole batch;
        or L{None} when some readings came without runs.
    """

    __slots__ = ("parts",)

    def __init__(self) -> None:
        super().__init__()
        self.parts: Optional[List[Tuple[int, ChunkReadings]]] = []

"""
The live feed: committed readings, fanned out to whoever listens (the
dashboard's event stream, tests).

Listeners are called on the reactor thread, once per committed batch, with
the batch's list of L{sensornet.reading.Reading}; a listener must not block
and must not keep the list beyond the call unless it copies it.
"""

from __future__ import annotations

from typing import Callable, Sequence

from twisted.logger import Logger

from .reading import Reading

__all__ = ["LiveFeed"]

Listener = Callable[[Sequence[Reading]], None]


class LiveFeed:
    """
    Fans out batches of committed readings to subscribers.

    A subscriber that raises is logged and stays subscribed; it never stops
    the others or the writer.
    """

    _log = Logger()

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """
        Call C{listener(readings)} for every published batch from now on.

        @return: A function that unsubscribes; calling it twice is harmless.
        """
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def publish(self, readings: Sequence[Reading]) -> None:
        """
        Hand C{readings} (already committed) to every subscriber.
        """
        for listener in list(self._listeners):
            try:
                listener(readings)
            except Exception:
                self._log.failure("live feed listener {listener!r} failed", listener=listener)

    def __len__(self) -> int:
        return len(self._listeners)

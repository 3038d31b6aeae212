"""
The baseline the benchmark compares against: a bare Twisted server that
acknowledges every line with one reply line and does nothing else (no
parsing, no storage, no logging). Usage: python baseline_server.py PORT
"""

import sys

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol


class Acker(Protocol):
    """
    Splits each chunk into lines (as LineOnlyReceiver does) and answers each
    with C{ack}, in one write per chunk.
    """

    _buffer = b""

    def dataReceived(self, data):
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        if lines:
            self.transport.write(b"ack\n" * len(lines))


if __name__ == "__main__":
    serverFromString(reactor, f"tcp:{sys.argv[1]}:interface=127.0.0.1").listen(Factory.forProtocol(Acker))
    reactor.run()

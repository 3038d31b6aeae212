"""
The baselines the benchmark compares against: bare Twisted servers that
acknowledge every line and do nothing else (no parsing, no storage, no
logging).

    python baseline_server.py PORT [chunk|line]

- C{chunk}: splits each chunk into lines and answers them all in one write
  (the ceiling for Twisted's I/O on this machine);
- C{line}: a C{LineOnlyReceiver} answering each line with C{sendLine} (the
  textbook Twisted line server).
"""

import sys

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import LineOnlyReceiver


class ChunkAcker(Protocol):
    _buffer = b""

    def dataReceived(self, data):
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        if lines:
            self.transport.write(b"ack\n" * len(lines))


class LineAcker(LineOnlyReceiver):
    delimiter = b"\n"

    def lineReceived(self, line):
        self.sendLine(b"ack")


if __name__ == "__main__":
    protocol = LineAcker if sys.argv[2:] == ["line"] else ChunkAcker
    serverFromString(reactor, f"tcp:{sys.argv[1]}:interface=127.0.0.1").listen(Factory.forProtocol(protocol))
    reactor.run()

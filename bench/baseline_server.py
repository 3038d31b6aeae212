"""
The baselines the benchmark compares against: bare Twisted servers that
acknowledge every line and do nothing else (no parsing, no storage, no
logging).

    python baseline_server.py PORT [chunk|line]

- C{chunk}: splits each chunk into lines and answers them all in one write
  (the ceiling for Twisted's I/O on this machine);
- C{line}: a C{LineOnlyReceiver} answering each line with C{sendLine} (the
  leanest textbook Twisted line server);
- C{linereceiver}: a C{LineReceiver} answering each line with C{sendLine}
  (the bare ack server the issues' targets name).
"""

import sys

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import LineOnlyReceiver, LineReceiver


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


class LineReceiverAcker(LineReceiver):
    delimiter = b"\n"

    def lineReceived(self, line):
        self.sendLine(b"ack")


if __name__ == "__main__":
    protocol = {"line": LineAcker, "linereceiver": LineReceiverAcker}.get(sys.argv[2], ChunkAcker)
    serverFromString(reactor, f"tcp:{sys.argv[1]}:interface=127.0.0.1").listen(Factory.forProtocol(protocol))
    reactor.run()

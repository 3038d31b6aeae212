"""
Write a small reply to a plain TCP connection with one C{send()} when the
connection has nothing buffered, instead of through Twisted's write buffer.

Twisted's C{transport.write} appends the bytes to a per-connection list,
registers the socket for writing (an C{epoll_ctl}), sends from C{doWrite}
on the next turn of the reactor, unregisters it (another C{epoll_ctl}) and
replaces the list with a new one. For a sensor's acknowledgement (a few
dozen bytes every few seconds on each of 20,000 connections) that is two
system calls and a reactor turn more than the send itself, and a new list
per write per connection: lists that live until the connection's next
write, seconds later, so that the youngest generation of the garbage
collector fills with about one per connection (its count of allocations
minus deallocations stays low, since each new list frees the old one) and
each young collection scans them all, 10-30 ms at 19,000 connections.

L{writeNow} sends at once when the transport is a plain TCP connection
(L{twisted.internet.tcp.Server}, not TLS; seen through a plain
L{twisted.protocols.policies.ProtocolWrapper}) with nothing waiting in its buffer
and not closing; what the socket does not take at once (a full socket
buffer, a client that does not read), and everything on any other
transport, goes through C{transport.write} as before, after what was sent,
so the bytes on the wire keep their order. An error from C{send()} (the
peer reset the connection) is left for Twisted to find: the bytes go to
C{transport.write}, whose next send fails the same way and closes the
connection through the usual C{connectionLost}.

It reads attributes Twisted does not document
(C{twisted.internet.abstract.FileDescriptor}'s C{_tempDataLen},
C{dataBuffer}, C{offset}, C{_writeDisconnected}; C{TLS}, set when a
connection starts TLS);
C{tests/test_directwrite.py} checks them on the installed Twisted, so an
upgrade that changes them fails a test instead of reordering bytes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.protocols.policies import ProtocolWrapper

__all__ = ["writeNow"]


def writeNow(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport} after anything it already holds: with
    one C{send()} from here when that is possible and takes it all, else
    (the rest of it) through C{transport.write}. A plain
    L{ProtocolWrapper} (what the server's connection caps put between a
    protocol and its connection) only passes C{write} on, so it is looked
    through.
    """
    if type(transport) is ProtocolWrapper:
        transport = transport.transport
    if (
        type(transport) is tcp.Server
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport.TLS
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # EAGAIN, or the peer is gone: Twisted's path sends it or
            # reports the loss, as for any write.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)

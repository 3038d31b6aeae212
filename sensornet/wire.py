"""
The reply texts of the sensor wire protocol that both ends rely on, named
once (see C{docs/protocol.md}, "Replies").

The server writes them (L{sensornet.protocol}); the client parses them
(L{sensornet.client.parseReply}). A reply's meaning is carried by these
exact texts, so they live here and nowhere else: a typo in either end is
then a C{NameError}, not a client that silently stops resending.
"""

from __future__ import annotations

__all__ = [
    "SEED_REPLY",
    "ACK_PREFIX",
    "ERROR_PREFIX",
    "ERROR_SEQ_PREFIX",
    "NOT_STORED",
    "REJECTED",
    "AUTH_COMMAND",
    "AUTH_OK_PREFIX",
    "AUTH_REFUSED",
    "NOT_AUTHORIZED",
]

#: The seed server's reply to every message, byte for byte (the seed's
#: user-visible text: do not translate).
SEED_REPLY = "Dados recebidos com sucesso.\n".encode("utf-8")

#: A stored (or already stored) native reading with a seq: C{ack <seq>}.
ACK_PREFIX = "ack "

#: Any error reply: C{error: <message>}, or C{error seq=<seq>: <message>}
#: when the line's seq could be read.
ERROR_PREFIX = "error"
ERROR_SEQ_PREFIX = "error seq="

#: The message of an error reply for a reading the store could not keep
#: this time (transient: the sender should send it again), before C{": "}
#: and the reason.
NOT_STORED = "not stored, try again"

#: The message of an error reply for a reading the store refuses for good
#: (the sender should not resend it), before C{": "} and the reason.
REJECTED = "rejected"

#: The first line a connection authenticates with: C{auth TOKEN}.
AUTH_COMMAND = "auth"

#: The reply to an accepted C{auth} line: C{ok auth NAME}.
AUTH_OK_PREFIX = "ok auth "

#: The reply to a refused credential (unknown, revoked, malformed: never
#: which), or to a first line that is not C{auth} where one is needed; the
#: connection is closed after it.
AUTH_REFUSED = "error auth: refused\n".encode("ascii")

#: The message of an error reply for a reading its connection may not
#: write (permanent), before C{" as SENSOR"}.
NOT_AUTHORIZED = "not authorized to write"

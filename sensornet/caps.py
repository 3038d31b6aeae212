"""
Connection caps: how many connections a port keeps open, in all and per
peer address, so that one address cannot take every file descriptor and
lock out the other sensors, the HTTP side or the store (issue 10, item 8).

  - L{CappedFactory} wraps a server factory. Its C{buildProtocol} refuses a
    connection over a cap before the wrapped factory sees it: the refused
    connection gets one short reply (C{error: too many connections} on the
    sensor port, a C{503} on HTTP) and is closed, costing one small
    protocol object and one write. Refusals are counted in
    C{sensornet_connections_refused_total{port,reason}} and logged at most
    once per L{CappedFactory.logInterval} seconds, with their count.
  - L{ConnectionLimits} says what the caps are; L{defaultLimits} derives
    the totals of both ports from the process's open-file limit, keeping a
    reserve for everything else the server opens.

The defaults (see C{docs/architecture.md}, "Connection caps"), for an
open-file soft limit C{L} (which the server first raises to its hard
limit):

  - reserve C{R = min(256, L // 4)} descriptors, never given to a peer: the
    store's files and connections, the log, epoll, the listening sockets
    and the connections being refused at this moment;
  - HTTP: C{max(1, min(512, (L - R) // 8))} in all, 64 per address;
  - sensors: the rest, C{L - R - http}, 256 per address.

With the usual hard limit of 20,000 that is 19,232 sensor connections and
512 HTTP ones. The per-address cap does not apply to C{127.0.0.1} and
C{::1} by default: a relay, load generator or gateway process on the
server's own host is trusted as much as the host.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Union

from twisted.internet.interfaces import IAddress, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

__all__ = [
    "AUTO",
    "DEFAULT_EXEMPT",
    "DEFAULT_HTTP_PER_ADDRESS",
    "DEFAULT_SENSOR_PER_ADDRESS",
    "HTTP_REFUSAL",
    "SENSOR_REFUSAL",
    "CappedFactory",
    "ConnectionLimits",
    "Network",
    "closesAtAccept",
    "defaultLimits",
    "fileLimit",
    "overcommitted",
    "parseNetworks",
    "serverLimits",
]

#: The value of a total cap that is derived from the open-file limit.
AUTO = "auto"

#: Connections one address may hold on the sensor port by default: a site
#: behind one NAT address with more sensors than this needs it raised (or a
#: gateway credential, which relays many sensors over one connection).
DEFAULT_SENSOR_PER_ADDRESS = 256

#: HTTP connections one address may hold by default: a browser keeps about
#: six per origin, so this is a few users behind one NAT address, or a
#: scraper and some dashboards.
DEFAULT_HTTP_PER_ADDRESS = 64

#: Addresses the per-address cap does not apply to by default (this host).
DEFAULT_EXEMPT = "127.0.0.1,::1"

#: What a sensor connection over a cap is told before it is closed.
SENSOR_REFUSAL = b"error: too many connections\n"

#: What an HTTP connection over a cap is told before it is closed (sent at
#: once, without reading the request: if the request has already arrived,
#: the peer may see a reset instead).
HTTP_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 5\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 21\r\n\r\ntoo many connections\n"
)

# The largest reserve and HTTP share derived from the open-file limit.
_MAX_RESERVE = 256
_MAX_HTTP = 512

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def fileLimit() -> Optional[int]:
    """
    This process's open-file soft limit now, or L{None} where there is none
    to read (not POSIX) or it is unlimited.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover (not POSIX)
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return int(soft)


def defaultLimits(limit: Optional[int]) -> Tuple[Optional[int], Optional[int]]:
    """
    The default total caps C{(sensor, http)} for an open-file limit of
    C{limit} descriptors (see the module docstring); C{(None, None)} (no
    total caps) for no limit.

    @raise ValueError: C{limit} is too small to leave a connection to each
        port after the reserve (under 3).
    """
    if limit is None:
        return None, None
    reserve = min(_MAX_RESERVE, limit // 4)
    usable = limit - reserve
    http = max(1, min(_MAX_HTTP, usable // 8))
    if usable - http < 1:
        raise ValueError(f"an open-file limit of {limit} leaves no room for connections")
    return usable - http, http


def parseNetworks(text: str) -> Tuple[Network, ...]:
    """
    Networks from a comma-separated list of addresses or CIDR blocks
    (C{127.0.0.1,10.0.0.0/8,::1}); C{none} or an empty string for none.

    @raise ValueError: An item is neither.
    """
    if text.strip().lower() in ("", "none"):
        return ()
    networks = []
    for item in text.split(","):
        item = item.strip()
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not an address or CIDR block: {item!r}") from None
    return tuple(networks)


@dataclass(frozen=True)
class ConnectionLimits:
    """
    The caps of one port (or group of listeners sharing a factory).

    @ivar total: Most connections open at once, in all; L{None}: no cap.
    @ivar perAddress: Most connections open at once from one peer host
        address; L{None}: no cap. Peers without a host address (UNIX
        sockets) count only against C{total}.
    @ivar exempt: Networks whose addresses C{perAddress} does not apply to.
    """

    total: Optional[int] = None
    perAddress: Optional[int] = None
    exempt: Tuple[Network, ...] = ()

    def __post_init__(self) -> None:
        for name in ("total", "perAddress"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None, not {value!r}")

    def isExempt(self, host: str) -> bool:
        """
        Whether C{host} (an IP address's text) is in C{exempt}.
        """
        if not self.exempt:
            return False
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        return any(address in network for network in self.exempt)


class _Refused(Protocol):
    """
    A connection over a cap: says so and closes. Everything it receives is
    dropped.
    """

    transport: Any

    def __init__(self, factory: "CappedFactory", reply: bytes) -> None:
        self.capped = factory
        self.reply = reply

    def connectionMade(self) -> None:
        if self.reply:
            self.transport.write(self.reply)
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: object = None) -> None:
        self.capped.refusing -= 1


class CappedFactory(WrappingFactory):
    """
    A server factory that builds connections with C{wrappedFactory} while
    they are under the caps in C{limits}, and refuses the others with
    C{refusal} at once (see the module docstring).

    The connections' protocols see a L{ProtocolWrapper} as their transport;
    it passes every transport call on (and provides what the real
    transport provides).

    @ivar limits: The L{ConnectionLimits} in force; may be replaced at any
        time (the server sets the totals derived from the open-file limit
        when it starts, after raising that limit).
    @ivar port: The C{port} label of this factory's metrics.
    @ivar refusing: Refused connections still open (their reply being
        written).
    @cvar logInterval: Seconds between two log lines about refusals.
    @ivar closeAtAccept: Whether C{buildProtocol} may return L{None} (the
        listening port then closes the socket at once): true only for
        plain TCP and UNIX listeners. A TLS listener wraps this factory and
        cannot take L{None}, so there a refusal past C{maxRefusing} is an
        abort without a reply, holding its descriptor until the next
        reactor iteration.
    @cvar maxRefusing: Refused connections that may be open at once, their
        reply on its way; past this, a refused connection is closed at
        accept, without a reply, holding its descriptor for no time at
        all. Twisted accepts a hundred connections or more in one go, and
        a burst of refusals that each kept its descriptor until its reply
        was written would eat the reserve and run the process out of
        descriptors (EMFILE), the lock-out the caps are there to prevent.
    """

    noisy = False
    logInterval = 10.0
    maxRefusing = 16

    _log = Logger()

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        limits: ConnectionLimits = ConnectionLimits(),
        clock: Optional[IReactorTime] = None,
        metrics: Any = None,
        port: str = "sensor",
        refusal: bytes = SENSOR_REFUSAL,
        openGauge: Any = None,
    ) -> None:
        """
        @param clock: The time source of the log's rate limit; without
            one, only the first refusal is logged.
        @param metrics: The server's L{sensornet.metrics.ServerMetrics}, or
            L{None} to count nothing.
        @param openGauge: A gauge set to the connections open after each
            change, or L{None}.
        """
        super().__init__(wrappedFactory)
        self.limits = limits
        self.clock = clock
        self.port = port
        self.refusal = refusal
        self._openGauge = openGauge
        self.refusing = 0
        self.closeAtAccept = False
        self._perHost: Dict[str, int] = {}
        self._refusedFor: Dict[str, Any] = {}
        if metrics is not None:
            self._refusedFor = {
                reason: metrics.connectionsRefused.labels(port, reason) for reason in ("total", "per_address")
            }
        self._metrics = metrics
        self._unlogged = 0
        self._loggedAt = -float("inf")
        self.exportLimits()

    def exportLimits(self) -> None:
        """
        Export the caps in force to C{sensornet_connection_limit}.
        """
        if self._metrics is None:
            return
        for scope, value in (("total", self.limits.total), ("per_address", self.limits.perAddress)):
            self._metrics.connectionLimit.labels(self.port, scope).set(value if value is not None else -1)

    def __len__(self) -> int:
        """
        How many connections are open now.
        """
        return len(self.protocols)

    def openFrom(self, host: str) -> int:
        """
        How many connections from C{host} are open now.
        """
        return self._perHost.get(host, 0)

    def buildProtocol(self, addr: Optional[IAddress]) -> Optional[Protocol]:  # type: ignore[override]
        """
        A wrapped protocol for C{addr}, or a refusing one if a cap is
        reached; L{None} if the wrapped factory refuses.
        """
        limits = self.limits
        if limits.total is not None and len(self.protocols) >= limits.total:
            return self._refuse("total")
        host = getattr(addr, "host", None)
        if (
            limits.perAddress is not None
            and host is not None
            and self._perHost.get(host, 0) >= limits.perAddress
            and not limits.isExempt(host)
        ):
            return self._refuse("per_address")
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        protocol = self.protocol(self, wrapped)
        protocol.capsHost = host  # type: ignore[attr-defined]
        return protocol

    def registerProtocol(self, protocol: ProtocolWrapper) -> None:
        super().registerProtocol(protocol)
        host = getattr(protocol, "capsHost", None)
        if host is not None:
            self._perHost[host] = self._perHost.get(host, 0) + 1
        if self._openGauge is not None:
            self._openGauge.set(len(self.protocols))

    def unregisterProtocol(self, protocol: ProtocolWrapper) -> None:
        super().unregisterProtocol(protocol)
        host = getattr(protocol, "capsHost", None)
        if host is not None:
            count = self._perHost.get(host, 0) - 1
            if count > 0:
                self._perHost[host] = count
            else:
                self._perHost.pop(host, None)
        if self._openGauge is not None:
            self._openGauge.set(len(self.protocols))

    def _refuse(self, reason: str) -> Optional[Protocol]:
        counter = self._refusedFor.get(reason)
        if counter is not None:
            counter.inc()
        self._unlogged += 1
        now = self.clock.seconds() if self.clock is not None else 0.0
        if now - self._loggedAt >= self.logInterval:
            self._log.warn(
                "Refused {count} {port} connection(s) over a cap (latest: {reason}; caps: {total} in all, "
                "{perAddress} per address)",
                count=self._unlogged, port=self.port, reason=reason,
                total=self.limits.total, perAddress=self.limits.perAddress,
            )
            self._unlogged = 0
            self._loggedAt = now
        self.refusing += 1
        if self.refusing > self.maxRefusing:
            if self.closeAtAccept:
                self.refusing -= 1
                return None
            return _Refused(self, b"")
        return _Refused(self, self.refusal)


def overcommitted(sensor: Optional[int], http: Optional[int], limit: Optional[int]) -> Optional[str]:
    """
    Why caps of C{sensor} and C{http} connections in all (L{None}: no cap)
    can run a process with an open-file limit of C{limit} out of
    descriptors, or L{None} if they cannot: their sum must leave the
    reserve free.
    """
    if limit is None:
        return None
    reserve = min(_MAX_RESERVE, limit // 4)
    if sensor is None or http is None:
        return f"a port without a total cap can use every one of the {limit} descriptors this process may open"
    if sensor + http > limit - reserve:
        return (
            f"{sensor} sensor and {http} HTTP connections leave less than the reserve of {reserve} of the "
            f"{limit} descriptors this process may open"
        )
    return None


def closesAtAccept(descriptions: Iterable[str]) -> bool:
    """
    Whether every one of these endpoint strings listens without a wrapping
    factory (plain TCP or UNIX sockets), so that a L{CappedFactory} may
    close refused connections at accept (its C{closeAtAccept}).
    """
    return all(d.split(":", 1)[0].strip().lower() in ("tcp", "tcp6", "unix") for d in descriptions)


def limitsFor(
    total: Union[int, str, None],
    perAddress: Optional[int],
    exempt: Iterable[Network],
    derived: Optional[int],
) -> ConnectionLimits:
    """
    The L{ConnectionLimits} for a total option (an integer, L{AUTO} for
    C{derived}, or L{None} for no cap) and a per-address one; a per-address
    cap above the total is lowered to it.
    """
    resolved = derived if total == AUTO else total
    if resolved is not None and not isinstance(resolved, int):
        raise ValueError(f"a total cap must be an integer, {AUTO!r} or None, not {total!r}")
    if resolved is not None and perAddress is not None:
        perAddress = min(perAddress, resolved)
    return ConnectionLimits(resolved, perAddress, tuple(exempt))


def serverLimits(
    sensorTotal: Union[int, str, None],
    sensorPerAddress: Optional[int],
    httpTotal: Union[int, str, None],
    httpPerAddress: Optional[int],
    exempt: Sequence[Network],
    limit: Optional[int],
) -> Tuple[ConnectionLimits, ConnectionLimits]:
    """
    The caps of the sensor port and of the HTTP port, C{(sensor, http)},
    for the options given and an open-file limit of C{limit} (see
    L{defaultLimits}).
    """
    derivedSensor, derivedHTTP = defaultLimits(limit)
    return (
        limitsFor(sensorTotal, sensorPerAddress, exempt, derivedSensor),
        limitsFor(httpTotal, httpPerAddress, exempt, derivedHTTP),
    )

"""
Who may write on the sensor port: the policy a L{sensornet.protocol.SensorServerFactory}
asks when a connection opens, authenticates, or names a sensor.

  - L{AnonymousNetworks}: the networks whose peers may write without a
    credential (C{--anonymous-from}, loopback by default), parsed by
    L{parseNetworks}.
  - L{FailureLimiter}: a token bucket per source address (IPv6 per /64) for
    failed authentications, in a bounded table; an address that spent its
    bucket has its connections closed at once, before anything is read or
    hashed.
  - L{SensorAccess}: the three together with the credentials (the server's
    L{sensornet.identity.cache.CredentialCache}, or anything providing
    L{ICredentialSource}) and the metrics: what the protocol calls.

Nothing here does I/O: C{verify} is an in-memory lookup of a SHA-256 digest,
so authenticating costs the reactor a hash and a dict lookup, and a refused
credential (unknown, revoked, rotated away or malformed) takes the same path
as every other: hash, look up, refuse.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from typing import Any, Callable, FrozenSet, Iterable, List, Optional, Protocol, Sequence, Tuple, Union, cast

from constantly import ValueConstant, Values
from twisted.internet.interfaces import IAddress, IReactorTime

from ..metrics import ServerMetrics

__all__ = [
    "DEFAULT_ANONYMOUS_FROM",
    "AuthFailure",
    "AnonymousNetworks",
    "FailureLimiter",
    "ICredentialSource",
    "SensorAccess",
    "anonymousExposure",
    "listensBeyondLoopback",
    "parseNetworks",
    "peerHost",
]

#: Who may write without a credential unless told otherwise: this host only.
DEFAULT_ANONYMOUS_FROM = "127.0.0.0/8,::1"

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class AuthFailure(Values):
    """
    Why a connection was refused for want of a valid credential: the
    C{reason} label of C{sensornet_auth_failures_total} (few values, so the
    metric stays small whatever peers send).

    @cvar invalid: An C{auth} line's token, or a client certificate's name,
        is unknown, revoked, rotated away or malformed (one reason for all:
        the server never says which).
    @cvar required: A connection that must authenticate sent something else
        as its first line.
    @cvar rateLimited: The source address failed too often lately: closed
        on connecting, before anything was read.
    """

    invalid = ValueConstant("invalid")
    required = ValueConstant("required")
    rateLimited = ValueConstant("rate_limited")


class PrincipalLike(Protocol):
    """
    What the sensor port needs of a L{sensornet.identity.Principal}.
    """

    @property
    def name(self) -> str: ...

    def mayWrite(self, sensor: str) -> bool: ...


class ICredentialSource(Protocol):
    """
    The credentials the sensor port checks against: the server's
    L{sensornet.identity.cache.CredentialCache}, in memory, on the reactor
    thread.
    """

    def verify(self, token: Any) -> Optional[PrincipalLike]:
        """
        The principal C{token} authenticates, or L{None} (unknown, revoked,
        malformed); no I/O, constant time in what matters.
        """

    def principalNamed(self, name: str) -> Optional[PrincipalLike]:
        """
        The live principal called C{name} (a client certificate names its
        sensor), or L{None}.
        """

    def subscribeRevoked(self, callback: Callable[[FrozenSet[str]], Any]) -> Any:
        """
        Call C{callback} with the names whose credentials were revoked or
        rotated, each time some were.
        """


def parseNetworks(text: str) -> Tuple[Network, ...]:
    """
    The networks of C{--anonymous-from}: a comma-separated list of CIDR
    blocks or single addresses (C{127.0.0.0/8,::1,10.1.0.0/16}); C{none}
    (or an empty text) is no network at all.

    @raise ValueError: A part is not an address or a network (host bits
        set, as in C{10.0.0.1/8}, is an error too: it is a typo more often
        than not).
    """
    text = text.strip()
    if not text or text.lower() == "none":
        return ()
    networks: List[Network] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=True))
        except ValueError as e:
            raise ValueError(f"not a network or address: {part!r} ({e})") from None
    return tuple(networks)


def peerHost(address: IAddress) -> Optional[str]:
    """
    The host of a connection's peer address (C{"127.0.0.1"}, C{"::1"}), or
    L{None} for an address without one (a unix socket).
    """
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else None


def _parseAddress(host: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
        return address.ipv4_mapped
    return address


class AnonymousNetworks:
    """
    The networks whose peers may write without a credential.

    A peer without an IP address (a unix socket) is local: it counts as
    loopback, allowed when C{127.0.0.1} is.

    @ivar networks: The networks, as parsed by L{parseNetworks}.
    """

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        self._loopback = self.allows("127.0.0.1")

    @classmethod
    def fromString(cls, text: str) -> "AnonymousNetworks":
        """
        Parse C{--anonymous-from}'s value (see L{parseNetworks}).
        """
        return cls(parseNetworks(text))

    def allows(self, host: Optional[str]) -> bool:
        """
        Whether a peer at C{host} may write anonymously.
        """
        if host is None:
            return self._loopback
        address = _parseAddress(host)
        if address is None:
            return False
        return any(address in network for network in self.networks)

    def beyondLoopback(self) -> List[Network]:
        """
        The networks that reach past this host (anything not loopback): what
        makes anonymous writes open to others.
        """
        return [network for network in self.networks if not network.is_loopback]

    def __str__(self) -> str:
        return ",".join(str(network) for network in self.networks) or "none"


class FailureLimiter:
    """
    A token bucket per source address for failed authentications: each
    address may fail C{burst} times in a row, and earns one more try every
    C{1 / rate} seconds. An address with an empty bucket is blocked until
    it earns a try. IPv6 addresses are counted per /64 (one host usually
    holds a whole /64).

    The table is bounded: past C{maxAddresses} addresses the one that failed
    least recently is forgotten, so a flood from many addresses costs at most
    that many small entries.
    """

    def __init__(self, clock: IReactorTime, burst: int = 10, rate: float = 0.1, maxAddresses: int = 10_000) -> None:
        """
        @param burst: Failures in a row an address may have (C{>= 1}).
        @param rate: Tries earned back per second (C{> 0}); the default, one
            every 10 s, lets a sensor with a wrong token retry its reconnects
            for a while, and an attacker guess six times a minute.
        @param maxAddresses: The most addresses remembered.
        """
        if burst < 1 or not 0 < rate < math.inf or maxAddresses < 1:
            raise ValueError("burst must be >= 1, rate > 0 and finite, maxAddresses >= 1")
        self.clock = clock
        self.burst = burst
        self.rate = rate
        self.maxAddresses = maxAddresses
        # key -> (tries left, when counted); least recently failed first.
        self._buckets: "OrderedDict[str, Tuple[float, float]]" = OrderedDict()

    @staticmethod
    def _key(host: Optional[str]) -> str:
        if host is None:
            return "local"
        address = _parseAddress(host)
        if isinstance(address, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((address, 64), strict=False))
        return str(address) if address is not None else host

    def _tries(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return float(self.burst)
        tries, then = entry
        return min(float(self.burst), tries + (now - then) * self.rate)

    def blocked(self, host: Optional[str]) -> bool:
        """
        Whether C{host} has spent its tries: a connection from it is closed
        without a look at what it sends.
        """
        if not self._buckets:
            return False
        return self._tries(self._key(host), self.clock.seconds()) < 1

    def failed(self, host: Optional[str]) -> None:
        """
        C{host} failed to authenticate once more.
        """
        now = self.clock.seconds()
        key = self._key(host)
        tries = max(0.0, self._tries(key, now) - 1)
        buckets = self._buckets
        buckets.pop(key, None)
        buckets[key] = (tries, now)
        while len(buckets) > self.maxAddresses:
            buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


class SensorAccess:
    """
    The sensor port's access policy, shared by every connection of a
    factory: who may write anonymously, which credentials are valid, and
    how often an address may fail.

    @ivar credentials: An L{ICredentialSource}, or L{None}: no credential is
        valid, only anonymous writes from C{anonymous} are possible.
    @ivar anonymous: The L{AnonymousNetworks}.
    @ivar limiter: The L{FailureLimiter}.
    """

    def __init__(
        self,
        credentials: Optional[ICredentialSource],
        anonymous: AnonymousNetworks,
        clock: IReactorTime,
        metrics: ServerMetrics,
        limiter: Optional[FailureLimiter] = None,
    ) -> None:
        self.credentials = credentials
        self.anonymous = anonymous
        self.limiter = limiter if limiter is not None else FailureLimiter(clock)
        self._failures = {reason: metrics.authFailures.labels(reason.value) for reason in AuthFailure.iterconstants()}
        self._successes = {method: metrics.authSuccesses.labels(method) for method in ("token", "certificate")}

    def ready(self) -> bool:
        """
        Whether the credentials are loaded (a cache's first snapshot has
        come): before that, a token cannot be told good or bad, and the
        protocol asks the peer to try again rather than refusing it.
        """
        credentials = self.credentials
        if credentials is None:
            return True
        loaded = getattr(credentials, "ready", None)
        return loaded is None or bool(getattr(loaded, "called", True))

    def subscribeRevoked(self, callback: Callable[[FrozenSet[str]], None]) -> None:
        """
        Have C{callback} told of revoked (or rotated) credentials' names.
        """
        if self.credentials is not None:
            self.credentials.subscribeRevoked(callback)

    def anonymousAllowed(self, host: Optional[str]) -> bool:
        """
        Whether a peer at C{host} may write without authenticating.
        """
        return self.anonymous.allows(host)

    def admit(self, host: Optional[str]) -> bool:
        """
        Whether a new connection from C{host} may go on at all: false (and
        counted) when its address spent its failures.
        """
        if self.limiter.blocked(host):
            self._failures[AuthFailure.rateLimited].inc()
            return False
        return True

    def authenticate(self, token: str, host: Optional[str]) -> Optional[PrincipalLike]:
        """
        The principal C{token} names, or L{None}, counted and charged to
        C{host}'s failures. Every token, well-formed or not, goes through
        the same hash and lookup.
        """
        principal = self.credentials.verify(token) if self.credentials is not None else None
        if principal is None:
            self.refused(AuthFailure.invalid, host)
        else:
            self._successes["token"].inc()
        return principal

    def certificatePrincipal(self, names: Sequence[str], host: Optional[str]) -> Optional[PrincipalLike]:
        """
        The live principal a client certificate names (its CN first, then
        its DNS SANs: the first name that is a live principal), or L{None},
        counted and charged to C{host}'s failures.
        """
        credentials = self.credentials
        if credentials is not None:
            for name in names:
                principal = _principalNamed(credentials, name)
                if principal is not None:
                    self._successes["certificate"].inc()
                    return principal
        self.refused(AuthFailure.invalid, host)
        return None

    def refused(self, reason: AuthFailure, host: Optional[str]) -> None:
        """
        A connection from C{host} is refused for C{reason}: count it, and
        charge it to the address.
        """
        self._failures[reason].inc()
        self.limiter.failed(host)


def _principalNamed(credentials: ICredentialSource, name: str) -> Optional[PrincipalLike]:
    """
    C{credentials.principalNamed(name)}.
    """
    return cast(Optional[PrincipalLike], credentials.principalNamed(name))


def listensBeyondLoopback(description: str) -> bool:
    """
    Whether the server endpoint string C{description} accepts connections
    from other hosts: a C{tcp:}, C{tcp6:} or C{ssl:} endpoint on every
    interface (the default) or on an address that is not loopback. A
    C{unix:} socket does not; an endpoint type not known here is assumed
    to. Pure.
    """
    from ..endpointstrings import endpointArguments

    positional, keywords = endpointArguments(description.strip())
    kind = positional[0].lower()
    if kind == "unix":
        return False
    if kind not in ("tcp", "tcp6", "ssl"):
        return True
    interface = keywords.get("interface", "")
    if not interface and kind == "tcp" and len(positional) > 2:
        interface = positional[2]
    address = _parseAddress(interface) if interface else None
    return address is None or not address.is_loopback


def anonymousExposure(listen: Sequence[str], anonymous: AnonymousNetworks) -> Optional[str]:
    """
    The warning a server logs at start when it would accept anonymous
    writes from beyond this host on a listener reachable from beyond it
    (Mosquitto 2.0's lesson: anonymous writes are never silently open to
    the world), or L{None} when it would not.
    """
    wide = anonymous.beyondLoopback()
    exposed = [description for description in listen if listensBeyondLoopback(description)]
    if not wide or not exposed:
        return None
    return (
        "ANONYMOUS WRITES ARE OPEN BEYOND THIS HOST: any peer in "
        + ", ".join(str(network) for network in wide)
        + " may write readings as any sensor, without a credential, on "
        + ", ".join(exposed)
        + ". Give sensors credentials (sensornet sensors add NAME) and narrow or drop --anonymous-from "
        "(--anonymous-from none) unless every host of those networks is trusted."
    )

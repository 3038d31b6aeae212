"""
HTTP access control: who may read the API, the CSV, the live stream and
C{/metrics}.

A request carries C{Authorization: Bearer TOKEN}, the token of a C{reader}
credential (see C{docs/security.md}); anything else is answered C{401} with
C{WWW-Authenticate: Bearer realm="sensornet"} and a JSON error, and counted
in C{sensornet_http_unauthorized_total} by reason. Open to all, for load
balancers and for the dashboard's page to load and ask for a token:
C{/healthz}, C{/readyz}, C{/} and C{/static/...} (which hold no data).

The site tree asks L{BearerAuthenticator.guard} about the first segment of
every path (L{sensornet.web.resource.makeSite}'s C{authenticator}); a path
not named open is guarded, so a resource added later is closed by default.
No response carries CORS headers: a page of another origin cannot read any
answer, with or without a token.
"""

from __future__ import annotations

from typing import Any, Callable, FrozenSet, Optional, Sequence, Union

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from ..identity.registry import Principal
from ..identity.tokens import looksLikeToken
from .encoding import jsonBytes

__all__ = [
    "OPEN_PATHS",
    "REALM",
    "BearerAuthenticator",
    "Refusal",
    "bearerToken",
]

#: First path segments anyone may request: the dashboard's page
#: (C{b""} is C{/}) and files, and the health checks.
OPEN_PATHS: FrozenSet[bytes] = frozenset({b"", b"static", b"healthz", b"readyz"})

#: The challenge of every 401 (RFC 6750).
REALM = b'Bearer realm="sensornet"'


class Refusal(str):
    """
    Why a request is refused: one of C{missing} (no Authorization header),
    C{malformed} (a header that is not C{Bearer} and one token's worth of
    printable characters, or more than one header), C{invalid} (not the
    token of a valid reader: unknown, revoked, rotated away, or another
    role's), C{not_ready} (the credentials are not loaded yet). The value is
    the C{reason} label of C{sensornet_http_unauthorized_total}.
    """


MISSING = Refusal("missing")
MALFORMED = Refusal("malformed")
INVALID = Refusal("invalid")
NOT_READY = Refusal("not_ready")

_MESSAGES = {
    MISSING: "a reader's token is needed: send Authorization: Bearer TOKEN",
    MALFORMED: "malformed Authorization header: send Authorization: Bearer TOKEN",
    # One message for every wrong token, so the answer does not say whether
    # a token is some other credential's.
    INVALID: "the token is not a valid reader's token",
    NOT_READY: "the server is still loading its credentials: try again in a second",
}


def bearerToken(values: Optional[Sequence[bytes]]) -> Union[str, Refusal]:
    """
    The token in the values of a request's C{Authorization} header (as
    C{getRawHeaders} gives them), or the L{Refusal} they deserve. Pure.

    Exactly one header, scheme C{Bearer} (any case), one or more spaces,
    then a text L{looksLikeToken} accepts, optionally followed by spaces.
    """
    if not values:
        return MISSING
    if len(values) != 1:
        return MALFORMED
    try:
        text = values[0].decode("ascii")
    except UnicodeDecodeError:
        return MALFORMED
    scheme, space, rest = text.partition(" ")
    token = rest.strip(" ")
    if not space or scheme.lower() != "bearer" or not looksLikeToken(token):
        return MALFORMED
    return token


class _Unauthorized(Resource):
    """
    The answer to a refused request, whatever its method or path below.
    """

    isLeaf = True

    def __init__(self, refusal: Refusal) -> None:
        super().__init__()
        self._refusal = refusal

    def render(self, request: Request) -> bytes:  # type: ignore[override]
        notReady = self._refusal is NOT_READY
        request.setResponseCode(503 if notReady else 401)
        if notReady:
            request.setHeader(b"retry-after", b"1")
        else:
            request.setHeader(b"www-authenticate", REALM)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return jsonBytes({"error": _MESSAGES[self._refusal]})


class BearerAuthenticator:
    """
    The guard of a site: lets a request through when its bearer token is a
    valid C{reader}'s, or when its path is open (L{OPEN_PATHS}).

    @param verify: A token to its L{Principal}, or L{None}; in memory, no
        I/O (L{sensornet.identity.cache.CredentialCache.verify}).
    @param ready: Whether the credentials are loaded; before that a request
        with a well-formed token gets 503 and C{Retry-After: 1} instead of
        a 401 that would wrongly say the token is bad.
    @param unauthorized: A Prometheus counter with one label, C{reason}
        (L{Refusal}), incremented for every refused request; or L{None}.
    """

    def __init__(
        self,
        verify: Callable[[str], Optional[Principal]],
        ready: Callable[[], bool] = lambda: True,
        unauthorized: Optional[Any] = None,
    ) -> None:
        self._verify = verify
        self._ready = ready
        self._unauthorized = unauthorized

    def check(self, request: Request) -> Optional[Refusal]:
        """
        L{None} when C{request} carries a valid reader's token, else why not.
        """
        token = bearerToken(request.requestHeaders.getRawHeaders(b"authorization"))
        if isinstance(token, Refusal):
            return token
        principal = self._verify(token)
        if principal is not None and principal.mayRead():
            return None
        if principal is None and not self._ready():
            return NOT_READY
        return INVALID

    def guard(self, segment: bytes, request: Request) -> Optional[IResource]:
        """
        What the site's root asks before looking up the child C{segment}
        (the first segment of the request's path): L{None} to go on, or the
        resource that refuses the request.
        """
        if segment in OPEN_PATHS:
            return None
        refusal = self.check(request)
        if refusal is None:
            return None
        if self._unauthorized is not None:
            self._unauthorized.labels(reason=str(refusal)).inc()
        return _Unauthorized(refusal)

"""
C{GET /api/alerts}: the threshold and silence rules' alerts
(L{sensornet.fleet.rules}), pending, firing and lately resolved.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.web.resource import Resource
from twisted.web.server import Request

from .encoding import jsonBytes
from .params import ParameterError, singleParameter

__all__ = ["AlertsResource"]

#: Alerts in one answer unless the client asks for another C{limit}, and
#: the most it may ask for: the answer's size is bounded whatever number of
#: alerts is active (up to L{sensornet.fleet.rules.MAX_ACTIVE}).
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000


class AlertsResource(Resource):
    """
    C{GET /api/alerts?limit=N}: C{{"alerts": [{rule, sensor, kind, state,
    since, value}, ...], "total": n}}, the C{limit} (default 1000, at most
    10,000) most recent changes first, and how many there are in all; an
    empty list when the server loaded no rules.

    @param engine: Has C{alerts() -> list of dicts} (a
        L{sensornet.fleet.rules.RulesEngine}), or L{None}.
    """

    isLeaf = True

    def __init__(self, engine: Optional[Any]) -> None:
        super().__init__()
        self._engine = engine

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        args: Dict[bytes, List[bytes]] = request.args or {}
        try:
            for key in args:
                name = key.decode("utf-8", "replace")
                if name != "limit":
                    raise ParameterError(name, f"unknown parameter {name!r}; /api/alerts takes limit only")
            text = singleParameter(args, "limit")
            limit = DEFAULT_LIMIT
            if text:
                try:
                    limit = int(text)
                except ValueError:
                    raise ParameterError("limit", f"limit must be a whole number, not {text!r}") from None
                if not 1 <= limit <= MAX_LIMIT:
                    raise ParameterError("limit", f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
        except ParameterError as e:
            request.setResponseCode(400)
            return jsonBytes({"error": e.message, "parameter": e.parameter})
        if self._engine is None:
            return jsonBytes({"alerts": [], "total": 0})
        return jsonBytes({"alerts": self._engine.alerts(limit), "total": len(self._engine)})

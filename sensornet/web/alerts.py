"""
C{GET /api/alerts}: the threshold and silence rules' alerts
(L{sensornet.fleet.rules}), pending, firing and lately resolved.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.web.resource import Resource
from twisted.web.server import Request

from .encoding import jsonBytes

__all__ = ["AlertsResource"]


class AlertsResource(Resource):
    """
    C{GET /api/alerts}: C{{"alerts": [{rule, sensor, kind, state, since,
    value}, ...]}}, newest change first; an empty list when the server
    loaded no rules.

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
        if request.args:
            name = next(iter(request.args)).decode("utf-8", "replace")
            request.setResponseCode(400)
            return jsonBytes({"error": f"unknown parameter {name!r}; /api/alerts takes none", "parameter": name})
        alerts = self._engine.alerts() if self._engine is not None else []
        return jsonBytes({"alerts": alerts})

"""
The server's HTTP side: a live dashboard, a JSON/CSV API, a Server-Sent
Events stream of committed readings, Prometheus metrics and health checks.

The server builds it with L{makeSite} (or L{makeResource} to mount the tree
elsewhere) and listens with it on its C{--http} endpoint, in its own reactor.
"""

from .resource import WebSite, makeResource, makeSite, staticDirectory

__all__ = ["WebSite", "makeResource", "makeSite", "staticDirectory"]

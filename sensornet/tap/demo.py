"""
C{twistd sensornet-demo}: the seed's whole system in one process: a server
on port 5000 plus its two sensors (temperature every 2 s, humidity every
3 s), all on one reactor, storing into SQLite.

Still one command with access control on: at start the demo provisions a
credential for each of its sensors and a C{reader} credential for the
dashboard, writing each token to a file of mode 0600 in its working
directory (C{dashboard-token.txt}: paste it into the dashboard's form) and
logging the file's path, never the token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, cast

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, Logger
from twisted.python import usage

from ..client import ClientConfig, SensorClientService
from ..endpointstrings import endpointArguments
from ..server import DEFAULT_HTTP, DEFAULT_STORE, SensorServerService, ServerConfig
from ..simulate import KINDS
from ..store import redactURL
from ..textlog import OffersLogObserver
from .server import twistdLogObserver

#: The seed's sensors: (name, kind), each at its kind's own interval.
SEED_SENSORS = (("Sensor1", "temperature"), ("Sensor2", "humidity"))

#: The reader credential the demo provisions for its dashboard, and the file
#: (in the demo's token directory) its token is written to.
DASHBOARD_READER = "dashboard"
DASHBOARD_TOKEN_FILE = "dashboard-token.txt"


class Options(usage.Options):
    """
    The demo's command line; see C{twistd sensornet-demo --help}.
    """

    optParameters = [
        ["port", None, 5000, "TCP port for sensors (on every interface, like the seed).", int],
        ["store", None, DEFAULT_STORE, "Store URL (sqlite:PATH or postgresql://...)."],
        ["http", None, DEFAULT_HTTP, "Endpoint for the dashboard and API, or 'none'."],
        ["seed", None, None, "Seed for the simulated values.", int],
    ]
    optFlags = [["no-log-readings", None, "Do not log each reading."]]

    def postOptions(self) -> None:
        if not 0 < self["port"] < 65536:
            raise usage.UsageError("--port must be a TCP port number")

    def toConfig(self) -> "DemoConfig":
        """
        The parsed options as the server's and the seed sensors' configs.
        """
        port = self["port"]
        http: Optional[str] = self["http"]
        if http is not None and http.strip().lower() == "none":
            http = None
        server = ServerConfig(
            listen=[f"tcp:{port}"],
            http=http,
            store=self["store"],
            logReadings=not self["no-log-readings"],
            # Without a store there are no credentials to check readers
            # against: such a demo's HTTP side is open (and says so).
            httpAuth="none" if self["store"] == "none" and http is not None else "required",
        )
        tokenDirectory = "." if self["store"] != "none" else None
        # With a store, each sensor authenticates with the token the demo
        # provisions for it at start (see provisionDemo), as a real one would.
        clients = [
            ClientConfig(
                kind=kind,
                sensor=name,
                endpoint=f"tcp:host=127.0.0.1:port={port}",
                seed=self["seed"],
                tokenFile=os.path.join(tokenDirectory, tokenFileName(name)) if tokenDirectory is not None else None,
            )
            for name, kind in SEED_SENSORS
        ]
        return DemoConfig(server, clients, tokenDirectory=tokenDirectory)


@dataclass
class DemoConfig:
    """
    A demo: one server and the clients that send to it.

    @ivar tokenDirectory: Where L{provisionDemo} writes the token files
        at start (the working directory, from the command line); L{None}:
        provision nothing (a demo without a store has no credentials).
    """

    server: ServerConfig
    clients: List[ClientConfig] = field(default_factory=list)
    tokenDirectory: Optional[str] = None


def tokenFileName(name: str) -> str:
    """
    The file a demo credential's token is written to: C{dashboard-token.txt}
    for the dashboard's reader, C{NAME-token.txt} for a sensor.
    """
    return DASHBOARD_TOKEN_FILE if name == DASHBOARD_READER else f"{name}-token.txt"


def provisionDemo(storeURL: str, directory: str, sensors: Sequence[str]) -> Dict[str, str]:
    """
    Make sure each of C{sensors} (role C{sensor}) and L{DASHBOARD_READER}
    (role C{reader}) has a valid credential whose token is in its file in
    C{directory} (L{tokenFileName}, mode 0600). A file already holding the
    valid token of its credential is kept (a demo started again keeps its
    tokens); otherwise the credential is added, or rotated if it exists, and
    the file replaced. Blocking: for the demo's start only.

    @return: Credential name to the path of its token file.
    @raise ValueError: A credential of one of these names has another role.
    @raise StoreUnavailable: The store cannot be reached.
    """
    from ..identity.cli import replaceTokenFile
    from ..identity.registry import Registry
    from ..identity.tokens import tokenHash

    registry = Registry(storeURL)
    paths: Dict[str, str] = {}
    try:
        _, valid = registry.snapshot()
        existing = {credential.name: credential for credential in registry.list()}
        wanted = [(name, "sensor") for name in sensors] + [(DASHBOARD_READER, "reader")]
        for name, role in wanted:
            path = os.path.join(directory, tokenFileName(name))
            paths[name] = path
            try:
                with open(path, encoding="ascii") as f:
                    current = valid.get(tokenHash(f.readline().strip()))
            except (OSError, UnicodeError):
                current = None
            if current is not None and current.name == name and current.role == role:
                continue
            credential = existing.get(name)
            if credential is None:
                token = registry.add(name, role=role)
            elif credential.role != role:
                raise ValueError(f"the store has a {credential.role} credential named {name!r}, not a {role}")
            else:
                token = registry.rotate(name)
            replaceTokenFile(path, token)
    finally:
        registry.close()
    return paths


class DemoService(OffersLogObserver, MultiService):
    """
    A server and its clients on one reactor, started in that order; says
    where to look once all are up.

    @ivar server: The L{SensorServerService}.
    @ivar clients: One L{SensorClientService} per client config, in order.
    @ivar tokenFiles: Credential name to its token file, once started with
        a C{tokenDirectory} (see L{provisionDemo}).
    """

    _log = Logger()

    def __init__(self, config: DemoConfig, reactor: IReactorTime) -> None:
        super().__init__()
        self.config = config
        self.server = SensorServerService(config.server, reactor)
        self.server.setServiceParent(self)
        self.clients: List[SensorClientService] = []
        for clientConfig in config.clients:
            client = SensorClientService(clientConfig, reactor)
            client.setServiceParent(self)
            self.clients.append(client)
        self.tokenFiles: Dict[str, str] = {}

    def logObserverTaken(self, observer: ILogObserver) -> None:
        """
        The process logs to C{observer}: the server adapts its reading log
        to it (L{SensorServerService.logObserverTaken}).
        """
        self.server.logObserverTaken(observer)

    def startService(self) -> None:
        # Before the server starts, so that its credential cache's first
        # load already holds the demo's credentials.
        if self.config.tokenDirectory is not None and self.config.server.store != "none":
            names = [name for client in self.config.clients for name in client.sensorNames()]
            self.tokenFiles = provisionDemo(self.config.server.store, self.config.tokenDirectory, names)
        # The server first; its sensors once its credentials are loaded (a
        # connection before that is told to try again, which would greet
        # the demo's user with two refusals).
        Service.startService(self)
        self.server.startService()
        credentials = self.server.credentials
        ready = credentials.ready if credentials is not None else succeed(None)

        def startClients(_: object) -> None:
            if self.running:
                for client in self.clients:
                    client.startService()

        ready.addCallback(startClients)
        self._log.info(
            "sensornet demo: server on {listen}; {sensors} connected to it.\n{where}",
            listen=", ".join(self.config.server.listen),
            sensors=" and ".join(_describeSensors(self.config.clients)),
            where="\n".join(_where(self.config.server, self.tokenFiles.get(DASHBOARD_READER))),
        )


    def stopService(self) -> "Deferred[Any]":
        Service.stopService(self)
        services: List[Service] = [self.server]
        services += [client for client in self.clients if client.running]
        stopping = [maybeDeferred(service.stopService) for service in reversed(services)]
        return DeferredList(stopping)


def _describeSensors(clients: List[ClientConfig]) -> List[str]:
    described = []
    for client in clients:
        interval = client.interval if client.interval is not None else KINDS[client.kind].interval
        for name in client.sensorNames():
            described.append(f"{name} ({client.kind}, every {interval:g} s)")
    return described


def _where(server: ServerConfig, dashboardToken: Optional[str] = None) -> List[str]:
    where = []
    if server.http is not None:
        where.append(f"dashboard and API: {dashboardURL(server.http)}  (metrics: /metrics)")
        if server.httpAuth == "required" and dashboardToken is not None:
            where.append(
                f"the dashboard asks for a reader's token: it is in {os.path.abspath(dashboardToken)} "
                "(also for the API: Authorization: Bearer TOKEN)"
            )
        elif server.httpAuth == "none":
            where.append("HTTP access control is off: anyone who can reach the HTTP port reads everything")
    where.append(f"readings stored in {redactURL(server.store)}")
    where.append("every reading is logged here (twistd --logfile log.txt sensornet-demo keeps a log.txt)")
    return where


def dashboardURL(description: str) -> str:
    """
    Where to point a browser at the HTTP side listening on the server
    endpoint string C{description}: C{http://HOST:PORT/} for C{tcp:}
    (C{https://} for C{ssl:}), positional (C{tcp:8080}) or keyword
    (C{tcp:port=8080}), HOST its C{interface} or C{localhost} for every
    interface; for any other endpoint (C{unix:}, port 0, ...) the endpoint
    string itself. Pure.
    """
    positional, keywords = endpointArguments(description.strip())
    scheme = {"tcp": "http", "tcp6": "http", "ssl": "https"}.get(positional[0].lower())
    if scheme is None:
        return description
    port = keywords.get("port", positional[1] if len(positional) > 1 else "")
    if not port.isdigit() or int(port) == 0:
        return description
    # Only tcp: has the interface as a positional argument (tcp:PORT:INTERFACE).
    positionalInterface = positional[2] if positional[0].lower() == "tcp" and len(positional) > 2 else ""
    host = keywords.get("interface", positionalInterface)
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{int(port)}/"


def makeService(options: Options, reactor: Optional[IReactorTime] = None) -> DemoService:
    """
    Build the server and the two seed sensors, sharing one reactor.
    C{reactor} defaults to the global one only here, at the edge where
    twistd calls in.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = cast(IReactorTime, globalReactor)
    service = DemoService(options.toConfig(), reactor)
    service.logObserver = twistdLogObserver(options)
    return service

"""
C{twistd sensornet-demo}: the seed's whole system in one process: a server
on port 5000 plus its two sensors (temperature every 2 s, humidity every
3 s), all on one reactor, storing into SQLite.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.logger import Logger
from twisted.python import usage

from ..server import DEFAULT_HTTP, DEFAULT_STORE, SensorServerService, ServerConfig
from . import client as clienttap


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


class _Banner(Service):
    """
    Says where to look once everything is up.
    """

    _log = Logger()

    def __init__(self, options: Options) -> None:
        self.options = options

    def startService(self) -> None:
        super().startService()
        http = self.options["http"]
        where = []
        if http and http.lower() != "none":
            port = http.split(":")[1] if http.startswith("tcp:") else http
            where.append(f"dashboard and API: http://localhost:{port}/  (metrics: /metrics)")
        where.append(f"readings stored in {self.options['store']}")
        where.append("every reading is logged here (twistd --logfile log.txt sensornet-demo keeps a log.txt)")
        self._log.info(
            "sensornet demo: server on tcp:{port}; Sensor1 (temperature, every 2 s) and Sensor2 "
            "(humidity, every 3 s) connected to it.\n{where}",
            port=self.options["port"],
            where="\n".join(where),
        )


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """
    Build the server and the two seed sensors, sharing one reactor.
    """
    if reactor is None:
        from twisted.internet import reactor
    top = MultiService()
    http = options["http"]
    config = ServerConfig(
        listen=[f"tcp:{options['port']}"],
        http=None if http.lower() == "none" else http,
        store=options["store"],
        logReadings=not options["no-log-readings"],
    )
    SensorServerService(config, reactor).setServiceParent(top)
    for name, kind in (("Sensor1", "temperature"), ("Sensor2", "humidity")):
        sensorOptions = clienttap.Options()
        args = ["--server", f"127.0.0.1:{options['port']}", "--kind", kind, "--sensor", name]
        if options["seed"] is not None:
            args += ["--seed", str(options["seed"])]
        sensorOptions.parseOptions(args)
        clienttap.makeSensors(sensorOptions, reactor, top)
    _Banner(options).setServiceParent(top)
    return top

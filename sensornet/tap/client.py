"""
C{twistd sensornet-client}: options and L{makeService} for simulated sensors.
"""

from __future__ import annotations

import random
import socket
from typing import Any, Optional

from twisted.application.service import MultiService
from twisted.internet.endpoints import clientFromString
from twisted.python import usage

from ..client import SimulatedSensor, serverEndpointString
from ..outbox import DEFAULT_OUTBOX_SIZE, Outbox, SpoolOutbox
from ..simulate import KINDS


class Options(usage.Options):
    """
    The client's command line; see C{twistd sensornet-client --help}.
    """

    synopsis = "--kind temperature|humidity [--server HOST[:PORT]|ENDPOINT] [--interval S] [--sensor NAME]"
    longdesc = (
        "Simulated sensors: each sends one reading per interval (InfluxDB line protocol with a seq), "
        "keeps it until the server acknowledges it, and reconnects by itself."
    )

    optParameters = [
        ["server", None, "localhost:5000",
         "Server as HOST[:PORT] (port 5000 by default) or a client endpoint string "
         "(tcp:host=H:port=P, tls:H:5000, unix:/path)."],
        ["kind", None, None, "What the sensor measures: " + ", ".join(sorted(KINDS)) + "."],
        ["interval", None, None, "Seconds between readings (temperature 2, humidity 3 by default).", float],
        ["sensor", None, None, "Sensor name (default HOSTNAME-KIND; with --sensors N, NAME-1..NAME-N)."],
        ["sensors", None, 1, "How many sensors to simulate, each on its own connection.", int],
        ["seed", None, None, "Seed for the simulated values (reproducible runs).", int],
        ["outbox-size", None, DEFAULT_OUTBOX_SIZE,
         "Most unacknowledged readings kept per sensor; when full the oldest is dropped.", int],
        ["spool", None, None, "SQLite file keeping the outbox on disk, so readings survive a client restart."],
        ["ack-timeout", None, 10.0, "Seconds before an unacknowledged reading is sent again.", float],
        ["metrics", None, None, "Endpoint to serve this client's Prometheus metrics on (e.g. tcp:9101)."],
    ]

    def postOptions(self) -> None:
        if self["kind"] not in KINDS:
            raise usage.UsageError("--kind must be one of: " + ", ".join(sorted(KINDS)))
        try:
            self["endpoint"] = serverEndpointString(self["server"])
        except ValueError as e:
            raise usage.UsageError(f"--server: {e}")
        if self["interval"] is not None and self["interval"] <= 0:
            raise usage.UsageError("--interval must be positive")
        if self["sensors"] < 1:
            raise usage.UsageError("--sensors must be at least 1")
        if self["outbox-size"] < 1:
            raise usage.UsageError("--outbox-size must be at least 1")
        if self["sensor"] is None:
            self["sensor"] = f"{socket.gethostname().split('.')[0]}-{self['kind']}"


def makeSensors(options: Options, reactor: Any, parent: MultiService, metrics: Any = None) -> list:
    """
    Build the sensors C{options} describe as children of C{parent}.
    """
    kind = KINDS[options["kind"]]
    count = options["sensors"]
    sensors = []
    for index in range(count):
        name = options["sensor"] if count == 1 else f"{options['sensor']}-{index + 1}"
        rng: Optional[random.Random] = None
        if options["seed"] is not None:
            rng = random.Random(options["seed"] * 1_000_003 + index)
        if options["spool"]:
            outbox: Outbox = SpoolOutbox(options["spool"], name, options["outbox-size"])
        else:
            outbox = Outbox(options["outbox-size"])
        sensor = SimulatedSensor(
            name,
            options["kind"],
            kind,
            clientFromString(reactor, options["endpoint"]),
            reactor,
            interval=options["interval"],
            rng=rng,
            outbox=outbox,
            ackTimeout=options["ack-timeout"],
            metrics=metrics,
        )
        sensor.setServiceParent(parent)
        sensors.append(sensor)
    return sensors


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """
    Build the client role from parsed options.
    """
    if reactor is None:
        from twisted.internet import reactor
    top = MultiService()
    metrics = None
    if options["metrics"]:
        from twisted.application.internet import StreamServerEndpointService
        from twisted.internet.endpoints import serverFromString

        from ..clientmetrics import ClientMetrics, makeClientMetricsSite

        metrics = ClientMetrics()
        StreamServerEndpointService(
            serverFromString(reactor, options["metrics"]), makeClientMetricsSite(metrics)
        ).setServiceParent(top)
    sensors = makeSensors(options, reactor, top, metrics)
    if metrics is not None:
        # Read at scrape time, summed over every sensor of the process.
        metrics.outboxLength.set_function(lambda: sum(len(s.outbox) for s in sensors))
        metrics.connected.set_function(lambda: sum(1 for s in sensors if s.protocol is not None))
    return top

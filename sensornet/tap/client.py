"""
C{twistd sensornet-client}: options and L{makeService} for simulated sensors.
"""

from __future__ import annotations

import socket
from typing import Optional, cast

from twisted.internet.interfaces import IReactorTime
from twisted.python import usage

from ..client import DEFAULT_SERVER, ClientConfig, SensorClientService, serverEndpointString
from ..outbox import DEFAULT_OUTBOX_SIZE
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
        ["server", None, DEFAULT_SERVER,
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

    def toConfig(self) -> ClientConfig:
        """
        The parsed options as the L{ClientConfig} the client is built from.
        """
        return ClientConfig(
            kind=self["kind"],
            sensor=self["sensor"],
            endpoint=self["endpoint"],
            interval=self["interval"],
            sensors=self["sensors"],
            seed=self["seed"],
            outboxSize=self["outbox-size"],
            spool=self["spool"] or None,
            ackTimeout=self["ack-timeout"],
            metrics=self["metrics"] or None,
        )


def makeService(options: Options, reactor: Optional[IReactorTime] = None) -> SensorClientService:
    """
    Build the client role from parsed options. C{reactor} defaults to the
    global one only here, at the edge where twistd calls in.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = cast(IReactorTime, globalReactor)
    return SensorClientService(options.toConfig(), reactor)

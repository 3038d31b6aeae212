"""
C{twistd sensornet-client}: options and L{makeService} for simulated sensors.
"""

from __future__ import annotations

import os
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

    synopsis = (
        "--kind temperature|humidity [--server HOST[:PORT]|ENDPOINT] [--interval S] [--sensor NAME] "
        "[--token-file PATH] [--cert PATH --key PATH] [--ca PATH]"
    )
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
        ["token-file", None, None,
         "File holding the sensor's token (from 'sensornet sensors add NAME --token-file PATH'): each "
         "connection starts with 'auth TOKEN'; a refusal stops the sensor. Never pass a token on the "
         "command line."],
        ["cert", None, None, "PEM client certificate (CN = the sensor's name): connect with TLS and present it."],
        ["key", None, None, "PEM private key of --cert (default: the --cert file)."],
        ["ca", None, None, "PEM CA certificate(s) the server's certificate must chain to (TLS)."],
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
        if self["token-file"] is not None:
            from ..client import readTokenFile

            try:
                readTokenFile(self["token-file"])
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--token-file: {e}")
        if self["key"] is not None and self["cert"] is None:
            raise usage.UsageError("--key needs --cert")
        if (self["cert"] or self["ca"]) and not self["endpoint"].startswith(("tcp:", "tcp6:")):
            raise usage.UsageError("--cert/--ca need --server as HOST[:PORT] or a tcp: endpoint (TLS goes over it)")
        for name in ("cert", "key", "ca"):
            if self[name] is not None and not os.path.isfile(self[name]):
                raise usage.UsageError(f"--{name}: no such file: {self[name]}")

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
            tokenFile=self["token-file"],
            tlsCertificate=self["cert"],
            tlsKey=self["key"],
            tlsCA=self["ca"],
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

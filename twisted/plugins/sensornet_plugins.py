"""
twistd plugins for sensornet's roles: C{sensornet-server}, C{sensornet-client}
and C{sensornet-demo}.

twistd imports this module for every C{--help}; it only names the tap modules,
which are imported when their role is started.
"""

from twisted.application.service import ServiceMaker

sensornetServer = ServiceMaker(
    "sensornet server",
    "sensornet.tap.server",
    "Receive sensor readings on port 5000, store them, acknowledge them.",
    "sensornet-server",
)
sensornetClient = ServiceMaker(
    "sensornet client",
    "sensornet.tap.client",
    "Simulated sensors sending readings to a sensornet server.",
    "sensornet-client",
)
sensornetDemo = ServiceMaker(
    "sensornet demo",
    "sensornet.tap.demo",
    "A server plus the seed's two sensors (temperature every 2 s, humidity every 3 s).",
    "sensornet-demo",
)

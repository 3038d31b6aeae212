"""
sensornet: event-driven sensor telemetry on Twisted.

Sensors connect over TCP (port 5000 by default) and send one reading per
line, in the seed's text format, InfluxDB line protocol or Graphite
plaintext; the server stores each reading exactly once and acknowledges it
once stored.
"""

from .reading import DIALECTS, LineError, Reading

__all__ = ["Reading", "LineError", "DIALECTS", "__version__"]

__version__ = "0.1.0"

"""
C{twistd sensornet-server}: options and L{makeService} for the server role.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Optional, Union, cast

from twisted.internet.interfaces import IReactorTime
from twisted.python import usage

from ..caps import AUTO, DEFAULT_EXEMPT, DEFAULT_HTTP_PER_ADDRESS, DEFAULT_SENSOR_PER_ADDRESS, parseNetworks
from ..identity.auth import DEFAULT_ANONYMOUS_FROM
from ..protocol import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_JUNK_BUDGET, DEFAULT_MAX_CLOCK_SKEW
from ..protocol import DEFAULT_MAX_REJECTED_LOG_PER_SECOND
from ..server import DEFAULT_HTTP, DEFAULT_LISTEN, DEFAULT_STORE, SensorServerService, ServerConfig

if TYPE_CHECKING:
    from ..textlog import ReadingLogFileObserver
    from ..fleet.service import FleetConfig


class Options(usage.Options):
    """
    The server's command line; see C{twistd sensornet-server --help}.
    """

    synopsis = (
        "[--listen ENDPOINT]... [--store URL] [--http ENDPOINT|none] [--no-log-readings] "
        "[--max-clock-skew SECONDS|none] [--handshake-timeout SECONDS|0] "
        "[--idle-timeout SECONDS|0] [--junk-budget LINES|0] "
        "[--max-rejected-log N|0] [--retention SPEC] [--retention-for SELECTOR=SPEC]... "
        "[--compact-after SECONDS] [--max-connections N|auto|none] [--max-connections-per-address N|none] "
        "[--max-http-connections N|auto|none] [--max-http-connections-per-address N|none] "
        "[--cap-exempt CIDR[,CIDR]|none] [--anonymous-from CIDR[,CIDR]|none] [--client-ca PATH]"
        " [--http-auth required|none]"
        " [--expected-interval SECONDS] [--silent-after N] [--rules PATH] [--webhook URL]..."
    )
    longdesc = (
        "Receive sensor readings (seed text, InfluxDB line protocol, Graphite plaintext), store each "
        "exactly once and acknowledge it once stored. ENDPOINTs are Twisted endpoint strings: "
        "tcp:5000, tcp:5000:interface=127.0.0.1, ssl:5000:privateKey=key.pem:certKey=cert.pem, unix:/path."
    )

    optParameters = [
        ["store", None, DEFAULT_STORE,
         "Where readings are stored: sqlite:PATH, postgresql://USER:PASS@HOST:PORT/DB, 'none' "
         "(acknowledge once parsed, store nothing), or env:NAME to read the URL from environment "
         "variable NAME (keeps a password out of the process list)."],
        ["http", None, DEFAULT_HTTP,
         "Endpoint for the HTTP API, metrics and dashboard, or 'none'."],
        ["max-batch", None, 5000, "Most readings committed in one transaction.", int],
        ["max-delay", None, 0.002, "Seconds a batch may wait to gather readings.", float],
        ["batch-interval", None, 0.0,
         "Least seconds between the starts of two batches that are not full, at most 1: less CPU per "
         "reading at a steady trickle, for that much more latency (0: a batch starts as soon as the "
         "previous one is done).", float],
        ["max-clock-skew", None, f"{DEFAULT_MAX_CLOCK_SKEW:g}",
         "Refuse a reading stamped more than SECONDS ahead of the server's clock (it would pin its "
         "sensor's latest value); 'none' accepts any timestamp."],
        ["handshake-timeout", None, f"{DEFAULT_HANDSHAKE_TIMEOUT:g}",
         "Close a sensor connection that has not sent a complete line SECONDS after connecting "
         "(slowloris); 0 or 'none': no deadline."],
        ["idle-timeout", None, f"{DEFAULT_IDLE_TIMEOUT:g}",
         "Close a sensor connection that sends nothing for SECONDS; 0 or 'none': never."],
        ["junk-budget", None, DEFAULT_JUNK_BUDGET,
         "Close a sensor connection once LINES lines in a row were refused (no reading accepted "
         "between them); 0: no budget.", int],
        ["max-rejected-log", None, DEFAULT_MAX_REJECTED_LOG_PER_SECOND,
         "Log at most N refused lines per second across all sensor connections; the rest are counted "
         "in one summary line a second; 0: no limit but 10 per chunk of data.", int],
        ["retention", None, "raw:30d,1m:1y,1h:10y",
         "How long each tier is kept: raw readings, 1-minute and 1-hour rollups (units s, m, h, d, w, y, "
         "or 'forever'); see docs/storage.md."],
        ["compact-after", None, 60.0,
         "Seconds a stored reading waits before the compactor merges it into a compressed block and "
         "the rollups (each series is visited once in that time: a reading waits at most twice it).", float],
        ["max-connections", None, AUTO,
         "Most sensor connections open at once (all --listen endpoints together); a connection over it "
         "gets 'error: too many connections' and is closed. 'auto': the open-file limit less a reserve "
         "(min(256, limit/4)) and the HTTP share; 'none': no cap."],
        ["max-connections-per-address", None, str(DEFAULT_SENSOR_PER_ADDRESS),
         "Most sensor connections from one peer address; 'none': no cap."],
        ["max-http-connections", None, AUTO,
         "Most HTTP connections open at once; a connection over it gets a 503 and is closed. 'auto': "
         "min(512, (open-file limit - reserve) / 8); 'none': no cap."],
        ["max-http-connections-per-address", None, str(DEFAULT_HTTP_PER_ADDRESS),
         "Most HTTP connections from one peer address; 'none': no cap."],
        ["cap-exempt", None, DEFAULT_EXEMPT,
         "Addresses or CIDR blocks the per-address caps do not apply to (comma-separated); 'none'."],
        ["anonymous-from", None, DEFAULT_ANONYMOUS_FROM,
         "Networks (comma-separated CIDR blocks or addresses) whose peers may write readings without a "
         "credential; every other peer must send 'auth TOKEN' first or present a client certificate. "
         "'none': no anonymous writes at all. A server that would accept anonymous writes from beyond "
         "this host on a listener reachable from beyond it logs a loud warning at start."],
        ["client-ca", None, None,
         "PEM file of the CA(s) signing sensors' client certificates: every ssl: --listen then requires "
         "a certificate from it, whose CN (or a DNS SAN) names the sensor."],
        ["http-auth", None, "required",
         "'required': every HTTP path but the dashboard's files, /healthz and /readyz needs "
         "'Authorization: Bearer TOKEN' of a reader credential (sensornet sensors add NAME --role reader); "
         "'none': the HTTP side is open to anyone who can reach it. 'required' needs a --store."],
        ["expected-interval", None, None,
         "Seconds between a series' readings, for every series (late after 2 intervals without one, "
         "silent after --silent-after); default: learned from each series' cadence. See docs/fleet.md."],
        ["silent-after", None, "5",
         "Expected intervals without a reading after which a series is silent (2 to 1000)."],
        ["rules", None, None,
         "TOML file of threshold and silence rules ([[rule]] tables, docs/fleet.md); refused at start "
         "with the line and the reason if invalid."],
    ]

    optFlags = [
        ["no-log-readings", None, "Do not log each received reading (connections are still logged)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["retention-for"] = []
        self["webhook"] = []

    def opt_retention_for(self, rule: str) -> None:
        """
        Another retention for some series, SELECTOR=SPEC, where SELECTOR is
        kind:NAME or sensor:GLOB (e.g. sensor:lab-*=raw:7d,1m:90d,1h:5y);
        repeatable, the first matching rule wins.
        """
        self["retention-for"].append(rule)

    def opt_webhook(self, url: str) -> None:
        """
        URL (http:// or https://) to POST alerts to as JSON; repeatable.
        """
        self["webhook"].append(url)

    def opt_listen(self, description: str) -> None:
        """
        Endpoint to accept sensors on (default tcp:5000:backlog=1024); repeatable.
        """
        self["listen"].append(description)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if self["store"].startswith("env:"):
            name = self["store"][len("env:"):]
            if not os.environ.get(name):
                raise usage.UsageError(f"--store {self['store']}: environment variable {name} is not set")
            self["store"] = os.environ[name]
        if self["store"] != "none":
            from ..store import parseStoreURL

            try:
                parseStoreURL(self["store"])
            except ValueError as e:
                raise usage.UsageError(f"--store: {e}")
        if self["max-batch"] < 1:
            raise usage.UsageError("--max-batch must be at least 1")
        if self["max-delay"] < 0:
            raise usage.UsageError("--max-delay must not be negative")
        from ..writer import MAX_BATCH_INTERVAL

        if not 0 <= self["batch-interval"] <= MAX_BATCH_INTERVAL:
            raise usage.UsageError(f"--batch-interval must be between 0 and {MAX_BATCH_INTERVAL:g} seconds")
        self["max-clock-skew"] = _parseSkew(self["max-clock-skew"])
        self["handshake-timeout"] = _parseTimeout("handshake-timeout", self["handshake-timeout"])
        self["idle-timeout"] = _parseTimeout("idle-timeout", self["idle-timeout"])
        if self["junk-budget"] < 0:
            raise usage.UsageError("--junk-budget must not be negative (0: no budget)")
        if self["max-rejected-log"] < 0:
            raise usage.UsageError("--max-rejected-log must not be negative (0: no limit)")
        from ..store.retention import RetentionPolicy, parseOverride, parseRetention

        try:
            default = parseRetention(self["retention"])
        except ValueError as e:
            raise usage.UsageError(f"--retention: {e}")
        overrides = []
        for rule in self["retention-for"]:
            try:
                overrides.append(parseOverride(rule))
            except ValueError as e:
                raise usage.UsageError(f"--retention-for {rule!r}: {e}")
        try:
            self["retention"] = RetentionPolicy(default, overrides)
        except ValueError as e:
            raise usage.UsageError(f"--retention-for: {e}")
        if not 0 <= self["compact-after"] <= 86400:
            raise usage.UsageError("--compact-after must be between 0 and 86400 seconds")
        for name in ("max-connections", "max-http-connections"):
            self[name] = _parseCap(name, self[name], allowAuto=True)
        for name in ("max-connections-per-address", "max-http-connections-per-address"):
            self[name] = _parseCap(name, self[name], allowAuto=False)
        try:
            self["cap-exempt"] = parseNetworks(self["cap-exempt"])
        except ValueError as e:
            raise usage.UsageError(f"--cap-exempt: {e}")
        from ..identity.auth import parseNetworks as parseAnonymous

        try:
            parseAnonymous(self["anonymous-from"])
        except ValueError as e:
            raise usage.UsageError(f"--anonymous-from: {e}")
        if self["client-ca"] is not None:
            from ..identity.tls import isSSLEndpoint, loadAuthorities

            if not any(isSSLEndpoint(description) for description in self["listen"]):
                raise usage.UsageError("--client-ca needs an ssl: --listen endpoint to apply to")
            try:
                loadAuthorities(self["client-ca"])
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--client-ca: {e}")
        self["http-auth"] = self["http-auth"].strip().lower()
        if self["http-auth"] not in ("required", "none"):
            raise usage.UsageError(f"--http-auth must be 'required' or 'none', not {self['http-auth']!r}")
        if self["http-auth"] == "required" and self["store"] == "none" and self["http"].strip().lower() != "none":
            raise usage.UsageError(
                "--http-auth required checks readers' tokens against the store's credentials, and --store none "
                "keeps none: give a --store, or pass --http-auth none to leave the HTTP side open"
            )

        self["fleet"] = _parseFleet(self)

    def toConfig(self) -> ServerConfig:
        """
        The parsed options as the L{ServerConfig} the server is built from.
        """
        http: Optional[str] = self["http"]
        if http is not None and http.strip().lower() == "none":
            http = None
        return ServerConfig(
            listen=list(self["listen"]),
            http=http,
            store=self["store"],
            logReadings=not self["no-log-readings"],
            maxBatch=self["max-batch"],
            maxDelay=self["max-delay"],
            batchInterval=self["batch-interval"],
            maxClockSkew=self["max-clock-skew"],
            handshakeTimeout=self["handshake-timeout"],
            idleTimeout=self["idle-timeout"],
            junkBudget=self["junk-budget"] or None,
            maxRejectedLogPerSecond=self["max-rejected-log"] or None,
            retention=self["retention"],
            compactAfter=self["compact-after"],
            maxConnections=self["max-connections"],
            maxConnectionsPerAddress=self["max-connections-per-address"],
            maxHTTPConnections=self["max-http-connections"],
            maxHTTPConnectionsPerAddress=self["max-http-connections-per-address"],
            capExempt=self["cap-exempt"],
            anonymousFrom=self["anonymous-from"],
            clientCA=self["client-ca"],
            httpAuth=self["http-auth"],
            fleet=self["fleet"],
        )


def _parseSeconds(name: str, text: object, what: str) -> Optional[float]:
    """
    Seconds, finite and C{>= 0}, from option C{--name}; L{None} for C{none}.

    @param what: How the error message describes the accepted values.
    @raise usage.UsageError: Anything else (negative, not a number,
        infinite).
    """
    if text is None or (isinstance(text, str) and text.strip().lower() == "none"):
        return None
    try:
        seconds = float(cast(str, text))
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise usage.UsageError(f"--{name} must be {what}, not {text!r}")
    return seconds


def _parseFleet(options: "Options") -> "FleetConfig":
    """
    The fleet options (C{--expected-interval}, C{--silent-after},
    C{--rules}, C{--webhook}) as a L{FleetConfig}; the rules file is read
    and checked here, so a bad one stops the start.
    """
    from ..fleet.rules import Rule, RulesError, loadRules
    from ..fleet.service import FleetConfig
    from ..fleet.states import Cadence
    from ..fleet.webhooks import validateWebhookURL

    expected = _parseSeconds("expected-interval", options["expected-interval"], "a number of seconds > 0")
    if expected == 0:
        raise usage.UsageError("--expected-interval must be a number of seconds > 0, not 0")
    try:
        silentAfter = float(options["silent-after"])
        Cadence(expected=expected, silentAfter=silentAfter)
    except ValueError:
        raise usage.UsageError(
            f"--silent-after must be a number of intervals from 2 to 1000, not {options['silent-after']!r}"
        ) from None
    rules: "tuple[Rule, ...]" = ()
    if options["rules"] is not None:
        try:
            rules = tuple(loadRules(options["rules"]))
        except RulesError as e:
            raise usage.UsageError(f"--rules: {e}")
    for url in options["webhook"]:
        try:
            validateWebhookURL(url)
        except ValueError as e:
            raise usage.UsageError(f"--webhook: {e}")
    return FleetConfig(expectedInterval=expected, silentAfter=silentAfter, rules=rules,
                       webhooks=tuple(options["webhook"]))


def _parseCap(name: str, text: object, allowAuto: bool) -> Union[int, str, None]:
    """
    The value of a connection cap option: an integer C{>= 1}, L{None} for
    C{none}, or (if C{allowAuto}) L{AUTO} for C{auto}.
    """
    word = str(text).strip().lower()
    if word == "none":
        return None
    if allowAuto and word == AUTO:
        return AUTO
    try:
        value = int(word)
    except ValueError:
        value = 0
    if value < 1:
        choices = "an integer >= 1, 'auto' or 'none'" if allowAuto else "an integer >= 1 or 'none'"
        raise usage.UsageError(f"--{name} must be {choices}, not {text!r}")
    return value


def _parseSkew(text: object) -> Optional[float]:
    """
    The value of C{--max-clock-skew}: seconds, finite and C{>= 0} (C{0}
    refuses any timestamp after the server's clock), or L{None} for C{none}
    (no limit).
    """
    return _parseSeconds("max-clock-skew", text, "a number of seconds >= 0 or 'none'")


def _parseTimeout(name: str, text: object) -> Optional[float]:
    """
    The value of a guardrail's timeout option: seconds, finite and C{> 0},
    or L{None} (no limit) for C{0} or C{none}.
    """
    return _parseSeconds(name, text, "a number of seconds >= 0 (0 or 'none': off)") or None


def makeService(options: Options, reactor: Optional[IReactorTime] = None) -> SensorServerService:
    """
    Build the server from parsed options. C{reactor} defaults to the global
    one only here, at the edge where twistd calls in.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = cast(IReactorTime, globalReactor)
    service = SensorServerService(options.toConfig(), reactor)
    service.logObserver = twistdLogObserver(options)
    return service


def twistdLogObserver(options: usage.Options) -> "Optional[ReadingLogFileObserver]":
    """
    Under twistd (whose own options are C{options.parent}), the observer
    twistd would log to, made by L{observerForTwistd}, which writes the
    reading log a chunk at a time; L{None} otherwise, or when twistd's
    options ask for another kind of observer.
    """
    from ..textlog import observerForTwistd

    parent = getattr(options, "parent", None)
    if parent is None:
        return None
    return observerForTwistd(parent)

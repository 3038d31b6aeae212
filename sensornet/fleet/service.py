"""
The fleet view's parts of a server, built from its options: the cadence
the query side decides states by, the rules engine on the live feed, the
webhook notifier, and the refresh of the C{sensornet_sensors} gauges.
L{sensornet.server.SensorServerService} calls L{addFleet} and
L{watchFleet}; everything else about the fleet lives in this package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

from prometheus_client import CollectorRegistry
from twisted.application.service import IServiceCollection
from twisted.internet.interfaces import IReactorTime

from ..feed import LiveFeed
from .rules import Rule, RulesEngine
from .states import SILENT_AFTER, Cadence
from .summary import FleetGaugeService

__all__ = ["FleetConfig", "addFleet", "watchFleet"]


@dataclass(frozen=True)
class FleetConfig:
    """
    The fleet options of a server.

    @ivar expectedInterval: C{--expected-interval}: seconds between a
        series' readings, for every series; L{None} (the default) learns
        each one's from its cadence.
    @ivar silentAfter: C{--silent-after}: intervals without a reading after
        which a series is silent (late after 2).
    @ivar rules: The rules of C{--rules} (parsed at start: a bad file is
        refused then).
    @ivar webhooks: C{--webhook} URLs alerts are POSTed to.
    @ivar gaugeInterval: Seconds between refreshes of C{sensornet_sensors}.
    """

    expectedInterval: Optional[float] = None
    silentAfter: float = SILENT_AFTER
    rules: Sequence[Rule] = field(default_factory=tuple)
    webhooks: Sequence[str] = field(default_factory=tuple)
    gaugeInterval: float = 15.0

    def cadence(self) -> Cadence:
        return Cadence(expected=self.expectedInterval, silentAfter=self.silentAfter)


def addFleet(
    config: FleetConfig,
    parent: IServiceCollection,
    queries: Optional[Any],
    feed: LiveFeed,
    reactor: IReactorTime,
    registry: CollectorRegistry,
) -> RulesEngine:
    """
    Set the query side's cadence, and add the webhook notifier (if any
    URL) and the rules engine to C{parent}, the engine listening to
    C{feed}. Returns the engine (for C{/api/alerts}: pass it to
    C{makeSite(alerts=...)}).
    """
    if queries is not None:
        queries.cadence = config.cadence()
    notify = None
    if config.webhooks:
        from .webhooks import WebhookNotifier

        notifier = WebhookNotifier(list(config.webhooks), reactor, registry)
        notifier.setServiceParent(parent)
        notify = notifier.notify
    silentQuery = getattr(queries, "silentSeries", None) if queries is not None else None
    engine = RulesEngine(list(config.rules), reactor, notify=notify or (lambda event: None),
                         silentQuery=silentQuery, registry=registry)
    engine.setServiceParent(parent)
    if engine.rules:
        feed.subscribe(engine.readingsCommitted)
    return engine


def watchFleet(config: FleetConfig, parent: IServiceCollection, site: Any, reactor: IReactorTime) -> List[Any]:
    """
    Refresh the C{sensornet_sensors} gauges of C{site}'s fleet summary
    every C{config.gaugeInterval} seconds (one grouped query, never per
    reading); nothing when the site has no store.
    """
    cache = getattr(site, "fleetSummary", None)
    if cache is None:
        return []
    service = FleetGaugeService(cache, reactor, config.gaugeInterval)
    service.setServiceParent(parent)
    return [service]

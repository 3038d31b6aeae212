"""
Webhook notifications against real HTTP receivers on loopback: delivery
of JSON POSTs in order, retries with backoff while a receiver is down
(refusing connections, then answering 500) until it comes back, a bounded
queue with drops counted, give-ups after the last attempt; plus URL
validation.
"""

from __future__ import annotations

import json
from typing import Any, List

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import Site

from sensornet.fleet.webhooks import WebhookNotifier, validateWebhookURL

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 20


class Receiver(Resource):
    """
    Records each POSTed JSON body; answers C{self.code}.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: List[Any] = []
        self.code = 200
        self.attempts = 0
        self.changed: List[defer.Deferred] = []

    def render_POST(self, request: Any) -> bytes:
        self.attempts += 1
        assert request.getHeader(b"content-type") == b"application/json"
        request.setResponseCode(self.code)
        if self.code == 200:
            self.bodies.append(json.loads(request.content.read()))
        waiting, self.changed = self.changed, []
        for d in waiting:
            d.callback(None)
        return b"ok"


async def until(condition: Any, reactor: Any, seconds: float = TIMEOUT) -> None:
    """
    Poll C{condition} every 10 ms until it holds, failing after C{seconds}.
    """
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition never held")


async def listen(reactor: Any, receiver: Receiver, port: int = 0) -> Any:
    return await TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(Site(receiver))


def sample(i: int) -> dict:
    return {"rule": "hot", "sensor": f"s-{i}", "kind": "temperature", "state": "firing", "since": 1.0 * i,
            "value": 41.0, "previous": "pending"}


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return value or 0.0


@pytest_twisted.ensureDeferred
async def test_events_are_posted_as_json_in_order(reactor: Any):
    """
    Each event reaches the receiver once, as the JSON it was, in order;
    deliveries are counted.
    """
    receiver = Receiver()
    port = await listen(reactor, receiver)
    registry = CollectorRegistry()
    notifier = WebhookNotifier([f"http://127.0.0.1:{port.getHost().port}/hook"], reactor, registry)
    notifier.startService()
    try:
        for i in range(5):
            notifier.notify(sample(i))
        label = f"127.0.0.1:{port.getHost().port}"
        # A delivery counts once its answer is back, a moment after the
        # receiver has the body.
        await until(lambda: metric(registry, "sensornet_webhook_deliveries_total", receiver=label) == 5, reactor)
        assert receiver.bodies == [sample(i) for i in range(5)]
        assert metric(registry, "sensornet_webhook_failures_total", receiver=label) == 0
    finally:
        await notifier.stopService()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_receiver_that_is_down_gets_every_event_when_it_comes_back(reactor: Any):
    """
    With the receiver's port closed, attempts fail and are retried with
    growing delays; once it listens again (on the same port), the events
    queued meanwhile arrive in order, and the failures were counted.
    """
    receiver = Receiver()
    port = await listen(reactor, receiver)
    number = port.getHost().port
    await port.stopListening()
    registry = CollectorRegistry()
    notifier = WebhookNotifier([f"http://127.0.0.1:{number}/"], reactor, registry, baseDelay=0.05, maxDelay=0.4,
                               maxAttempts=1000)
    notifier.startService()
    label = f"127.0.0.1:{number}"
    port = None
    try:
        notifier.notify(sample(1))
        notifier.notify(sample(2))
        await until(lambda: metric(registry, "sensornet_webhook_failures_total", receiver=label) >= 3, reactor)
        assert receiver.bodies == [] and notifier.pending() == 2
        port = await listen(reactor, receiver, number)
        await until(lambda: metric(registry, "sensornet_webhook_deliveries_total", receiver=label) == 2, reactor)
        assert receiver.bodies == [sample(1), sample(2)]
        assert notifier.pending() == 0
    finally:
        await notifier.stopService()
        if port is not None:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_failing_status_is_retried_until_accepted(reactor: Any):
    """
    A receiver answering 500 is retried (the event stays at the head of the
    queue) until it answers 2xx.
    """
    receiver = Receiver()
    receiver.code = 500
    port = await listen(reactor, receiver)
    registry = CollectorRegistry()
    notifier = WebhookNotifier([f"http://127.0.0.1:{port.getHost().port}/"], reactor, registry, baseDelay=0.02,
                               maxDelay=0.1, maxAttempts=1000)
    notifier.startService()
    try:
        notifier.notify(sample(7))
        await until(lambda: receiver.attempts >= 3, reactor)
        receiver.code = 200
        await until(lambda: receiver.bodies == [sample(7)], reactor)
        label = f"127.0.0.1:{port.getHost().port}"
        assert metric(registry, "sensornet_webhook_failures_total", receiver=label) >= 3
    finally:
        await notifier.stopService()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_queue_is_bounded_and_attempts_end(reactor: Any):
    """
    While the receiver is down, events beyond the queue's bound are dropped
    and counted; an event that fails every attempt is given up, counted,
    and the next one is tried.
    """
    receiver = Receiver()
    port = await listen(reactor, receiver)
    number = port.getHost().port
    await port.stopListening()
    registry = CollectorRegistry()
    notifier = WebhookNotifier([f"http://127.0.0.1:{number}/"], reactor, registry, maxQueue=3, baseDelay=0.01,
                               maxDelay=0.02, maxAttempts=3)
    label = f"127.0.0.1:{number}"
    notifier.startService()
    try:
        for i in range(5):
            notifier.notify(sample(i))
        assert metric(registry, "sensornet_webhook_dropped_total", receiver=label, reason="queue_full") == 2
        await until(lambda: notifier.pending() == 0, reactor)
        assert metric(registry, "sensornet_webhook_dropped_total", receiver=label, reason="gave_up") == 3
        assert metric(registry, "sensornet_webhook_failures_total", receiver=label) == 9
    finally:
        await notifier.stopService()


def test_only_http_urls_with_a_host_are_webhooks():
    """
    http and https URLs are taken; anything else is refused with a reason.
    """
    assert validateWebhookURL("https://hooks.example.com/x?token=1")
    for bad in ("ftp://x/", "http:///nohost", "localhost:80", ""):
        with pytest.raises(ValueError):
            validateWebhookURL(bad)

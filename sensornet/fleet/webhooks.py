"""
Alert notifications by webhook: each firing or resolved alert is POSTed as
JSON to every configured URL (C{--webhook URL}, repeatable).

Each URL has its own bounded queue, delivered in order, one request at a
time, with L{twisted.web.client.Agent}. A delivery that fails (no
connection, a timeout, a status other than 2xx) is tried again after an
exponential backoff (C{baseDelay * 2**attempt}, at most C{maxDelay}) up to
C{maxAttempts} times, then given up; while a receiver is down, later
alerts wait behind it, and when the queue is full a new alert is dropped.
Deliveries, failed attempts, give-ups and drops are counted in /metrics
(C{sensornet_webhook_*}), per receiver by its host (the full URL may hold a
secret).
"""

from __future__ import annotations

from collections import deque
from io import BytesIO
from typing import Any, Deque, Dict, Optional, Sequence
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.internet.protocol import Protocol, connectionDone
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers

from ..web.encoding import jsonBytes

__all__ = ["WebhookNotifier", "validateWebhookURL"]

_log = Logger()


def validateWebhookURL(url: str) -> str:
    """
    C{url} if it is an C{http://} or C{https://} URL with a host.

    @raise ValueError: It is not.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"a webhook must be an http:// or https:// URL with a host, not {url!r}")
    return url


class _Discard(Protocol):
    """
    Reads a response body to its end, keeping nothing; fires C{done} then.
    """

    def __init__(self, done: "Deferred[None]") -> None:
        self.done = done

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(None)


class _Receiver:
    """
    One URL's queue and retry state.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        self.label = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        self.queue: Deque[bytes] = deque()
        self.attempt = 0
        self.busy = False
        self.retry: Optional[IDelayedCall] = None
        self.request: Optional[Deferred[Any]] = None


class WebhookNotifier(Service):
    """
    Delivers alert events (dicts) to webhook receivers.

    @param urls: The receivers (L{validateWebhookURL}).
    @param reactor: Makes the connections and times the retries.
    @param registry: Where the counters go.
    @param maxQueue: Events held per receiver; more are dropped, counted.
    @param maxAttempts: Tries per event before giving it up.
    @param baseDelay: Seconds before the first retry; doubled each time.
    @param maxDelay: The longest wait between tries, seconds.
    @param timeout: Seconds one request may take.
    """

    def __init__(
        self,
        urls: Sequence[str],
        reactor: Any,
        registry: Optional[CollectorRegistry] = None,
        maxQueue: int = 1000,
        maxAttempts: int = 10,
        baseDelay: float = 1.0,
        maxDelay: float = 300.0,
        timeout: float = 10.0,
    ) -> None:
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self.maxQueue = maxQueue
        self.maxAttempts = maxAttempts
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.timeout = timeout
        self._receivers = [_Receiver(validateWebhookURL(url)) for url in urls]
        # Not persistent: alerts are rare, and nothing stays open between them.
        self._agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        registry = registry if registry is not None else CollectorRegistry()
        self.deliveries = Counter("sensornet_webhook_deliveries", "Alert events a webhook receiver accepted (2xx).",
                                  ["receiver"], registry=registry)
        self.failures = Counter("sensornet_webhook_failures",
                                "Webhook attempts that failed (no connection, timeout, not 2xx).",
                                ["receiver"], registry=registry)
        self.dropped = Counter("sensornet_webhook_dropped",
                               "Alert events never delivered: the queue was full, or every attempt failed.",
                               ["receiver", "reason"], registry=registry)
        self.queued = Gauge("sensornet_webhook_queue", "Alert events waiting for a webhook receiver.",
                            ["receiver"], registry=registry)
        for receiver in self._receivers:
            self.deliveries.labels(receiver=receiver.label)
            self.failures.labels(receiver=receiver.label)
            self.dropped.labels(receiver=receiver.label, reason="queue_full")
            self.dropped.labels(receiver=receiver.label, reason="gave_up")
            self.queued.labels(receiver=receiver.label).set(0)

    def notify(self, event: Dict[str, Any]) -> None:
        """
        Queue C{event} (JSON-able) for every receiver; never blocks, never
        raises for a full queue (the drop is counted).
        """
        body = jsonBytes(event)
        for receiver in self._receivers:
            if len(receiver.queue) >= self.maxQueue:
                self.dropped.labels(receiver=receiver.label, reason="queue_full").inc()
                continue
            receiver.queue.append(body)
            self.queued.labels(receiver=receiver.label).set(len(receiver.queue))
            if self.running:
                self._pump(receiver)

    def startService(self) -> None:
        super().startService()
        for receiver in self._receivers:
            self._pump(receiver)

    def stopService(self) -> "Deferred[None]":
        """
        Stop retrying and cancel requests in flight; what is queued is lost
        (alerts are state: the next firing will be sent again).
        """
        super().stopService()
        for receiver in self._receivers:
            if receiver.retry is not None and receiver.retry.active():
                receiver.retry.cancel()
            receiver.retry = None
            if receiver.request is not None:
                receiver.request.cancel()
        return succeed(None)

    def pending(self) -> int:
        """
        Events waiting, over all receivers.
        """
        return sum(len(r.queue) for r in self._receivers)

    def _pump(self, receiver: _Receiver) -> None:
        if receiver.busy or not receiver.queue or not self.running:
            return
        receiver.busy = True
        body = receiver.queue[0]
        d = self._agent.request(
            b"POST", receiver.url.encode("ascii"),
            Headers({b"content-type": [b"application/json"], b"user-agent": [b"sensornet-webhook"]}),
            FileBodyProducer(BytesIO(body)),
        )

        def received(response: Any) -> "Deferred[Any]":
            # Read (and discard) the body so the connection is released.
            done: Deferred[None] = Deferred()
            response.deliverBody(_Discard(done))
            return done.addCallback(lambda _: response.code)

        d.addCallback(received)
        d.addTimeout(self.timeout, self._clock)
        receiver.request = d
        d.addCallbacks(lambda code: self._answered(receiver, code), lambda f: self._failed(receiver, f))

    def _answered(self, receiver: _Receiver, code: int) -> None:
        if 200 <= code < 300:
            receiver.request = None
            receiver.busy = False
            receiver.attempt = 0
            receiver.queue.popleft()
            self.queued.labels(receiver=receiver.label).set(len(receiver.queue))
            self.deliveries.labels(receiver=receiver.label).inc()
            self._pump(receiver)
        else:
            self._failed(receiver, Failure(ValueError(f"answered {code}")))

    def _failed(self, receiver: _Receiver, failure: Failure) -> None:
        receiver.request = None
        if not self.running:
            receiver.busy = False
            return
        self.failures.labels(receiver=receiver.label).inc()
        receiver.attempt += 1
        if receiver.attempt >= self.maxAttempts:
            _log.warn("webhook {receiver}: giving up an alert after {n} attempts: {why}",
                      receiver=receiver.label, n=receiver.attempt, why=failure.getErrorMessage())
            receiver.queue.popleft()
            self.queued.labels(receiver=receiver.label).set(len(receiver.queue))
            self.dropped.labels(receiver=receiver.label, reason="gave_up").inc()
            receiver.attempt = 0
            receiver.busy = False
            self._pump(receiver)
            return
        delay = min(self.maxDelay, self.baseDelay * 2 ** (receiver.attempt - 1))
        if receiver.attempt == 1:
            _log.warn("webhook {receiver} failed ({why}); retrying with backoff",
                      receiver=receiver.label, why=failure.getErrorMessage())

        def again() -> None:
            receiver.retry = None
            receiver.busy = False
            self._pump(receiver)

        receiver.retry = self._clock.callLater(delay, again)

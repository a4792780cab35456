# -*- test-case-name: tests.test_streams -*-
"""
Moving bodies through the proxy with backpressure in both directions.

L{RequestBody} carries a client's request body to the backend as it
arrives: when the backend connection cannot take more, the client's socket
stops being read.  L{ResponseRelay} carries the backend's response body to
the client: when the client reads slowly, the backend's socket stops being
read.  Either way at most a socket buffer or two is held in memory, whatever
the body's size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from ._watchdog import Watchdog

__all__ = ["ReadTimeout", "RequestBody", "ResponseRelay"]


class ReadTimeout(Exception):
    """
    A backend said nothing for C{read_timeout} seconds in the middle of a
    response body.
    """

# Bytes held for a backend that cannot take them yet before the client is
# paused: one socket read's worth, so a fast client cannot grow it.
_HIGH_WATER = 65536


@implementer(IBodyProducer)
class RequestBody:
    """
    The client's body, produced for the backend request as it arrives.

    The client side calls L{write}, L{finish} and L{fail}; the agent side
    calls the L{IBodyProducer} methods, possibly more than once: an attempt
    that failed before a byte went out can be followed by another.

    @ivar started: Whether any byte has been handed to a backend; once it
        has, the request cannot be sent again.
    @ivar complete: Whether the client's body has fully arrived.
    @ivar stalled: Told C{True} when the backend stops taking the body
        (its connection's buffers are full) and C{False} when it takes it
        again.
    """

    def __init__(
        self,
        length: int | object,
        pause: Callable[[], None],
        resume: Callable[[], None],
    ) -> None:
        self.length = length if length is not None else UNKNOWN_LENGTH
        self._pause_client = pause
        self._resume_client = resume
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._consumer: Optional[IConsumer] = None
        self._done: Optional[Deferred[None]] = None
        self._paused = False
        self._client_paused = False
        self._failure: Optional[Failure] = None
        self._on_complete: list[Callable[[], None]] = []
        self.started = False
        self.complete = False
        self.stalled: Callable[[bool], None] = lambda stalled: None

    # The client side.

    def write(self, data: bytes) -> None:
        """
        A piece of the body arrived from the client.
        """
        if self._consumer is not None and not self._paused and not self._buffer:
            self.started = True
            self._consumer.write(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._client_paused:
            self._client_paused = True
            self._pause_client()

    def finish(self) -> None:
        """
        The whole body has arrived.
        """
        self.complete = True
        callbacks, self._on_complete = self._on_complete, []
        for callback in callbacks:
            callback()
        self._maybe_done()

    def fail(self, reason: Failure) -> None:
        """
        The client went away before its body was complete.
        """
        self._failure = reason
        self._buffer = []
        done, self._done = self._done, None
        if done is not None:
            done.errback(reason)

    def when_complete(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} once the client's body has fully arrived.
        """
        if self.complete:
            callback()
        else:
            self._on_complete.append(callback)

    # The backend side (IBodyProducer).

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        self._paused = False
        self._done = Deferred()
        done = self._done
        if self._failure is not None:
            self._done = None
            done.errback(self._failure)
            return done
        self._flush()
        return done

    def pauseProducing(self) -> None:
        self._paused = True
        self.stalled(True)
        if not self._client_paused:
            self._client_paused = True
            self._pause_client()

    def resumeProducing(self) -> None:
        self._paused = False
        self.stalled(False)
        self._flush()

    def stopProducing(self) -> None:
        # The attempt is over (failed or cancelled); what was not yet sent
        # stays buffered for another attempt if none was sent at all.
        self._consumer = None
        self._done = None

    def _flush(self) -> None:
        while self._buffer and self._consumer is not None and not self._paused:
            data = self._buffer.pop(0)
            self._buffered -= len(data)
            self.started = True
            self._consumer.write(data)
        if self._client_paused and not self._paused and self._buffered <= _HIGH_WATER:
            self._client_paused = False
            self._resume_client()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.complete and not self._buffer and self._done is not None:
            done, self._done = self._done, None
            done.callback(None)


@implementer(IPushProducer)
class ResponseRelay(Protocol):
    """
    Relays a backend response body to the client request, pausing the
    backend while the client's buffers are full.

    @ivar received: Whether any body byte arrived from the backend.
    """

    transport: Any  # the body's TransportProxyProducer (an IPushProducer)

    def __init__(
        self,
        request: Any,
        watchdog: Watchdog,
        done: Callable[[Optional[Failure]], None],
    ) -> None:
        """
        @param watchdog: Bounds each wait for the backend; the relay points
            it at the body.
        @param done: Called once the body is over: with L{None} when it is
            complete, else with why not.
        """
        self._request = request
        self._watchdog = watchdog
        self._done = done
        self._stopped = False
        self.timed_out = False

    def connectionMade(self) -> None:
        self._request.registerProducer(self, True)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        self._watchdog.kick()
        self._request.write(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        self._watchdog.stop()
        if self._request.channel is not None:
            # (No channel: the client is gone and took its producer along.)
            self._request.unregisterProducer()
        if self._stopped:
            return
        if self.timed_out:
            # Cut by read_timeout: with no length, the close would otherwise
            # look like the body's natural end.
            self._done(Failure(ReadTimeout(f"backend silent for {self._watchdog.seconds:g} s")))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self._done(None)
        else:
            self._done(reason)

    def pauseProducing(self) -> None:
        # The client is slow, not the backend: its silence is not counted.
        self._watchdog.disarm()
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._arm()
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        The client went away: drop the backend connection, which must not
        return to the pool with an unread body.
        """
        self._stopped = True
        self._watchdog.stop()
        self.transport.stopProducing()

    def _arm(self) -> None:
        if not self._stopped:
            self._watchdog.watch(self._expired)

    def _expired(self) -> None:
        self.timed_out = True
        self.transport.stopProducing()

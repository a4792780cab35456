# -*- test-case-name: tests.test_streams -*-
"""
Tests for L{txrevproxy._streams}: bodies through the proxy with
backpressure, over in-memory transports and a fake clock.

L{RequestBody} is driven as the client side (C{write}, C{finish}, C{fail})
and the agent side (the L{IBodyProducer} methods) drive it.  L{ResponseRelay}
relays into a real L{twisted.web.http.Request} on an L{HTTPChannel} whose
transport is a L{StringTransport}; the relay's own transport (the backend
connection) is another L{StringTransport}, whose C{producerState} shows
whether the backend is being read.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import HTTPChannel, PotentialDataLoss, Request
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface.verify import verifyObject

from txrevproxy._streams import ReadTimeout, RequestBody, ResponseRelay
from txrevproxy._watchdog import Watchdog


class RequestBodyTests(SynchronousTestCase):
    """
    L{RequestBody}: the client's body produced for the backend request.
    """

    def setUp(self) -> None:
        self.events: list[str] = []
        self.consumer = StringTransport()

    def body(self, length: int | None = None) -> RequestBody:
        return RequestBody(
            length,
            lambda: self.events.append("pause"),
            lambda: self.events.append("resume"),
        )

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IBodyProducer, self.body(3)))

    def test_length(self) -> None:
        """
        A known length is passed on (so the backend gets Content-Length);
        an unknown one is L{UNKNOWN_LENGTH} (so it gets chunked).
        """
        self.assertEqual(self.body(12).length, 12)
        self.assertIs(self.body(None).length, UNKNOWN_LENGTH)

    def test_bufferedUntilStarted(self) -> None:
        body = self.body(4)
        body.write(b"ab")
        body.write(b"cd")
        self.assertFalse(body.started)
        done = body.startProducing(self.consumer)
        self.assertEqual(self.consumer.value(), b"abcd")
        self.assertTrue(body.started)
        self.assertNoResult(done)
        body.finish()
        self.assertIsNone(self.successResultOf(done))

    def test_streamsOnceStarted(self) -> None:
        body = self.body()
        done = body.startProducing(self.consumer)
        self.assertFalse(body.started)
        body.write(b"x")
        self.assertEqual(self.consumer.value(), b"x")
        body.write(b"y")
        self.assertEqual(self.consumer.value(), b"xy")
        body.finish()
        self.successResultOf(done)

    def test_finishedBeforeStarted(self) -> None:
        body = self.body(3)
        body.write(b"abc")
        body.finish()
        done = body.startProducing(self.consumer)
        self.assertEqual(self.consumer.value(), b"abc")
        self.successResultOf(done)

    def test_highWaterPausesClient(self) -> None:
        """
        With no consumer to take it, the client is paused once the buffer
        passes one socket read's worth, and resumed once it drains.
        """
        body = self.body()
        body.write(b"a" * 60000)
        self.assertEqual(self.events, [])
        body.write(b"b" * 10000)
        body.write(b"c" * 10000)
        self.assertEqual(self.events, ["pause"])
        body.startProducing(self.consumer)
        self.assertEqual(self.events, ["pause", "resume"])
        self.assertEqual(len(self.consumer.value()), 80000)

    def test_backendPausePausesClient(self) -> None:
        """
        When the backend connection cannot take more, the client is paused
        and nothing more is written until it can.
        """
        body = self.body()
        body.startProducing(self.consumer)
        body.write(b"1")
        body.pauseProducing()
        self.assertEqual(self.events, ["pause"])
        body.write(b"2")
        self.assertEqual(self.consumer.value(), b"1")
        body.resumeProducing()
        self.assertEqual(self.consumer.value(), b"12")
        self.assertEqual(self.events, ["pause", "resume"])

    def test_fail(self) -> None:
        """
        A client that goes away fails the attempt in progress, and any
        later one at once.
        """
        body = self.body(10)
        done = body.startProducing(self.consumer)
        body.write(b"part")
        body.fail(Failure(ConnectionLost()))
        self.failureResultOf(done, ConnectionLost)
        self.failureResultOf(body.startProducing(StringTransport()), ConnectionLost)

    def test_anotherAttemptWhenNothingWasSent(self) -> None:
        """
        An attempt stopped before any byte went out leaves the body whole
        for the next attempt.
        """
        body = self.body(3)
        body.startProducing(self.consumer)
        body.stopProducing()
        self.assertFalse(body.started)
        body.write(b"abc")
        body.finish()
        second = StringTransport()
        done = body.startProducing(second)
        self.assertEqual(self.consumer.value(), b"")
        self.assertEqual(second.value(), b"abc")
        self.successResultOf(done)

    def test_whenComplete(self) -> None:
        body = self.body()
        calls: list[int] = []
        body.when_complete(lambda: calls.append(1))
        self.assertEqual(calls, [])
        body.finish()
        self.assertEqual(calls, [1])
        self.assertTrue(body.complete)
        body.when_complete(lambda: calls.append(2))
        self.assertEqual(calls, [1, 2])


class _Held(Request):
    """
    A request that does nothing when its head arrives, so the test can
    write its response.
    """

    def process(self) -> None:
        pass


class ResponseRelayTests(SynchronousTestCase):
    """
    L{ResponseRelay}: the backend's body relayed to the client.
    """

    idle = 5.0

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.client = StringTransport()
        self.channel = HTTPChannel()
        self.channel.requestFactory = _Held
        self.channel.callLater = self.clock.callLater
        self.channel.makeConnection(self.client)
        self.channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: example\r\n\r\n")
        self.request = self.channel.requests[-1]
        self.backend = StringTransport()
        self.results: list[Failure | None] = []
        self.relay = ResponseRelay(
            self.request, Watchdog(self.clock, self.idle), self.results.append
        )
        self.relay.makeConnection(self.backend)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IPushProducer, self.relay))

    def test_relaysData(self) -> None:
        self.relay.dataReceived(b"hello")
        self.relay.dataReceived(b" world")
        self.assertIn(b"hello", self.client.value())
        self.assertIn(b" world", self.client.value())

    def test_clientPausePausesBackend(self) -> None:
        """
        When the client's transport is full (it pauses the channel), the
        backend connection stops being read; when it drains, reading
        resumes.
        """
        self.assertIs(self.client.producer, self.channel)
        self.client.producer.pauseProducing()
        self.assertEqual(self.backend.producerState, "paused")
        self.client.producer.resumeProducing()
        self.assertEqual(self.backend.producerState, "producing")

    def test_idleTimeout(self) -> None:
        """
        A backend silent for the idle timeout is dropped, and the relay
        reports the failure when the response ends.
        """
        self.clock.advance(self.idle - 0.1)
        self.assertEqual(self.backend.producerState, "producing")
        self.clock.advance(0.1)
        self.assertEqual(self.backend.producerState, "stopped")
        self.assertTrue(self.relay.timed_out)
        self.relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
        [result] = self.results
        assert result is not None
        self.assertTrue(result.check(ReadTimeout))

    def test_idleTimeoutWithoutLength(self) -> None:
        """
        A body with no length ends when the backend closes, so Twisted
        reports the timeout's close as a normal end (PotentialDataLoss):
        the relay still reports the timeout, never a complete body.
        """
        self.clock.advance(self.idle)
        self.relay.connectionLost(Failure(PotentialDataLoss()))
        [result] = self.results
        assert result is not None
        self.assertTrue(result.check(ReadTimeout))

    def test_dataResetsTimer(self) -> None:
        self.clock.advance(4)
        self.relay.dataReceived(b"x")
        self.clock.advance(4)
        self.assertEqual(self.backend.producerState, "producing")
        self.clock.advance(1)
        self.assertEqual(self.backend.producerState, "stopped")

    def test_pausedTimeNotCounted(self) -> None:
        """
        While the client is slow, the backend's silence is not its fault.
        """
        self.relay.pauseProducing()
        self.clock.advance(100)
        self.assertEqual(self.backend.producerState, "paused")
        self.relay.resumeProducing()
        self.clock.advance(self.idle - 0.1)
        self.assertEqual(self.backend.producerState, "producing")
        self.clock.advance(0.1)
        self.assertEqual(self.backend.producerState, "stopped")

    def assertSucceeded(self) -> None:
        """
        The relay reported success, unregistered itself and left no timer.
        """
        self.assertEqual(self.results, [None])
        self.assertIsNone(self.channel._requestProducer)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_completeResponse(self) -> None:
        self.relay.connectionLost(Failure(ResponseDone()))
        self.assertSucceeded()

    def test_closeDelimitedResponse(self) -> None:
        """
        A body delimited by the end of the backend connection is complete.
        """
        self.relay.connectionLost(Failure(PotentialDataLoss()))
        self.assertSucceeded()

    def test_failedResponse(self) -> None:
        self.relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionDone())])))
        [result] = self.results
        assert result is not None
        self.assertTrue(result.check(ResponseFailed))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopProducing(self) -> None:
        """
        The client went away: the backend connection is dropped, and the
        end of the response reports nothing.
        """
        self.relay.stopProducing()
        self.assertEqual(self.backend.producerState, "stopped")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionDone())])))
        self.assertEqual(self.results, [])

    def test_stopProducingAfterClientConnectionLost(self) -> None:
        """
        The order the proxy sees when a client disconnects mid-body: the
        client connection is lost (the request loses its channel), the relay
        is stopped, then the backend response ends.  Nothing raises.
        """
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.relay.stopProducing()
        self.relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionDone())])))
        self.assertEqual(self.results, [])

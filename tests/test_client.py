"""
The backend connection protocol (L{txrevproxy._client}) on a
L{StringTransport}: the bytes it sends, what it makes of what comes back,
when it goes back to the pool, and how each failure is reported.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from zope.interface.verify import verifyObject

from txrevproxy._client import BackendProtocol
from txrevproxy._framing import BadResponse
from txrevproxy._response import BackendResponse
from txrevproxy._streams import RequestBody

HOST = [(b"Host", b"backend")]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"


class Body(Protocol):
    """
    Collects a response body and how it ended.
    """

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.end: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.end = reason


class ProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.idle: list[BackendProtocol] = []
        self.protocol = BackendProtocol(self.idle.append)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, method: bytes = b"GET", body: Any = None, headers: Any = HOST) -> Deferred[Any]:
        return self.protocol.request(method, b"/p?q", list(headers), body)

    def answer(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def held(self) -> Any:
        """
        A response whose first body bytes came with its head and are held
        (reading paused) until someone takes the body.
        """
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        response = self.successResultOf(d)
        self.assertEqual(self.transport.producerState, "paused")
        return response

    def test_requestBytes(self) -> None:
        """
        The head is the request line, the fields in the order given, the
        framing the body calls for, and nothing else.
        """
        self.send(headers=[(b"Host", b"b"), (b"X-Z", b"1"), (b"x-a", b"2")])
        self.assertEqual(self.transport.value(), b"GET /p?q HTTP/1.1\r\nHost: b\r\nX-Z: 1\r\nx-a: 2\r\n\r\n")

    def test_emptyPost(self) -> None:
        self.send(b"POST")
        self.assertTrue(self.transport.value().endswith(b"Host: backend\r\nContent-Length: 0\r\n\r\n"))

    def test_notPersistent(self) -> None:
        self.protocol.request(b"GET", b"/", list(HOST), None, persistent=False)
        self.assertIn(b"\r\nConnection: close\r\n", self.transport.value())

    def test_injectionRefused(self) -> None:
        """
        A CR or LF inside a value would add a line of its own: nothing is
        sent, and the request fails as never sent.
        """
        for value in (b"a\r\nX-Evil: 1", b"a\nb", b"a\rb"):
            with self.subTest(value=value):
                d = self.send(headers=[(b"Host", b"b"), (b"X", value)])
                self.failureResultOf(d, RequestNotSent)
                self.assertEqual(self.transport.value(), b"")
                self.assertEqual(self.protocol.state, "QUIESCENT")
                # Nothing was sent: the connection goes back to the pool.
                self.assertEqual(self.idle[-1:], [self.protocol])

    def test_response(self) -> None:
        d = self.send()
        self.answer(OK)
        response = self.successResultOf(d)
        self.assertTrue(verifyObject(IResponse, response))
        self.assertEqual((response.code, response.phrase, response.length), (200, b"OK", 5))
        self.assertEqual(response.headers.getRawHeaders(b"x-a"), [b"1"])
        body = Body()
        response.deliverBody(body)
        self.assertEqual(b"".join(body.data), b"hello")
        assert body.end is not None
        self.assertTrue(body.end.check(ResponseDone))

    def test_backToPool(self) -> None:
        """
        A complete response on a keep-alive connection puts it back, idle,
        before anyone sees the response.
        """
        d = self.send()
        self.answer(OK)
        self.assertEqual(self.idle, [self.protocol])
        self.assertEqual(self.protocol.state, "QUIESCENT")
        self.successResultOf(d)
        self.send()
        self.assertEqual(self.protocol.requests_made, 2)

    def test_notReused(self) -> None:
        """
        C{Connection: close}, HTTP/1.0 without keep-alive, a body ended by
        the close, and bytes nobody asked for all close the connection.
        """
        for answer in (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxy",
        ):
            with self.subTest(answer=answer):
                self.setUp()
                self.send()
                self.answer(answer)
                self.assertEqual(self.idle, [])
                self.assertTrue(self.transport.disconnecting)

    def test_untilClose(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\n\r\nsome")
        response = self.successResultOf(d)
        self.assertIs(response.length, UNKNOWN_LENGTH)
        body = Body()
        response.deliverBody(body)
        self.answer(b" more")
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(b"".join(body.data), b"some more")
        assert body.end is not None
        self.assertTrue(body.end.check(PotentialDataLoss))

    def test_chunked(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        body = Body()
        self.successResultOf(d).deliverBody(body)
        self.answer(b"0\r\n\r\n")
        self.assertEqual(b"".join(body.data), b"abc")
        self.assertEqual(self.idle, [self.protocol])

    def test_headAndNoBody(self) -> None:
        """
        A HEAD answer and a 204 or 304 have no body whatever their length
        says; a HEAD answer keeps its Content-Length, as Agent's does.
        """
        d = self.send(b"HEAD")
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"99"])
        self.assertEqual(response.length, 0)
        self.assertEqual(self.idle, [self.protocol])
        d = self.send()
        self.answer(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n")
        self.assertEqual(self.successResultOf(d).length, 0)

    def test_informational(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Hints\r\nLink: x\r\n\r\n")
        self.assertNoResult(d)
        self.answer(OK)
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_takeBody(self) -> None:
        """
        A body that came whole with the head can be taken as bytes, once.
        """
        d = self.send()
        self.answer(OK)
        response = self.successResultOf(d)
        self.assertEqual(response.take_body(), b"hello")
        self.assertIsNone(response.take_body())

    def test_takeBodyNotYet(self) -> None:
        d = self.send()
        self.answer(OK[:-2])
        self.assertIsNone(self.successResultOf(d).take_body())

    def test_heldBodyPausesReading(self) -> None:
        """
        Body bytes that arrive before anyone asked for the body are held,
        and reading stops until someone does.
        """
        response = self.held()
        body = Body()
        response.deliverBody(body)
        self.assertEqual(self.transport.producerState, "producing")
        self.answer(b"world")
        self.assertEqual(b"".join(body.data), b"helloworld")

    def test_consumerPauses(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        body = Body()
        self.successResultOf(d).deliverBody(body)
        body.transport.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        body.transport.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")

    def test_consumerStops(self) -> None:
        """
        A consumer that gives up the body drops the connection: it cannot
        be reused with the rest unread.
        """
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        body = Body()
        self.successResultOf(d).deliverBody(body)
        body.transport.stopProducing()
        self.assertTrue(self.transport.disconnecting)
        assert body.end is not None
        self.assertTrue(body.end.check(ResponseFailed))
        self.assertEqual(self.idle, [])

    def test_consumerStopsAsBodyEnds(self) -> None:
        """
        A consumer that gives up on the body in the very read that ends it
        leaves the connection closed, never back in the pool.
        """
        for answer in (
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ):
            with self.subTest(answer=answer):
                self.setUp()
                d = self.send()
                self.answer(answer)
                self.successResultOf(d).deliverBody(_StopAtOnce())
                self.answer(b"body" if b"Length" in answer else b"4\r\nbody\r\n0\r\n\r\n")
                self.assertEqual(self.idle, [])
                self.assertEqual(self.protocol.state, "CLOSED")

    def test_pauseWhileHandedOver(self) -> None:
        """
        A consumer that pauses while the held bytes are handed to it (a slow
        client) stays paused: reading resumes only when it says so.
        """
        response = self.held()
        consumer = _PauseAtOnce()
        response.deliverBody(consumer)
        self.assertEqual(self.transport.producerState, "paused")
        consumer.transport.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")

    # Failures.

    def test_neverReceived(self) -> None:
        d = self.send()
        self.protocol.connectionLost(Failure(ConnectionLost()))
        failure = self.failureResultOf(d, ResponseNeverReceived)
        self.assertFalse(failure.value.reused_connection)

    def test_reusedMarked(self) -> None:
        """
        A failure on a connection that carried a request before may only
        mean the backend closed it while idle: it says so.
        """
        self.send()
        self.answer(OK)
        d = self.send()
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.failureResultOf(d, ResponseNeverReceived).value.reused_connection)

    def test_partialHead(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nX-A")
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ResponseFailed)

    def test_badHead(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
        failure = self.failureResultOf(d, ResponseFailed)
        self.assertTrue(failure.value.reasons[0].check(BadResponse))
        self.assertEqual(self.protocol.state, "CLOSED")
        self.assertEqual(self.idle, [])

    def test_badChunkWithHead(self) -> None:
        """
        A framing error in the bytes that came with the head fails the
        request itself (a 502), not a response already under way.
        """
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        self.failureResultOf(d, ResponseFailed)

    def test_abortedMidBody(self) -> None:
        """
        A connection dropped from our side in the middle of a body with a
        length does not pass the cut for the body's end.
        """
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
        body = Body()
        self.successResultOf(d).deliverBody(body)
        self.protocol.abort()
        self.protocol.connectionLost(Failure(ConnectionDone()))
        assert body.end is not None
        self.assertTrue(body.end.check(ResponseFailed))

    def test_lostAfterInterim(self) -> None:
        """
        A backend that sent a 1xx has answered something: losing it then is
        a failed response, not one never received (so not retried).
        """
        d = self.send()
        self.answer(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ResponseFailed)

    def test_cutBody(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
        body = Body()
        self.successResultOf(d).deliverBody(body)
        self.protocol.connectionLost(Failure(ConnectionLost()))
        assert body.end is not None
        self.assertTrue(body.end.check(ResponseFailed))

    def test_headTooLarge(self) -> None:
        d = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\n" + b"X-A: " + b"a" * 70000)
        self.failureResultOf(d, ResponseFailed)

    def test_busy(self) -> None:
        self.send()
        self.failureResultOf(self.send(), RequestNotSent)

    def test_cancel(self) -> None:
        d = self.send()
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.protocol.state, "CLOSED")

    def test_abort(self) -> None:
        d = self.protocol.abort()
        self.assertNoResult(d)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)
        self.successResultOf(self.protocol.abort())


class RequestBodyTests(SynchronousTestCase):
    """
    Request bodies: framed by their length or chunked, and, unlike
    Twisted's client, a response may arrive before the body is all sent.
    """

    def setUp(self) -> None:
        self.idle: list[BackendProtocol] = []
        self.protocol = BackendProtocol(self.idle.append)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def stream(self, length: Any = UNKNOWN_LENGTH) -> RequestBody:
        return RequestBody(length, lambda: None, lambda: None)

    def test_contentLength(self) -> None:
        from io import BytesIO

        producer = FileBodyProducer(BytesIO(b"abc"), cooperator=_Immediate())
        d = self.protocol.request(b"PUT", b"/", list(HOST), producer)
        self.assertTrue(self.transport.value().endswith(b"Content-Length: 3\r\n\r\nabc"))
        self.protocol.dataReceived(OK)
        self.successResultOf(d)
        self.assertEqual(self.idle, [self.protocol])

    def test_chunked(self) -> None:
        body = self.stream()
        self.protocol.request(b"POST", b"/", list(HOST), body)
        body.write(b"abc")
        body.finish()
        self.assertTrue(self.transport.value().endswith(b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"))

    def test_wrongLength(self) -> None:
        body = self.stream(length=2)
        d = self.protocol.request(b"POST", b"/", list(HOST), body)
        body.write(b"abc")
        self.failureResultOf(d, RequestTransmissionFailed)
        self.assertEqual(self.protocol.state, "CLOSED")

    def test_earlyResponse(self) -> None:
        """
        A backend answering before the body is in is relayed at once; the
        rest of the body is not sent and the connection is not reused.
        """
        body = self.stream()
        d = self.protocol.request(b"POST", b"/", list(HOST), body)
        body.write(b"part")
        self.protocol.dataReceived(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.successResultOf(d).code, 413)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.idle, [])

    def test_lateProducerWrite(self) -> None:
        """
        A producer that writes after its request is over writes nothing:
        those bytes would land in the next request on the connection.
        """
        body = self.stream()
        self.protocol.request(b"POST", b"/a", list(HOST), body)
        writer = body._consumer
        assert writer is not None
        body.finish()
        self.protocol.dataReceived(OK)
        self.protocol.request(b"GET", b"/b", list(HOST), None)
        self.transport.clear()
        writer.write(b"SMUGGLED")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.protocol.state, "BUSY")

    def test_clientGone(self) -> None:
        body = self.stream()
        d = self.protocol.request(b"POST", b"/", list(HOST), body)
        body.fail(Failure(ConnectionLost()))
        self.failureResultOf(d, RequestTransmissionFailed)


class _StopAtOnce(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.stopProducing()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        pass


class _PauseAtOnce(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.pauseProducing()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        pass


class _Immediate:
    """
    A cooperator that runs a task to its end at once.
    """

    def cooperate(self, iterator: Any) -> Any:
        for _ in iterator:
            pass
        return _Done()


class _Done:
    def whenDone(self) -> Deferred[None]:
        return succeed(None)

    def stop(self) -> None:
        pass

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass


class ResponseTests(SynchronousTestCase):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IResponse, BackendResponse(BackendProtocol(lambda p: None))))

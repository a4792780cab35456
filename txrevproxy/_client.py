# -*- test-case-name: tests.test_client,tests.test_pool,tests.test_hygiene -*-
"""
One HTTP/1.1 connection to a backend, as the keep-alive pool holds it.

Twisted's own client protocol is built for every use a client has; a proxy
needs one narrow path, taken for every request it relays, and strictness
Twisted's parser does not have (see L{txrevproxy._responses}).  This
protocol sends one request at a time, reads the head in one piece, and
passes body bytes straight through, which is most of what the proxy costs
per request.  It fits L{twisted.web.client.HTTPConnectionPool} as Twisted's
protocol does: a C{state} that is C{"QUIESCENT"} when idle, a callback
that hands the connection back, C{abort()}.

Unlike Twisted's, it delivers a response as soon as its head arrives, even
while the request body is still being sent: a backend that answers an
upload early (C{413}, say) is relayed at once.

Failures are Twisted's own types, so a caller tells them apart as it would
with L{twisted.web.client.Agent}: L{RequestNotSent}, L{RequestTransmission
Failed}, L{ResponseNeverReceived} and L{ResponseFailed}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
    WrongBodyLength,
)
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from ._framing import MAX_RESPONSE_HEAD, BadResponse, ChunkedDecoder, Head, head_end, parse_head
from ._response import BackendResponse

__all__ = ["BackendFactory", "BackendProtocol", "Pairs"]

Pairs = list[tuple[bytes, bytes]]

_NO_BODY_CODES = frozenset({204, 304})
# How a body ends well: made once, as a Failure is costly to make and these
# are only ever read.
_DONE = Failure(ResponseDone())
_CLOSED = Failure(PotentialDataLoss())
_EMPTY_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


@implementer(IConsumer)
class _BodyWriter:
    """
    Writes a request body to the connection, framed by its length (which it
    holds the producer to) or chunked.
    """

    def __init__(self, protocol: BackendProtocol, length: Optional[int]) -> None:
        self._protocol = protocol
        self._left = length
        self.done = False

    def write(self, data: bytes) -> None:
        if self.done or not data:
            # (A producer writing after its request is over would put bytes
            # into whatever the connection carries next.)
            return
        if self._left is None:
            self._protocol.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
            return
        self._left -= len(data)
        if self._left < 0:
            # Sending it would put bytes of no request on the connection.
            self._protocol.body_failed(self, WrongBodyLength("request body longer than its Content-Length"))
            return
        self._protocol.transport.write(data)

    def finish(self) -> None:
        if self.done:
            return
        if self._left is None:
            self._protocol.transport.write(b"0\r\n\r\n")
        elif self._left:
            raise WrongBodyLength("request body shorter than its Content-Length")

    # The producer is registered with the transport itself.
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


class BackendProtocol(Protocol):
    """
    A keep-alive connection to a backend carrying one request at a time.

    @ivar state: C{"QUIESCENT"} while idle and reusable (what the pool
        checks), C{"BUSY"} while a request is under way, C{"CLOSED"} once
        the connection is gone or will not be reused.
    @ivar idle_limit: How long the backend said (C{Keep-Alive: timeout=N})
        it keeps this connection open when idle, if it said.
    @ivar requests_made: How many requests this connection has carried; a
        failure on one that carried some already may just be a stale
        keep-alive connection.
    """

    transport: Any  # a TCP or TLS transport: a producer with abortConnection
    state = "CONNECTING"
    lost = False
    idle_limit: Optional[float] = None
    requests_made = 0

    def __init__(self, quiescent: Callable[[BackendProtocol], None]) -> None:
        self._quiescent = quiescent
        self._answer: Optional[Deferred[Any]] = None
        self._response: Optional[BackendResponse] = None
        self._body: Optional[IBodyProducer] = None
        self._writer: Optional[_BodyWriter] = None
        self._buffer = b""
        self._heard = False
        self._method = b""
        self._persistent = True
        self._left: Optional[int] = None
        self._chunks: Optional[ChunkedDecoder] = None
        self._closed: list[Deferred[None]] = []
        self.paused = False

    def connectionMade(self) -> None:
        self.state = "QUIESCENT"

    # Sending.

    def request(
        self,
        method: bytes,
        target: bytes,
        headers: Pairs,
        body: Optional[IBodyProducer],
        persistent: bool = True,
    ) -> Deferred[Any]:
        """
        Send a request; the result fires with its L{BackendResponse} once
        the head has arrived.

        @param headers: Every field to send but the framing ones, which
            follow from C{body}; C{Host} must be among them.
        @param persistent: Whether to offer to keep the connection open.
        """
        if self.state != "QUIESCENT":
            return fail(RequestNotSent())
        framing = b"" if persistent else b"Connection: close\r\n"
        length: Optional[int] = None
        if body is None:
            if method in _EMPTY_BODY_METHODS:
                framing += b"Content-Length: 0\r\n"
        elif body.length is UNKNOWN_LENGTH:
            framing += b"Transfer-Encoding: chunked\r\n"
        else:
            length = int(body.length)  # type: ignore[arg-type]
            framing += b"Content-Length: %d\r\n" % length
        fields = b"".join([name + b": " + value + b"\r\n" for name, value in headers])
        head = b"%s %s HTTP/1.1\r\n%s%s\r\n" % (method, target, fields, framing)
        # One line break for the request line, each field, each framing
        # line and the empty line: a CR or LF inside a value (which would
        # be request smuggling) shows as one too many, and nothing is sent.
        breaks = 2 + len(headers) + framing.count(b"\n")
        if head.count(b"\n") != breaks or head.count(b"\r") != breaks:
            # Nothing was written: the connection is as good as it was.
            self._quiescent(self)
            return fail(RequestNotSent())
        self.state = "BUSY"
        self._heard = False
        self.requests_made += 1
        self._method = method
        self._persistent = persistent
        self._buffer = b""
        self._response = None
        answer: Deferred[Any] = Deferred(self._cancel)
        self._answer = answer
        self.transport.write(head)
        if body is not None:
            self._send_body(body, length)
        return answer

    def _send_body(self, body: IBodyProducer, length: Optional[int]) -> None:
        self._body = body
        self._writer = writer = _BodyWriter(self, length)
        self.transport.registerProducer(body, True)
        try:
            d = body.startProducing(writer)
        except Exception:
            self._body_failed(Failure())
            return
        d.addCallbacks(self._body_sent, self._body_failed, callbackArgs=(body,), errbackArgs=(body,))

    def _body_sent(self, _: object, body: IBodyProducer) -> None:
        if body is not self._body or self._writer is None:
            return
        try:
            self._writer.finish()
        except WrongBodyLength:
            self._body_failed(Failure(), body)
            return
        self._stop_body()

    def body_failed(self, writer: _BodyWriter, reason: Exception) -> None:
        """
        The body C{writer} is sending cannot be: the request fails, and the
        connection is dropped.
        """
        if writer is self._writer:
            self._body_failed(Failure(reason), self._body)

    def _body_failed(self, reason: Failure, body: Optional[IBodyProducer] = None) -> None:
        if body is not None and body is not self._body:
            return
        # (Giving up stops the producer, if it is still at work.)
        self._give_up(RequestTransmissionFailed([reason]))

    def _stop_body(self) -> None:
        if self._body is not None:
            if self._writer is not None:
                self._writer.done = True
            self._body = self._writer = None
            if self.transport is not None:
                self.transport.unregisterProducer()

    def _cancel(self, answer: Deferred[Any]) -> None:
        # (The Deferred then fails with CancelledError on its own.)
        self._answer = None
        self._give_up(None)

    # Receiving.

    def dataReceived(self, data: bytes) -> None:
        if self.state != "BUSY":
            # Nothing was asked: a backend talking out of turn is not
            # trusted with another request.
            self._close()
            return
        try:
            self._heard = True
            if self._response is None:
                self._head_received(data)
            else:
                self._body_received(data)
        except BadResponse:
            self._give_up(ResponseFailed([Failure()]))

    def _head_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        while True:
            end = head_end(buffer)
            if (end if end >= 0 else len(buffer)) > MAX_RESPONSE_HEAD:
                raise BadResponse(f"response head larger than {MAX_RESPONSE_HEAD} bytes")
            if end < 0:
                self._buffer = buffer
                return
            head = parse_head(buffer[:end])
            buffer = buffer[end:]
            if head.code >= 200:
                break
            # 1xx: never relayed; the real answer follows.
        self._buffer = b""
        response = self._start_body(head)
        if buffer or self._left == 0:
            # What came with the head is taken in before the response is
            # handed over: a small response is then complete, and its
            # connection back in the pool, by the time anyone sees it.
            self._body_received(buffer)
        answer, self._answer = self._answer, None
        if answer is not None:
            answer.callback(response)
        response.announced()

    def _start_body(self, head: Head) -> BackendResponse:
        response = self._response = BackendResponse(self)
        self.idle_limit = head.idle_limit
        fields = head.fields
        if self._method == b"HEAD" or head.code in _NO_BODY_CODES:
            self._left = 0
            if self._method == b"HEAD" and head.length is not None:
                # As Agent does: a HEAD answer keeps the length it announces.
                fields = (*fields, (b"Content-Length", b"%d" % head.length))
        elif head.chunked:
            self._chunks = ChunkedDecoder()
        else:
            self._left = head.length
        length = self._left if self._left is not None else UNKNOWN_LENGTH
        framed = self._chunks is not None or self._left is not None
        response.begin(head, fields, length, keep_alive=head.keep_alive and framed)
        return response

    def _body_received(self, data: bytes) -> None:
        response = self._response
        assert response is not None
        rest = b""
        chunks = self._chunks
        if chunks is not None:
            pieces, rest = chunks.feed(data)
            for piece in pieces:
                response.deliver(piece)
                if self._response is not response:
                    return  # (Its consumer gave up on it: the connection is gone.)
            if not chunks.done:
                return
        elif self._left is not None:
            if len(data) > self._left:
                data, rest = data[: self._left], data[self._left :]
            self._left -= len(data)
            left = self._left
            if data:
                response.deliver(data)
                if self._response is not response:
                    return
            if left:
                return
        else:
            response.deliver(data)  # until the backend closes
            return
        # The connection goes back to the pool before the response ends, so
        # that whatever its end sets off can use it again.
        self._response = None
        self._chunks = self._left = None
        if rest or self._body is not None or not (response.keep_alive and self._persistent):
            # Bytes nobody asked for, or a request body the backend did not
            # wait for: the connection is not reused.
            self._close()
        else:
            self.resume()
            self.state = "QUIESCENT"
            self._quiescent(self)
        response.finish(_DONE)

    # Ending.

    def _give_up(self, reason: Optional[Exception]) -> None:
        """
        Fail what is under way with C{reason} (nothing when cancelled) and
        drop the connection.
        """
        answer, self._answer = self._answer, None
        response, self._response = self._response, None
        self._close(abort=True)
        if answer is not None:
            if reason is not None:
                self._fail(answer, reason)
        elif response is not None and not response.finished:
            response.finish(Failure(reason or CancelledError()))

    # What the response's body consumer asks for.

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pauseProducing()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()

    def stop(self) -> None:
        """
        The rest of the response is not wanted: the connection cannot be
        reused with it unread, so it is dropped.
        """
        self._give_up(ResponseFailed([Failure(ConnectionAborted())]))

    def _close(self, abort: bool = False) -> None:
        self.state = "CLOSED"
        self._chunks = self._left = None
        if self._body is not None:
            body = self._body
            self._stop_body()
            body.stopProducing()
        if self.transport is not None:
            if abort:
                self.transport.abortConnection()
            else:
                self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.state = "CLOSED"
        self.lost = True
        sending = self._body is not None
        self._body = self._writer = None
        answer, self._answer = self._answer, None
        response, self._response = self._response, None
        if answer is not None:
            if self._heard:
                self._fail(answer, ResponseFailed([reason]))  # (part of an answer came)
            elif sending:
                self._fail(answer, RequestTransmissionFailed([reason]))
            else:
                self._fail(answer, ResponseNeverReceived([reason]))
        elif response is not None and not response.finished:
            if response.until_close:
                response.finish(_CLOSED)  # ended by the close
            else:
                response.finish(Failure(ResponseFailed([reason])))
        closed, self._closed = self._closed, []
        for d in closed:
            d.callback(None)

    def _fail(self, answer: Deferred[Any], reason: Exception) -> None:
        """
        Fail a request; on a connection that carried requests before, the
        failure is marked C{reused_connection}, since it may only mean the
        backend closed the connection while it was idle.
        """
        reason.reused_connection = self.requests_made > 1  # type: ignore[attr-defined]
        answer.errback(reason)

    def abort(self) -> Deferred[None]:
        """
        Drop the connection now; fires once it is gone (the pool's
        C{closeCachedConnections} waits on this).
        """
        if self.lost:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed.append(d)
        self._close(abort=True)
        return d


class BackendFactory(Factory):
    """
    Builds the pool's connections; C{quiescent} puts one back in the pool.
    """

    noisy = False

    def __init__(self, quiescent: Callable[[BackendProtocol], None], description: str) -> None:
        self._quiescent = quiescent
        self.description = description

    def buildProtocol(self, addr: Any) -> BackendProtocol:
        return BackendProtocol(self._quiescent)

# -*- test-case-name: tests.test_client -*-
"""
A backend's response as the proxy receives it: an L{IResponse} whose body
is passed on as it arrives.

The fields stay pairs, as parsed; L{twisted.web.http_headers.
Headers} is built only for a caller that asks for C{headers}, which the
proxy's own path does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

if TYPE_CHECKING:
    from ._client import BackendProtocol
    from ._framing import Head

__all__ = ["BackendResponse", "response_pairs"]


@implementer(IPushProducer)
class _BodyTransport:
    """
    What a body consumer sees as its transport: pausing it pauses reading
    from the backend; stopping it gives up the rest of the response (and
    the connection with it).
    """

    def __init__(self, response: BackendResponse) -> None:
        self._response = response

    def pauseProducing(self) -> None:
        connection = self._response.connection
        if connection is not None:
            connection.pause()

    def resumeProducing(self) -> None:
        connection = self._response.connection
        if connection is not None:
            connection.resume()

    def stopProducing(self) -> None:
        connection = self._response.connection
        if connection is not None:
            connection.stop()


class _Taken(Protocol):
    """
    Stands for the consumer of a body taken whole (L{BackendResponse.take_body}).
    """


@implementer(IResponse)
class BackendResponse:
    """
    One response from a backend connection.

    @ivar connection: The connection it arrives on, until it is complete.
    @ivar head: The parsed head, once it has arrived.
    @ivar pairs: Its end-to-end fields, in order, as sent.
    @ivar keep_alive: Whether its connection may carry another request.
    @ivar finished: Whether the body is over, complete or not.
    """

    version = (b"HTTP", 1, 1)
    code = 0
    phrase = b""
    length: int | object = UNKNOWN_LENGTH
    request = None
    previousResponse = None

    def __init__(self, connection: BackendProtocol) -> None:
        self.connection: Optional[BackendProtocol] = connection
        self.head: Optional[Head] = None
        self.pairs: Sequence[tuple[bytes, bytes]] = ()
        self.keep_alive = False
        self.finished = False
        self._consumer: Optional[Any] = None
        self._held: list[bytes] = []
        self._end: Optional[Failure] = None
        self._headers: Optional[Headers] = None
        self._announced = False
        self._held_pause = False

    @property
    def until_close(self) -> bool:
        """
        Whether the body ends when the backend closes the connection (it
        has neither a length nor chunks).
        """
        return self.head is not None and not self.head.chunked and self.length is UNKNOWN_LENGTH

    def begin(
        self, head: Head, pairs: Sequence[tuple[bytes, bytes]], length: int | object, keep_alive: bool
    ) -> None:
        """
        The head has arrived.
        """
        self.head = head
        self.version = (b"HTTP", 1, head.minor)
        self.code = head.code
        self.phrase = head.phrase
        self.pairs = pairs
        self.length = length
        self.keep_alive = keep_alive

    @property
    def headers(self) -> Headers:  # type: ignore[override]
        if self._headers is None:
            headers = Headers()
            for name, value in self.pairs:
                headers.addRawHeader(name, value)
            self._headers = headers
        return self._headers

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response  # type: ignore[assignment]

    # The body.

    def deliverBody(self, protocol: Protocol) -> None:
        """
        Hand the body to C{protocol}: what arrived before is given first.
        """
        if self._consumer is not None:
            raise RuntimeError("the body was already delivered")
        self._consumer = protocol
        if self._held_pause:
            # Reading was paused only to hold these bytes; a pause the
            # consumer asks for while they are handed over must stand.
            self._held_pause = False
            if self.connection is not None:
                self.connection.resume()
        protocol.makeConnection(_BodyTransport(self))  # type: ignore[arg-type]
        held, self._held = self._held, []
        for data in held:
            if self._consumer is None:
                return  # (It gave up on the body while being handed it.)
            protocol.dataReceived(data)
        if self._end is not None:
            end, self._end = self._end, None
            self._lost(end)

    def deliver(self, data: bytes) -> None:
        """
        Body bytes arrived: passed on, or held (and reading paused, so only
        one read's worth is held) until there is somewhere to pass them.
        """
        if self._consumer is not None:
            self._consumer.dataReceived(data)
            return
        self._held.append(data)
        if self._announced and self.connection is not None:
            self._held_pause = True
            self.connection.pause()

    def announced(self) -> None:
        """
        The response has been handed over: from now on, body bytes nobody
        takes pause reading.
        """
        self._announced = True
        if self._consumer is None and self._held and self.connection is not None:
            self._held_pause = True
            self.connection.pause()

    def take_body(self) -> Optional[bytes]:
        """
        The whole body, when it has all arrived and has not been delivered:
        the caller has it instead of a consumer.  L{None} otherwise.
        """
        end = self._end
        if self._consumer is not None or end is None or end.type is not ResponseDone:
            return None
        self._consumer = _Taken()
        self._end = None
        held, self._held = self._held, []
        return b"".join(held)

    def finish(self, reason: Failure) -> None:
        """
        The body is over: C{ResponseDone} when complete, C{PotentialDataLoss}
        when the close that ended it may have cut it, else the failure.
        """
        if self.finished:
            return
        self.finished = True
        self.connection = None
        if self._consumer is None:
            self._end = reason
        else:
            self._lost(reason)

    def _lost(self, reason: Failure) -> None:
        consumer, self._consumer = self._consumer, None
        consumer.connectionLost(reason)  # type: ignore[union-attr]


def response_pairs(response: IResponse) -> Sequence[tuple[bytes, bytes]]:
    """
    The fields of any L{IResponse} as pairs: ours as parsed, another
    agent's from its L{Headers}.
    """
    if isinstance(response, BackendResponse):
        return response.pairs
    return [(name, value) for name, values in response.headers.getAllRawHeaders() for value in values]

# -*- test-case-name: tests.test_proxy_wire -*-
"""
Shared helpers for tests that put real bytes on real sockets.

The proxy's contract is about bytes on the wire (SPEC §3), so the tests that
prove it need servers and clients that see those bytes exactly, not through
another HTTP library that would normalise them:

  - L{startBackend} runs a L{CaptureBackend}: a raw TCP server on
    127.0.0.1 that records every request as it arrived (request line,
    header lines in order, body as framed on the wire) and the connections
    it accepted, and answers as a L{Reply} says (any status and reason
    phrase, repeated headers, any framing, delays, truncation, a large
    body produced with backpressure);
  - L{connectClient} opens a L{RawClient} that sends raw bytes and parses
    the responses it gets back into L{Response} records that say how each
    was framed; L{socketExchange} does the same over a blocking socket in a
    thread, for tests that need a small receive buffer or slow reading;
  - L{startProxy} runs a proxy in-process from a L{Configuration} (see
    L{proxyConfig}) on an ephemeral port;
  - L{startTwistd} runs the real C{twistd -n revproxy} in a child process.

Everything binds 127.0.0.1 only, every wait is bounded, and every helper
registers its own cleanup on the test case (in an order that leaves the
reactor clean for trial), killing only processes it started.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txrevproxy import Configuration, Runtime, build, parse_config

__all__ = [
    "REPO",
    "BackendConnection",
    "BodyReader",
    "CaptureBackend",
    "CapturedRequest",
    "RawClient",
    "Reply",
    "Response",
    "ResponseParser",
    "RunningProxy",
    "Twistd",
    "bounded",
    "childEnvironment",
    "childPids",
    "commandLine",
    "connectClient",
    "exchange",
    "freePort",
    "headerValues",
    "killProcess",
    "parseResponses",
    "poll",
    "portAccepts",
    "processAlive",
    "proxyConfig",
    "socketExchange",
    "spawn",
    "startBackend",
    "startProxy",
    "startTwistd",
    "streamBody",
    "twistdCommand",
    "wait",
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The repository root: the in-tree package and plugin are found from here."""

Headers = list[tuple[bytes, bytes]]


# Waiting, bounded.


def wait(seconds: float) -> Deferred[None]:
    """
    A L{Deferred} that fires after C{seconds} of reactor time.
    """
    return deferLater(reactor, seconds, lambda: None)


async def poll(
    condition: Callable[[], bool], timeout: float = 5.0, step: float = 0.01
) -> bool:
    """
    Wait until C{condition()} is true, checking every C{step} seconds.

    @return: Whether it became true within C{timeout}.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await wait(step)
    return True


def bounded(d: Deferred[Any], seconds: float) -> Deferred[Any]:
    """
    C{d}, failing with L{twisted.internet.defer.TimeoutError} (and cancelled)
    after C{seconds}.
    """
    return d.addTimeout(seconds, reactor)


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now (for a child
    process that must be told its port; in-process servers use port 0).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def headerValues(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """
    The values of every header named C{name} (any case), in order.
    """
    name = name.lower()
    return [value for key, value in headers if key.lower() == name]


# Parsing HTTP/1.1 messages byte by byte.


class BodyReader:
    """
    Reads one message body incrementally, as framed on the wire.

    @ivar mode: C{"length"} (C{length} bytes), C{"chunked"}, C{"close"} (up to
        the end of the connection) or C{"none"} (no body at all).
    @ivar body: The body, chunked framing removed.
    @ivar raw: The body bytes exactly as they arrived.
    @ivar done: Whether the body is complete.
    """

    def __init__(self, mode: str, length: int = 0) -> None:
        self.mode = mode
        self.body = bytearray()
        self.raw = bytearray()
        self.done = mode == "none" or (mode == "length" and length == 0)
        self._remaining = length
        self._buffer = bytearray()
        self._state = "size"

    def feed(self, data: bytes) -> bytes | None:
        """
        Consume C{data}; return what follows the body once it is complete
        (possibly C{b""}), or L{None} while more is needed.
        """
        if self.done:
            return bytes(data)
        if self.mode == "close":
            self.body += data
            self.raw += data
            return None
        if self.mode == "length":
            take = data[: self._remaining]
            self.body += take
            self.raw += take
            self._remaining -= len(take)
            self.done = self._remaining == 0
            return bytes(data[len(take) :]) if self.done else None
        return self._chunked(data)

    def _chunked(self, data: bytes) -> bytes | None:
        buf = self._buffer
        buf += data
        while not self.done:
            if self._state in ("size", "trailer"):
                end = buf.find(b"\r\n")
                if end < 0:
                    return None
                line = bytes(buf[:end])
                self.raw += buf[: end + 2]
                del buf[: end + 2]
                if self._state == "trailer":
                    self.done = line == b""
                    continue
                size = int(line.split(b";")[0].strip(), 16)
                self._remaining = size
                self._state = "data" if size else "trailer"
            elif self._state == "data":
                if not buf:
                    return None
                take = bytes(buf[: self._remaining])
                del buf[: len(take)]
                self.body += take
                self.raw += take
                self._remaining -= len(take)
                if self._remaining == 0:
                    self._state = "crlf"
            else:
                if len(buf) < 2:
                    return None
                if bytes(buf[:2]) != b"\r\n":
                    raise ValueError(f"bad chunk terminator {bytes(buf[:2])!r}")
                self.raw += buf[:2]
                del buf[:2]
                self._state = "size"
        rest = bytes(buf)
        buf.clear()
        return rest


def _splitHead(buffer: bytearray) -> tuple[bytes, bytes, Headers] | None:
    """
    Take a complete head (start line and header lines) off the front of
    C{buffer}: returns the raw head, the start line and the headers.
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[: end + 4])
    del buffer[: end + 4]
    lines = head[:-4].split(b"\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip(b" \t")))
    return head, lines[0], headers


def _framing(headers: Headers) -> tuple[str, int]:
    if any(
        v.lower() == b"chunked" for v in headerValues(headers, b"transfer-encoding")
    ):
        return "chunked", 0
    lengths = headerValues(headers, b"content-length")
    if lengths:
        return "length", int(lengths[-1])
    return "", 0


@attrs.define
class CapturedRequest:
    """
    One request as a L{CaptureBackend} received it.

    @ivar head: The request line and header lines, byte-exact, with the
        blank line that ends them.
    @ivar headers: The header lines as C{(name, value)} in wire order, names
        as sent.
    @ivar body: The body with any chunked framing removed.
    @ivar raw_body: The body as framed on the wire.
    @ivar chunked: Whether it came chunked.
    @ivar connection: The number of the backend connection (0, 1, ...) it
        arrived on.
    """

    head: bytes
    method: bytes
    target: bytes
    version: bytes
    headers: Headers
    connection: int
    body: bytes = b""
    raw_body: bytes = b""
    chunked: bool = False

    @property
    def raw(self) -> bytes:
        """Everything this request put on the wire."""
        return self.head + self.raw_body

    def header(self, name: bytes) -> list[bytes]:
        """Every value of the header C{name} (any case), in order."""
        return headerValues(self.headers, name)

    def names(self) -> list[bytes]:
        """The header names in wire order, lower-cased."""
        return [name.lower() for name, _ in self.headers]


@attrs.define
class Response:
    """
    One response as a client received it.

    @ivar framing: C{"length"}, C{"chunked"}, C{"close"} (delimited by the
        end of the connection) or C{"none"} (no body: HEAD, 204, 304).
    @ivar complete: Whether the whole message arrived as its framing says;
        L{False} when the connection ended first.
    @ivar interim: The C{1xx} responses that came before this one.
    """

    version: bytes
    status: int
    reason: bytes
    headers: Headers
    head: bytes
    framing: str = "none"
    body: bytes = b""
    raw_body: bytes = b""
    complete: bool = False
    interim: list[bytes] = attrs.Factory(list)

    def header(self, name: bytes) -> list[bytes]:
        """Every value of the header C{name} (any case), in order."""
        return headerValues(self.headers, name)

    def names(self) -> list[bytes]:
        """The header names in wire order, lower-cased."""
        return [name.lower() for name, _ in self.headers]


class ResponseParser:
    """
    Parses a stream of responses as a client reads them.

    @ivar responses: The responses begun so far; the last may be incomplete.
    @ivar heads: For each request sent and not yet answered, whether it was
        a HEAD (whose response has no body, whatever its headers say).
    """

    def __init__(self) -> None:
        self.responses: list[Response] = []
        self._buffer = bytearray()
        self._reader: BodyReader | None = None
        self._interim: list[bytes] = []
        self.heads: list[bool] = []

    @property
    def complete(self) -> list[Response]:
        """The responses received completely."""
        return [r for r in self.responses if r.complete]

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer:
            if self._reader is None:
                parsed = _splitHead(self._buffer)
                if parsed is None:
                    return
                head, line, headers = parsed
                version, _, rest = line.partition(b" ")
                code, _, reason = rest.partition(b" ")
                status = int(code)
                if 100 <= status < 200 and status != 101:
                    self._interim.append(head)
                    continue
                head_request = self.heads.pop(0) if self.heads else False
                mode, length = _framing(headers)
                if head_request or status in (204, 304) or 100 <= status < 200:
                    mode, length = "none", 0
                elif not mode:
                    mode = "close"
                response = Response(
                    version, status, reason, headers, head, framing=mode
                )
                response.interim, self._interim = self._interim, []
                self.responses.append(response)
                self._reader = BodyReader(mode, length)
                if self._reader.done:
                    self._finish()
                continue
            data = bytes(self._buffer)
            self._buffer.clear()
            rest = self._reader.feed(data)
            if rest is None:
                return
            self._finish()
            self._buffer += rest

    def _finish(self) -> None:
        assert self._reader is not None
        response = self.responses[-1]
        response.body = bytes(self._reader.body)
        response.raw_body = bytes(self._reader.raw)
        response.complete = True
        self._reader = None

    def end(self) -> None:
        """
        The connection ended: a close-delimited body is complete now, any
        other unfinished message stays incomplete.
        """
        if self._reader is not None:
            response = self.responses[-1]
            response.body = bytes(self._reader.body)
            response.raw_body = bytes(self._reader.raw)
            response.complete = self._reader.mode == "close"
            self._reader = None


# The capture backend.


@attrs.frozen
class Reply:
    """
    How a L{CaptureBackend} answers a request.

    @ivar reason: The reason phrase, sent as is.
    @ivar headers: Header lines in order (repeats allowed); framing headers
        are added per C{framing} unless already given here.
    @ivar framing: C{"length"} (Content-Length), C{"chunked"} (the body in
        three chunks), C{"close"} (no length; the connection is closed after
        the body) or C{"none"} (no framing header at all).
    @ivar delay: Seconds to wait before sending the head.
    @ivar cut: When set, only this many bytes of the framed body are sent
        after the head, then the connection is closed (0: right after the
        headers).
    @ivar stall: With C{cut}: keep the connection open after the partial
        body instead of dropping it (a backend gone silent).
    @ivar hang: Never answer (the connection stays open).
    @ivar stream: When non-zero, the body is this many generated bytes
        (L{streamBody}), written with backpressure, framed by length.
    @ivar raw: When set, these bytes are the whole answer, sent verbatim
        (a malformed head, several responses...), and the connection is
        closed after them unless C{stall}.
    """

    status: int = 200
    reason: bytes = b"OK"
    headers: Sequence[tuple[bytes, bytes]] = ()
    body: bytes = b""
    framing: str = "length"
    delay: float = 0.0
    cut: int | None = None
    stall: bool = False
    hang: bool = False
    stream: int = 0
    raw: bytes | None = None


_BLOCK = bytes(range(256)) * 256


def streamBody(size: int) -> bytes:
    """
    The body a L{Reply} with C{stream=size} sends.
    """
    whole, part = divmod(size, len(_BLOCK))
    return _BLOCK * whole + _BLOCK[:part]


@implementer(IPushProducer)
class _Streamer:
    """
    Writes a generated body to a backend connection as fast as the
    connection takes it, and no faster: the transport pauses it.
    """

    def __init__(
        self, connection: BackendConnection, size: int, done: Callable[[], None]
    ) -> None:
        self.connection = connection
        self.remaining = size
        self.paused = False
        self.stopped = False
        self._done = done
        self._offset = 0
        self._call: Any = None

    def start(self) -> None:
        self.connection.transport.registerProducer(self, True)
        self._schedule()

    def _schedule(self) -> None:
        if self._call is None and not self.paused and not self.stopped:
            self._call = reactor.callLater(0, self._step)

    def _step(self) -> None:
        self._call = None
        for _ in range(16):
            if self.paused or self.stopped or not self.remaining:
                break
            size = min(len(_BLOCK), self.remaining)
            self.remaining -= size
            self.connection.written += size
            self.connection.transport.write(_BLOCK[:size])
        if self.stopped:
            return
        if not self.remaining:
            self.connection.transport.unregisterProducer()
            self._done()
            return
        self._schedule()

    def pauseProducing(self) -> None:
        self.paused = True
        self.connection.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.stopped = True
        if self._call is not None:
            self._call.cancel()
            self._call = None


def _frame(body: bytes, framing: str) -> bytes:
    """
    A body as it goes on the wire: chunked framing splits it in three
    chunks (to exercise reassembly), any other framing sends it as is.
    """
    if framing != "chunked":
        return body
    third = max(1, len(body) // 3)
    chunks = [body[start : start + third] for start in range(0, len(body), third)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


class BackendConnection(Protocol):
    """
    One connection a L{CaptureBackend} accepted.

    @ivar lost: Fires when the connection ends.
    @ivar received: Bytes received so far (a request body's first bytes
        count before the request is complete).
    @ivar written: Body bytes of streamed replies handed to the transport.
    @ivar pauses: How often the transport paused a streamed reply.
    """

    def __init__(self, backend: CaptureBackend, number: int) -> None:
        self.backend = backend
        self.number = number
        self.lost: Deferred[None] = Deferred()
        self.closed = False
        self.received = 0
        self.written = 0
        self.pauses = 0
        self.requests: list[CapturedRequest] = []
        self._buffer = bytearray()
        self._current: CapturedRequest | None = None
        self._reader: BodyReader | None = None
        self._busy = False
        self._calls: list[Any] = []
        self._streamer: _Streamer | None = None

    @property
    def partial(self) -> bytes:
        """
        The body received so far of a request not yet complete.
        """
        return bytes(self._reader.body) if self._reader is not None else b""

    def connectionMade(self) -> None:
        if self.backend.sndbuf is not None:
            self.transport.getHandle().setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, self.backend.sndbuf
            )
        if self.backend.reading is False:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self._buffer += data
        self._parse()

    def _parse(self) -> None:
        while not self._busy and self._buffer:
            if self._reader is None:
                parsed = _splitHead(self._buffer)
                if parsed is None:
                    return
                head, line, headers = parsed
                parts = line.split(b" ")
                method, target, version = parts[0], b" ".join(parts[1:-1]), parts[-1]
                mode, length = _framing(headers)
                self._current = CapturedRequest(
                    head,
                    method,
                    target,
                    version,
                    headers,
                    self.number,
                    chunked=mode == "chunked",
                )
                self._reader = BodyReader(mode or "none", length)
                if not self._reader.done:
                    continue
                rest = b""
            else:
                data = bytes(self._buffer)
                self._buffer.clear()
                rest = self._reader.feed(data)
                if rest is None:
                    return
            request, self._current = self._current, None
            assert request is not None
            request.body = bytes(self._reader.body)
            request.raw_body = bytes(self._reader.raw)
            self._reader = None
            self._buffer[:0] = rest
            self._busy = True
            self.requests.append(request)
            self.backend._received(request)
            self._respond(request)

    def _respond(self, request: CapturedRequest) -> None:
        reply = self.backend.reply
        if callable(reply):
            reply = reply(request)
        if reply.hang:
            return
        if reply.delay:
            self._calls.append(
                reactor.callLater(reply.delay, self._send, request, reply)
            )
        else:
            self._send(request, reply)

    def _send(self, request: CapturedRequest, reply: Reply) -> None:
        if self.closed:
            return
        if reply.raw is not None:
            self.transport.write(reply.raw)
            if not reply.stall:
                self.transport.loseConnection()
            return
        headers = list(reply.headers)
        names = {name.lower() for name, _ in headers}
        body = (
            streamBody(reply.stream)
            if reply.stream and reply.cut is not None
            else reply.body
        )
        size = reply.stream or len(body)
        if reply.framing == "length" and b"content-length" not in names:
            headers.append((b"Content-Length", b"%d" % (size,)))
        elif reply.framing == "chunked" and b"transfer-encoding" not in names:
            headers.append((b"Transfer-Encoding", b"chunked"))
        lines = [b"HTTP/1.1 %d %s" % (reply.status, reply.reason)]
        lines += [name + b": " + value for name, value in headers]
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")
        bodyless = request.method == b"HEAD" or reply.status in (204, 304)
        if reply.cut is not None:
            if not bodyless:
                self.transport.write(_frame(body, reply.framing)[: reply.cut])
            if not reply.stall:
                # A clean close after the bytes are out: abortConnection
                # would drop what is still buffered, the head included.
                self.transport.loseConnection()
            return
        if bodyless:
            self._sent(request, reply)
        elif reply.stream:
            self._streamer = _Streamer(
                self, reply.stream, lambda: self._sent(request, reply)
            )
            self._streamer.start()
        else:
            self.transport.write(_frame(body, reply.framing))
            self._sent(request, reply)

    def _sent(self, request: CapturedRequest, reply: Reply) -> None:
        self._streamer = None
        closing = [v.lower() for v in request.header(b"connection")]
        closing += [v.lower() for v in headerValues(reply.headers, b"connection")]
        if reply.framing == "close" or b"close" in closing:
            self.transport.loseConnection()
            return
        self._busy = False
        self._parse()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        for call in self._calls:
            if call.active():
                call.cancel()
        if self._streamer is not None:
            self._streamer.stopProducing()
        self.lost.callback(None)


class CaptureBackend(Factory):
    """
    A raw HTTP/1.1 server that records what it receives and answers per
    C{reply} (a L{Reply}, or a callable from the L{CapturedRequest} to one).

    @ivar port: The port it listens on (127.0.0.1).
    @ivar requests: Every request received, in order.
    @ivar connections: Every connection accepted, in order.
    @ivar sndbuf: When set, C{SO_SNDBUF} of each accepted connection (a small
        one keeps the kernel from absorbing a large body).
    @ivar reading: Set to L{False} before a connection is made, the
        connection is not read from (a backend slower than its client);
        L{resume} reads again.
    """

    def __init__(
        self,
        reply: Reply | Callable[[CapturedRequest], Reply] = Reply(),
        sndbuf: int | None = None,
    ) -> None:
        self.reply = reply
        self.sndbuf = sndbuf
        self.reading = True
        self.requests: list[CapturedRequest] = []
        self.connections: list[BackendConnection] = []
        self.port = 0
        self._waiters: list[tuple[int, Deferred[CapturedRequest]]] = []
        self._listening: Any = None

    def buildProtocol(self, addr: Any) -> BackendConnection:
        connection = BackendConnection(self, len(self.connections))
        self.connections.append(connection)
        return connection

    @property
    def accepted(self) -> int:
        """How many connections were accepted."""
        return len(self.connections)

    @property
    def open(self) -> list[BackendConnection]:
        """The connections still open."""
        return [c for c in self.connections if not c.closed]

    def _received(self, request: CapturedRequest) -> None:
        self.requests.append(request)
        ready = [(n, d) for n, d in self._waiters if n <= len(self.requests)]
        self._waiters = [(n, d) for n, d in self._waiters if n > len(self.requests)]
        for n, d in ready:
            d.callback(self.requests[n - 1])

    def request(
        self, number: int = 1, timeout: float = 5.0
    ) -> Deferred[CapturedRequest]:
        """
        The C{number}th request (1-based), once it has fully arrived.
        """
        if len(self.requests) >= number:
            return succeed(self.requests[number - 1])
        d: Deferred[CapturedRequest] = Deferred()
        self._waiters.append((number, d))
        return bounded(d, timeout)

    def resume(self) -> None:
        """
        Read from every connection again (see C{reading}).
        """
        self.reading = True
        for connection in self.open:
            connection.transport.resumeProducing()

    def stop(self) -> Deferred[Any]:
        """
        Stop listening and drop every connection.
        """
        for connection in self.open:
            connection.transport.abortConnection()
        lost = [c.lost for c in self.connections if not c.lost.called]
        stopped = self._listening.stopListening() if self._listening else None
        return DeferredList([*lost, *([stopped] if stopped else [])])


def startBackend(
    case: SynchronousTestCase,
    reply: Reply | Callable[[CapturedRequest], Reply] = Reply(),
    sndbuf: int | None = None,
) -> CaptureBackend:
    """
    Start a L{CaptureBackend} on 127.0.0.1 (ephemeral port), stopped when
    the test ends.
    """
    backend = CaptureBackend(reply, sndbuf)
    backend._listening = reactor.listenTCP(0, backend, interface="127.0.0.1")
    backend.port = backend._listening.getHost().port
    case.addCleanup(backend.stop)
    return backend


# Clients.


class RawClient(Protocol):
    """
    A client that sends raw bytes and parses what comes back.

    @ivar data: Every byte received.
    @ivar lost: Fires when the connection ends.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.parser = ResponseParser()
        self.lost: Deferred[None] = Deferred()
        self.closed = False
        self._waiters: list[tuple[int, Deferred[list[Response]]]] = []

    def send(self, data: bytes, requests: int = 1, head: bool = False) -> None:
        """
        Send C{data}, which holds C{requests} requests (C{head}: they are
        HEAD requests, whose responses have no body).
        """
        self.parser.heads.extend([head] * requests)
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self.parser.feed(data)
        self._check()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.parser.end()
        self._check(final=True)
        self.lost.callback(None)

    def _check(self, final: bool = False) -> None:
        done = self.parser.complete
        waiting = []
        for count, d in self._waiters:
            if len(done) >= count or final:
                d.callback(list(self.parser.responses))
            else:
                waiting.append((count, d))
        self._waiters = waiting

    def responses(
        self, count: int = 1, timeout: float = 5.0
    ) -> Deferred[list[Response]]:
        """
        The responses received (complete or not), once C{count} are
        complete or the connection has ended.
        """
        if len(self.parser.complete) >= count or self.closed:
            return succeed(list(self.parser.responses))
        d: Deferred[list[Response]] = Deferred()
        self._waiters.append((count, d))
        return bounded(d, timeout)

    def waitClosed(self, timeout: float = 5.0) -> Deferred[bool]:
        """
        Whether the other side closed the connection within C{timeout}.
        """
        if self.closed:
            return succeed(True)
        d: Deferred[bool] = Deferred()
        call = reactor.callLater(timeout, lambda: d.called or d.callback(False))

        def closed(_: object) -> None:
            if call.active():
                call.cancel()
            if not d.called:
                d.callback(True)

        self.lost.addCallback(closed)
        return d

    def abort(self) -> Deferred[None]:
        """
        Drop the connection; fires once it is gone.
        """
        if not self.closed:
            self.transport.abortConnection()
        return self.lost if not self.lost.called else succeed(None)


async def connectClient(case: SynchronousTestCase, port: int) -> RawClient:
    """
    Connect a L{RawClient} to 127.0.0.1:C{port}; dropped when the test ends.
    """
    client = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), RawClient()
    )
    case.addCleanup(lambda: client.abort())
    return client


async def exchange(
    case: SynchronousTestCase,
    port: int,
    data: bytes,
    count: int = 1,
    head: bool = False,
    timeout: float = 5.0,
) -> list[Response]:
    """
    Open a connection, send C{data} (C{count} requests) and return the
    responses once C{count} are complete or the connection has ended.
    """
    client = await connectClient(case, port)
    client.send(data, count, head)
    return await client.responses(count, timeout)


def _socketExchange(
    port: int,
    data: bytes,
    timeout: float,
    rcvbuf: int | None,
    chunk: int,
    pause: float,
    stall: float,
    progress: list[int] | None,
    upload: int,
    sent: list[int] | None,
) -> bytes:
    sock = socket.socket()
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.sendall(data)
        left = upload
        while left:
            block = _BLOCK[: min(left, len(_BLOCK))]
            sock.sendall(block)
            left -= len(block)
            if sent is not None:
                sent[0] += len(block)
        time.sleep(stall)
        received = bytearray()
        while True:
            piece = sock.recv(chunk)
            if not piece:
                return bytes(received)
            received += piece
            if progress is not None:
                progress[0] = len(received)
            if pause:
                time.sleep(pause)
    finally:
        sock.close()


def socketExchange(
    port: int,
    data: bytes,
    timeout: float = 5.0,
    *,
    rcvbuf: int | None = None,
    chunk: int = 65536,
    pause: float = 0.0,
    stall: float = 0.0,
    progress: list[int] | None = None,
    upload: int = 0,
    sent: list[int] | None = None,
) -> Deferred[bytes]:
    """
    Send C{data} over a blocking socket in a thread and read until the
    server closes (send C{Connection: close}).

    @param rcvbuf: C{SO_RCVBUF} set before connecting (a small one makes a
        slow reader's window small).
    @param chunk: Bytes read per C{recv}.
    @param pause: Seconds slept after each C{recv}: a slow reader.
    @param stall: Seconds slept after sending, before the first C{recv}.
    @param upload: After C{data}, send this many bytes of L{streamBody}
        (a request body), counting them in C{sent}.
    @param progress: A one-item list updated with the byte count read so
        far, for the reactor thread to watch.
    @return: Every byte received.
    """
    return deferToThread(
        _socketExchange,
        port,
        data,
        timeout,
        rcvbuf,
        chunk,
        pause,
        stall,
        progress,
        upload,
        sent,
    )


def parseResponses(data: bytes, heads: Sequence[bool] = ()) -> list[Response]:
    """
    Parse a whole received byte stream (the connection has ended).
    """
    parser = ResponseParser()
    parser.heads.extend(heads)
    parser.feed(data)
    parser.end()
    return parser.responses


# The proxy, in-process.


@attrs.define
class RunningProxy:
    """
    A proxy serving on 127.0.0.1:C{port}.

    @ivar channels: The server-side protocol of every client connection, in
        order (their C{transport} shows what the proxy buffers).
    """

    runtime: Runtime
    port: int
    channels: list[Any]

    def transports(self) -> list[Any]:
        """
        The proxy's side of every client connection.
        """
        return [t for t in map(_transport, self.channels) if t is not None]

    def buffered(self) -> int:
        """
        Bytes the proxy holds in user space for its clients right now.
        """
        total = 0
        for transport in self.transports():
            total += len(getattr(transport, "dataBuffer", b"")) - getattr(
                transport, "offset", 0
            )
            total += getattr(transport, "_tempDataLen", 0)
        return total


def _transport(channel: Any) -> Any:
    # Twisted's protocol-switching wrapper keeps the transport on the
    # HTTP/1.1 (or HTTP/2) channel inside it.
    transport = getattr(channel, "transport", None)
    if transport is None:
        transport = getattr(getattr(channel, "_channel", None), "transport", None)
    return transport


def _ini(section: str, values: Mapping[str, str]) -> str:
    lines = [f"[{section}]"]
    for key, value in values.items():
        first, *rest = str(value).strip().splitlines() or [""]
        lines.append(f"{key} = {first}")
        lines.extend(f"    {line.strip()}" for line in rest)
    return "\n".join(lines) + "\n"


def proxyConfig(
    ports: Sequence[int] | Mapping[str, str],
    rule: Mapping[str, str] = {},
    server: Mapping[str, str] = {},
    extra: str = "",
) -> Configuration:
    """
    A configuration with one proxy rule over the given sources.

    @param ports: Backend ports on 127.0.0.1 (sources C{b0}, C{b1}, ...), or
        a mapping from source name to C{address}.
    @param rule: Keys of the rule C{[rule:main]} (C{match = default},
        C{handler = proxy} and C{sources} unless given here).
    @param server: Keys of C{[server]} (C{access_log = off} unless given).
    @param extra: More INI text appended as is.
    """
    if isinstance(ports, Mapping):
        addresses = dict(ports)
    else:
        addresses = {f"b{n}": f"127.0.0.1:{port}" for n, port in enumerate(ports)}
    text = _ini("server", {"access_log": "off", **server})
    for name, address in addresses.items():
        text += _ini(f"source:{name}", {"address": address})
    text += _ini(
        "rule:main",
        {
            "match": "default",
            "handler": "proxy",
            "sources": " ".join(addresses),
            **rule,
        },
    )
    return parse_config(text + extra, "<test>")


async def startProxy(
    case: SynchronousTestCase,
    config: Configuration | str,
    agent_factory: Any = None,
) -> RunningProxy:
    """
    Build the proxy for C{config} (a L{Configuration} or INI text) with the
    real reactor, start its services and listen on 127.0.0.1 (ephemeral
    port).  When the test ends, the listener stops, every client connection
    is dropped and the services (pools, interpreters) stop.
    """
    if isinstance(config, str):
        config = parse_config(config, "<test>")
    runtime = build(config, reactor, agent_factory)
    runtime.service.startService()
    channels: list[Any] = []
    site = runtime.site
    original = site.buildProtocol

    def buildProtocol(addr: Any) -> Any:
        protocol = original(addr)
        if protocol is not None:
            channels.append(protocol)
        return protocol

    site.buildProtocol = buildProtocol  # type: ignore[method-assign]
    listening = reactor.listenTCP(0, site, interface="127.0.0.1")

    async def cleanup() -> None:
        await listening.stopListening()
        transports = [t for t in map(_transport, channels) if t is not None]
        for transport in transports:
            transport.abortConnection()
        await poll(lambda: all(t.disconnected for t in transports), 5.0)
        await runtime.service.stopService()
        # Let aborted backend connections finish closing.
        await wait(0.01)

    case.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
    return RunningProxy(runtime, listening.getHost().port, channels)


# The real twistd, in a child process.


def childPids(pid: int) -> list[int]:
    """
    The live (not zombie) children of process C{pid}, from C{/proc}.
    """
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rpartition(b")")[2].split()
        if int(fields[1]) == pid and fields[0] != b"Z":
            children.append(int(entry))
    return children


def processAlive(pid: int) -> bool:
    """
    Whether process C{pid} exists and is not a zombie.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rpartition(b")")[2].split()[0] != b"Z"


def commandLine(pid: int) -> list[str]:
    """
    The command line of process C{pid} (empty if it is gone).
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode() for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def twistdCommand(config: str, *extra: str) -> list[str]:
    """
    The argv of C{twistd -n revproxy --config=CONFIG} with this Python (no
    pid file, log to stdout).
    """
    return [
        sys.executable,
        "-c",
        "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
        "-n",
        "--pidfile=",
        "--logfile=-",
        "revproxy",
        f"--config={config}",
        *extra,
    ]


def childEnvironment() -> dict[str, str]:
    """
    The environment for a child proxy: the in-tree package and plugin
    first on C{PYTHONPATH}, this Python's scripts (C{twist}) on C{PATH}.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    env["PATH"] = os.pathsep.join(
        p for p in (os.path.dirname(sys.executable), env.get("PATH")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Twistd(ProcessProtocol):
    """
    A child process whose output is collected.

    @ivar ended: Fires with the exit code (or C{-signal}) when it exits.
    """

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.ended: Deferred[int] = Deferred()
        self.code: int | None = None
        self.pid = 0

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code = getattr(value, "exitCode", None)
        if code is None:
            code = -(getattr(value, "signal", 0) or 0)
        self.code = code
        self.ended.callback(code)

    def signal(self, name: str) -> None:
        """Send a signal, if the process still runs."""
        if self.code is None:
            self.transport.signalProcess(name)

    async def stop(self, timeout: float = 10.0) -> int | None:
        """
        TERM, then KILL after C{timeout}; returns the exit code.
        """
        if self.code is not None:
            return self.code
        self.signal("TERM")
        if not await poll(lambda: self.code is not None, timeout, 0.05):
            self.signal("KILL")
            await poll(lambda: self.code is not None, 5.0, 0.05)
        return self.code


def spawn(case: SynchronousTestCase, argv: Sequence[str], cwd: str = REPO) -> Twistd:
    """
    Start C{argv} as a child with L{childEnvironment}; stopped (TERM, then
    KILL) when the test ends if it still runs.
    """
    process = Twistd()
    reactor.spawnProcess(process, argv[0], list(argv), env=childEnvironment(), path=cwd)
    case.addCleanup(lambda: Deferred.fromCoroutine(process.stop()))
    return process


def portAccepts(port: int) -> bool:
    """
    Whether something accepts connections on 127.0.0.1:C{port}.
    """
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def startTwistd(
    case: SynchronousTestCase,
    config: str,
    port: int,
    cwd: str = REPO,
    timeout: float = 20.0,
) -> Twistd:
    """
    Run C{twistd -n revproxy --config=CONFIG} and wait (bounded) until
    127.0.0.1:C{port} accepts connections.

    @raise AssertionError: It exited or did not listen in time.
    """
    process = spawn(case, twistdCommand(config), cwd)
    if not await poll(
        lambda: process.code is not None or portAccepts(port), timeout, 0.05
    ):
        raise AssertionError(
            f"twistd did not listen on {port} in {timeout} s: {bytes(process.out)!r}"
        )
    if process.code is not None:
        raise AssertionError(
            f"twistd exited with {process.code}: {bytes(process.err + process.out)!r}"
        )
    return process


def killProcess(pid: int) -> None:
    """
    SIGKILL a process this test started (directly or through the proxy).
    """
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

# -*- test-case-name: tests.test_resilience -*-
"""
Loopback fixtures for the balancing and resilience tests: backends the tests
can stop, restart on the same port and make misbehave, clients that speak
from a chosen loopback address, a listener whose connections time out, and
a capture of the proxy's log.

They extend L{tests.helpers} (whose L{CaptureBackend} and L{RawClient} they
build on) with what only these tests need.  Everything binds or connects to
127.0.0.0/8 only; Linux routes the whole block to C{lo}, so a client bound
to 127.0.0.2 reaches a server on 127.0.0.1 and is seen as 127.0.0.2.
"""

from __future__ import annotations

import shlex
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tests.helpers import (
    CaptureBackend,
    CapturedRequest,
    RawClient,
    Reply,
    Response,
    RunningProxy,
)

__all__ = [
    "IdleClosingBackend",
    "LogCapture",
    "Named",
    "NamedBackend",
    "configText",
    "connectFrom",
    "counts",
    "fetch",
    "interpreterCommand",
    "request",
    "restart",
    "servedBy",
    "startIdleClosing",
    "startNamed",
    "stuckPort",
]


# Configuration.


def configText(
    sources: Mapping[str, Mapping[str, str]],
    rule: Mapping[str, str] = {},
    server: Mapping[str, str] = {},
) -> str:
    """
    INI text for one C{[rule:main]} proxy rule over C{sources}.

    @param sources: For each source name, in order, its keys (C{address}
        at least).
    @param rule: Keys of the rule besides C{match}, C{handler} and
        C{sources} (which may be overridden).
    @param server: Keys of C{[server]}; C{access_log = off} unless given.
    """

    def section(name: str, keys: Mapping[str, str]) -> str:
        return f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())

    text = section("server", {"access_log": "off", **server})
    for name, keys in sources.items():
        text += section(f"source:{name}", keys)
    text += section("vserver:default", {})
    text += section(
        "rule:main",
        {"match": "default", "handler": "proxy", "sources": " ".join(sources), **rule},
    )
    return text


def interpreterCommand(*argv: str) -> str:
    """
    An C{interpreter} value running C{argv}, quoted as the proxy splits it.
    """
    return shlex.join(argv)


# Backends.


class Named:
    """
    What a named backend answers: its own name in the body and an
    C{X-Backend} header, unless a test switched it to another behaviour
    (L{Reply} or a callable from the request to one) for some targets or
    for all.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode: Any = None
        self.targets: dict[bytes, Any] = {}

    def __call__(self, request: CapturedRequest) -> Reply:
        mode = self.targets.get(request.target.partition(b"?")[0], self.mode)
        if callable(mode):
            mode = mode(request)
        if mode is not None:
            return mode
        return Reply(headers=[(b"X-Backend", self.name.encode())], body=self.name.encode())


class NamedBackend(CaptureBackend):
    """
    A L{CaptureBackend} answering per a L{Named}.

    @ivar name: Its name, as it answers.
    @ivar behaviour: What it answers; set C{behaviour.mode} or
        C{behaviour.targets} to make it misbehave.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.behaviour = Named(name)
        super().__init__(self.behaviour)


def startNamed(case: SynchronousTestCase, name: str) -> NamedBackend:
    """
    Start a L{NamedBackend} on 127.0.0.1 (ephemeral port), stopped when the
    test ends.
    """
    backend = NamedBackend(name)
    restart(backend, 0)
    backend.port = backend._listening.getHost().port
    case.addCleanup(backend.stop)
    return backend


def restart(backend: CaptureBackend, port: int | None = None) -> None:
    """
    Listen again, on the same port (or C{port}), with a backend that
    L{CaptureBackend.stop} stopped; its cleanup then stops the new listener.
    """
    where = backend.port if port is None else port
    backend._listening = reactor.listenTCP(where, backend, interface="127.0.0.1")


class _IdleClosing(Protocol):
    """
    One connection of an L{IdleClosingBackend}.
    """

    def __init__(self, backend: IdleClosingBackend) -> None:
        self.backend = backend
        self.buffer = b""
        self.idle: IDelayedCall | None = None
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        self._disarm()
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.backend.requests.append(head.split(b"\r\n")[0])
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self._arm()

    def _arm(self) -> None:
        self.idle = reactor.callLater(self.backend.idle, self._expire)

    def _disarm(self) -> None:
        if self.idle is not None and self.idle.active():
            self.idle.cancel()
        self.idle = None

    def _expire(self) -> None:
        self.idle = None
        self.backend.closed_idle += 1
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        self.lost.callback(None)


class IdleClosingBackend(Factory):
    """
    An HTTP/1.1 server that answers every request C{200 ok} and closes a
    connection idle for C{idle} seconds, as most application servers do,
    without announcing it (no C{Keep-Alive: timeout}).

    @ivar requests: The request lines received.
    @ivar connections: Every connection accepted.
    @ivar closed_idle: How many connections it closed for idleness.
    """

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.requests: list[bytes] = []
        self.connections: list[_IdleClosing] = []
        self.closed_idle = 0

    def buildProtocol(self, addr: Any) -> _IdleClosing:
        connection = _IdleClosing(self)
        self.connections.append(connection)
        return connection


def startIdleClosing(case: SynchronousTestCase, idle: float) -> tuple[IdleClosingBackend, int]:
    """
    Start an L{IdleClosingBackend} on 127.0.0.1; stopped (and its
    connections dropped) when the test ends.

    @return: The backend and its port.
    """
    backend = IdleClosingBackend(idle)
    port = reactor.listenTCP(0, backend, interface="127.0.0.1")

    def stop() -> Deferred[Any]:
        for connection in backend.connections:
            if connection.transport.connected:
                connection.transport.abortConnection()
        return port.stopListening()

    case.addCleanup(stop)
    return backend, port.getHost().port


def stuckPort(case: SynchronousTestCase) -> int:
    """
    A port on 127.0.0.1 where connecting times out: a listening socket with
    a backlog of 0 that never accepts, its queue already filled by our own
    connections, so the kernel drops further SYNs.  All closed when the test
    ends.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    held = [listener]

    def close() -> None:
        for s in held:
            s.close()

    case.addCleanup(close)
    for _ in range(8):
        filler = socket.socket()
        filler.settimeout(0.1)
        try:
            filler.connect(("127.0.0.1", port))
        except OSError:
            filler.close()
            return port  # The queue is full: connecting now hangs.
        held.append(filler)
    raise AssertionError("could not fill the listen queue of a backlog-0 socket")


# Clients.


def request(
    method: bytes = b"GET", target: bytes = b"/", body: bytes | None = None
) -> bytes:
    """
    A request with C{Host: test.example}, and a C{Content-Length} when it
    has a body.
    """
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: test.example"]
    if body is not None:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


async def connectFrom(case: SynchronousTestCase, port: int, bind: str = "127.0.0.1") -> RawClient:
    """
    A L{RawClient} connected from C{bind} to 127.0.0.1:C{port}, dropped when
    the test ends.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5, bindAddress=(bind, 0))
    client = await connectProtocol(endpoint, RawClient())
    case.addCleanup(client.abort)
    return client


async def fetch(
    case: SynchronousTestCase,
    port: int,
    target: bytes = b"/",
    method: bytes = b"GET",
    body: bytes | None = None,
    bind: str = "127.0.0.1",
    timeout: float = 5.0,
) -> Response:
    """
    One request on a new connection from C{bind}; the connection is dropped
    once the response is complete.

    @raise AssertionError: If no response head came back.
    """
    client = await connectFrom(case, port, bind)
    client.send(request(method, target, body), head=method == b"HEAD")
    responses = await client.responses(1, timeout)
    await client.abort()
    if not responses:
        raise AssertionError(f"no response to {method!r} {target!r}")
    return responses[0]


def servedBy(response: Response) -> str:
    """
    The name of the L{Named} backend that answered, or C{"<STATUS>"} for an
    answer no named backend gave (an error the proxy generated).
    """
    names = response.header(b"x-backend")
    return names[0].decode() if names else f"<{response.status}>"


# The log.


@implementer(ILogObserver)
class LogCapture:
    """
    Every event logged while a test runs (through L{globalLogPublisher},
    where L{twisted.logger.Logger} sends by default).
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self)
        case.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def messages(self, *needles: str) -> list[str]:
        """
        The formatted messages that contain every one of C{needles}.
        """
        texts = [formatEvent(event) or "" for event in self.events]
        return [text for text in texts if all(n in text for n in needles)]


def counts(backends: Sequence[CaptureBackend], target: bytes = b"/") -> list[int]:
    """
    How many requests for C{target} each backend received.
    """
    return [sum(1 for r in b.requests if r.target == target) for b in backends]


class NamedBackendsCase(TestCase):
    """
    Named backends (each answers with its name) behind one proxy rule: the
    base of the balancing and resilience tests.
    """

    timeout = 15

    def backends(self, count: int) -> list[NamedBackend]:
        return [startNamed(self, f"b{n}") for n in range(count)]

    async def served(
        self, proxy: RunningProxy, count: int, target: bytes = b"/", bind: str = "127.0.0.1"
    ) -> list[str]:
        """
        Who answered each of C{count} sequential GETs (from C{bind}); a
        proxy error shows as C{"<STATUS>"}.
        """
        return [servedBy(await fetch(self, proxy.port, target, bind=bind)) for _ in range(count)]

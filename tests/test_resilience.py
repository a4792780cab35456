# -*- test-case-name: tests.test_resilience -*-
"""
Resilience (SPEC §3 "Dispatch" and "Errors"): retries on another source,
passive and active health, the stale keep-alive race, and the status and
log line of every error the proxy generates.

Most tests run an in-process proxy in front of real backends on 127.0.0.1
that they stop, restart, silence and make drop connections; a connect
timeout is made on loopback only, with a full backlog-0 listener
(L{tests.loopback.stuckPort}).  L{RetryDecisionTests} then pins each retry
decision down exactly, with agents whose answers the test gives by hand on
a L{MemoryReactorClock}.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from tests.helpers import (
    CaptureBackend,
    Reply,
    Response,
    RunningProxy,
    freePort,
    parseResponses,
    poll,
    startProxy,
    wait,
)
from tests.loopback import (
    LogCapture,
    NamedBackendsCase,
    NamedBackend,
    configText,
    counts,
    fetch,
    interpreterCommand,
    restart,
    servedBy,
    startIdleClosing,
    startNamed,
    stuckPort,
)
from txrevproxy import build, parse_config

_DROP = Reply(raw=b"")
"""Read the request, then close the connection without a response byte."""


class _ResilienceCase(NamedBackendsCase):
    async def proxy(
        self,
        sources: Sequence[CaptureBackend | int | Mapping[str, str]],
        rule: Mapping[str, str] = {},
    ) -> RunningProxy:
        """
        A proxy over sources C{b0}, C{b1}, ...: each a backend, a port on
        127.0.0.1, or the keys of its section.
        """
        keys: dict[str, Mapping[str, str]] = {}
        for n, source in enumerate(sources):
            if isinstance(source, CaptureBackend):
                source = source.port
            if isinstance(source, int):
                source = {"address": f"127.0.0.1:{source}"}
            keys[f"b{n}"] = source
        return await startProxy(self, configText(keys, {"connect_timeout": "0.5", **rule}))

    def assertLogged(self, log: LogCapture, *needles: str, count: int = 1) -> list[str]:
        """
        Exactly C{count} log messages contain all of C{needles}.
        """
        found = log.messages(*needles)
        self.assertEqual(
            len(found),
            count,
            f"expected {count} log message(s) with {needles}; the log was:\n"
            + "\n".join(log.messages()),
        )
        return found


class RetryTests(_ResilienceCase):
    """
    Which failures are retried on another source, end to end.
    """

    async def test_getsWhileOneSourceDown(self) -> None:
        """
        With one of two sources stopped (its pooled connections dropped),
        20 GETs all succeed, from the other source.
        """
        backends = self.backends(2)
        proxy = await self.proxy(backends)
        self.assertEqual(await self.served(proxy, 4), ["b0", "b1"] * 2)
        await backends[1].stop()
        self.assertEqual(await self.served(proxy, 20), ["b0"] * 20)

    async def test_getsWhileOneSourceDownWithoutPassiveHealth(self) -> None:
        """
        With C{max_fails = 0} the stopped source stays in rotation, so every
        other GET is refused there first and retried: still no client error.
        """
        backends = self.backends(2)
        proxy = await self.proxy(backends, {"max_fails": "0"})
        await backends[1].stop()
        self.assertEqual(await self.served(proxy, 10), ["b0"] * 10)

    async def test_refusalRetriedWithoutDelay(self) -> None:
        """
        A refused connection is known at once on loopback, and the next
        source is tried at once: ten GETs, five of them refused first by a
        stopped source kept in rotation, take well under the 0.3 s a
        refusal would cost each if it were reported late.
        """
        backends = self.backends(2)
        proxy = await self.proxy(backends, {"max_fails": "0"})
        await backends[1].stop()
        started = time.monotonic()
        self.assertEqual(await self.served(proxy, 10), ["b0"] * 10)
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, 0.75, f"5 refusals took {elapsed:.2f} s to get past")

    async def test_postRetriedAfterConnectionRefused(self) -> None:
        """
        Nothing was sent to a source that refused the connection, so even a
        POST is retried on the next one, its body intact.
        """
        backends = self.backends(2)
        await backends[0].stop()
        proxy = await self.proxy(backends)
        response = await fetch(self, proxy.port, b"/form", b"POST", b"a=1&b=2")
        self.assertEqual(servedBy(response), "b1")
        [received] = backends[1].requests
        self.assertEqual((received.method, received.body), (b"POST", b"a=1&b=2"))

    async def assertPostOnce(self, backends: Sequence[NamedBackend], proxy: RunningProxy) -> None:
        """
        A POST to C{proxy} arrives at one backend, once, and no other
        backend hears a byte of it; the client gets a 502.
        """

        def traffic() -> list[tuple[int, int]]:
            return [(b.accepted, sum(c.received for c in b.connections)) for b in backends]

        before = traffic()
        response = await fetch(self, proxy.port, b"/form", b"POST", b"a=1")
        self.assertEqual(response.status, 502)
        self.assertEqual(sum(counts(backends, b"/form")), 1, "POST replayed")
        after = traffic()
        heard = [b.name for b, old, new in zip(backends, before, after) if old != new]
        self.assertEqual(len(heard), 1, f"{heard} were sent the POST")

    async def test_postDroppedAfterReadArrivesOnce(self) -> None:
        """
        A POST that a backend read and then dropped without answering may
        have been acted on: it is not sent again, anywhere; the client gets
        a 502.
        """
        backends = self.backends(2)
        for backend in backends:
            backend.behaviour.mode = _DROP
        proxy = await self.proxy(backends)
        await self.assertPostOnce(backends, proxy)

    async def test_postDroppedOnReusedConnectionArrivesOnce(self) -> None:
        """
        The same on a pooled keep-alive connection: a POST that reached the
        backend is never replayed, not even on a fresh connection.
        """
        backends = self.backends(2)
        proxy = await self.proxy(backends)
        self.assertEqual(await self.served(proxy, 2), ["b0", "b1"])
        for backend in backends:
            backend.behaviour.mode = _DROP
        await self.assertPostOnce(backends, proxy)
        self.assertEqual(len(backends[0].connections), 1, "POST not sent on the pooled connection")

    async def test_getDroppedAfterReadTriedOnNextSource(self) -> None:
        """
        A GET that a backend read and dropped is retried on another source:
        the client gets the answer, and each source saw the GET once.
        """
        backends = self.backends(2)
        backends[0].behaviour.mode = _DROP
        proxy = await self.proxy(backends)
        self.assertEqual(await self.served(proxy, 1, b"/page"), ["b1"])
        self.assertEqual(counts(backends, b"/page"), [1, 1])

    async def test_getDroppedAfterReadBothSources(self) -> None:
        """
        When every source reads and drops a GET, each is tried once and the
        client gets a 502.
        """
        backends = self.backends(2)
        for backend in backends:
            backend.behaviour.mode = _DROP
        proxy = await self.proxy(backends)
        self.assertEqual(await self.served(proxy, 1, b"/page"), ["<502>"])
        self.assertEqual(counts(backends, b"/page"), [1, 1])

    async def test_getDroppedOnReusedConnectionOncePerSource(self) -> None:
        """
        At most one try per source, also when the try was on a pooled
        connection: a GET that source C{b0} read on a reused connection and
        then dropped goes to C{b1} next, not to C{b0} again.
        """
        backends = self.backends(2)
        proxy = await self.proxy(backends)
        self.assertEqual(await self.served(proxy, 2), ["b0", "b1"])
        backends[0].behaviour.targets[b"/page"] = _DROP
        self.assertEqual(await self.served(proxy, 1, b"/page"), ["b1"])
        self.assertEqual(counts(backends, b"/page"), [1, 1])

    async def test_readTimeoutTriedOnNextSource(self) -> None:
        """
        A GET with no response head within C{read_timeout} is tried on the
        next source.
        """
        backends = self.backends(2)
        backends[0].behaviour.mode = Reply(hang=True)
        proxy = await self.proxy(backends, {"read_timeout": "0.3"})
        self.assertEqual(await self.served(proxy, 1, b"/page"), ["b1"])
        self.assertEqual(counts(backends, b"/page"), [1, 1])

    async def test_readTimeoutEverywhere(self) -> None:
        """
        A GET that times out on every source gives a 504, after one try
        per source.
        """
        backends = self.backends(2)
        for backend in backends:
            backend.behaviour.mode = Reply(hang=True)
        proxy = await self.proxy(backends, {"read_timeout": "0.3"})
        self.assertEqual(await self.served(proxy, 1, b"/page"), ["<504>"])
        self.assertEqual(counts(backends, b"/page"), [1, 1])

    async def test_readTimeoutPostNotRetried(self) -> None:
        """
        A POST that times out is not sent again: 504 after one try.
        """
        backends = self.backends(2)
        for backend in backends:
            backend.behaviour.mode = Reply(hang=True)
        proxy = await self.proxy(backends, {"read_timeout": "0.3"})
        response = await fetch(self, proxy.port, b"/form", b"POST", b"a=1")
        self.assertEqual(response.status, 504)
        self.assertEqual(sum(counts(backends, b"/form")), 1)


class StaleKeepAliveTests(_ResilienceCase):
    """
    The race the peers are most criticised for (research/peers.md §2.2): a
    backend closing idle connections sooner than the proxy's pool would.
    """

    timeout = 10

    async def test_backendClosesIdleConnections(self) -> None:
        """
        A backend that closes connections idle for 1 s, hit 1.5 s apart
        (by two GETs, then a POST that could not be retried), never gives a
        client error: a connection the backend closed is not used.
        """
        backend, port = startIdleClosing(self, 1.0)
        proxy = await self.proxy([port])
        statuses = [(await fetch(self, proxy.port)).status]
        for method, body in [(b"GET", None), (b"POST", b"x=1")]:
            await wait(1.5)
            statuses.append((await fetch(self, proxy.port, b"/", method, body)).status)
        self.assertEqual(statuses, [200] * 3)
        self.assertEqual(len(backend.requests), 3)
        self.assertGreaterEqual(backend.closed_idle, 2, "the backend never closed a connection")


class ActiveHealthTests(_ResilienceCase):
    """
    C{health_check}: probes take a source out of rotation and back.
    """

    async def probed(self, backend: CaptureBackend, more: int) -> None:
        """
        Wait until C{backend} has answered C{more} further health checks, so
        that at least one verdict of its current answer is in.
        """
        target = len([r for r in backend.requests if r.target == b"/health"]) + more
        self.assertTrue(
            await poll(lambda: counts([backend], b"/health")[0] >= target, 3),
            "no health checks",
        )

    async def test_downAndUp(self) -> None:
        """
        A source whose C{health_check} path answers 500 gets no request;
        once it answers 200 it is back in rotation; a source whose check
        starts failing leaves it.  Each change is logged.
        """
        log = LogCapture(self)
        backends = self.backends(2)
        backends[1].behaviour.targets[b"/health"] = Reply(status=500, reason=b"Broken")
        proxy = await self.proxy(
            backends, {"health_check": "/health", "health_interval": "0.2"}
        )
        await self.probed(backends[1], 2)
        self.assertEqual(await self.served(proxy, 6), ["b0"] * 6)
        self.assertLogged(log, "b1", "out of rotation until a health check passes", "500")

        del backends[1].behaviour.targets[b"/health"]
        await self.probed(backends[1], 2)
        self.assertEqual(sorted(await self.served(proxy, 6)), ["b0"] * 3 + ["b1"] * 3)
        self.assertLogged(log, "b1", "back in rotation")

        backends[0].behaviour.targets[b"/health"] = Reply(status=503)
        await self.probed(backends[0], 2)
        self.assertEqual(await self.served(proxy, 6), ["b1"] * 6)


class PassiveHealthTests(_ResilienceCase):
    """
    C{max_fails} / C{fail_timeout}: failed connections take a source out of
    rotation for a while, then it gets a trial.
    """

    async def test_refusedLeavesRotationAndReturnsForTrial(self) -> None:
        """
        A source that refused a connection is not used for C{fail_timeout}
        seconds, even if it is listening again; then it gets a trial, and
        passing it puts it back in rotation.
        """
        log = LogCapture(self)
        backends = self.backends(2)
        await backends[1].stop()
        proxy = await self.proxy(backends, {"fail_timeout": "1"})
        self.assertEqual(await self.served(proxy, 2), ["b0", "b0"])
        self.assertLogged(log, "b1", "out of rotation for 1 s")
        restart(backends[1])
        self.assertEqual(await self.served(proxy, 4), ["b0"] * 4)
        self.assertEqual(backends[1].requests, [])
        await wait(1.1)
        self.assertEqual(sorted(await self.served(proxy, 4)), ["b0", "b0", "b1", "b1"])
        self.assertLogged(log, "b1", "back in rotation (trial)")

    async def test_failedTrialOutAgain(self) -> None:
        """
        A source still down when its trial comes is out again at once after
        one refused try, which the client never notices.
        """
        log = LogCapture(self)
        backends = self.backends(2)
        await backends[1].stop()
        proxy = await self.proxy(backends, {"fail_timeout": "0.5"})
        self.assertEqual(await self.served(proxy, 2), ["b0", "b0"])
        await wait(0.6)
        self.assertEqual(await self.served(proxy, 4), ["b0"] * 4)
        self.assertLogged(log, "b1", "failed its trial")

    async def test_maxFailsWithinWindow(self) -> None:
        """
        With C{max_fails = 3} a source stays in rotation through two
        refusals and leaves at the third.
        """
        log = LogCapture(self)
        backends = self.backends(2)
        await backends[1].stop()
        proxy = await self.proxy(backends, {"max_fails": "3", "fail_timeout": "5"})
        self.assertEqual(await self.served(proxy, 4), ["b0"] * 4)  # b1 refused twice
        self.assertEqual(log.messages("b1", "out of rotation"), [])
        self.assertEqual(await self.served(proxy, 2), ["b0"] * 2)  # and a third time
        self.assertLogged(log, "b1", "out of rotation", "3 failures")

    async def test_allOutOneTriedAnyway(self) -> None:
        """
        When every source is out of rotation one is still tried (once), so
        the client gets that source's failure, a 502, not a 503.
        """
        log = LogCapture(self)
        proxy = await self.proxy([freePort(), freePort()], {"fail_timeout": "5"})
        self.assertEqual(await self.served(proxy, 1), ["<502>"])
        [first] = self.assertLogged(log, "502 for GET /")
        self.assertIn("b0:", first)
        self.assertIn("b1:", first)
        self.assertEqual(await self.served(proxy, 1), ["<502>"])
        second = self.assertLogged(log, "502 for GET /", count=2)[1]
        self.assertEqual(len(re.findall(r"\bb[01]: ", second)), 1, second)


class ErrorTests(_ResilienceCase):
    """
    The status of every error the proxy generates (SPEC §3 "Errors"), and
    its log line: the rule, each source tried and why it failed.
    """

    async def test_connectRefused(self) -> None:
        """
        Every source refusing the connection gives a 502.
        """
        log = LogCapture(self)
        proxy = await self.proxy([freePort(), freePort()])
        self.assertEqual(await self.served(proxy, 1, b"/x"), ["<502>"])
        [line] = self.assertLogged(log, "502", "/x")
        self.assertIn("rule main", line)
        self.assertRegex(line, r"b0: [^;]*refused")
        self.assertRegex(line, r"b1: [^;]*refused")

    async def test_connectTimeoutEverywhere(self) -> None:
        """
        A connect timeout on every try gives a 504.
        """
        log = LogCapture(self)
        proxy = await self.proxy([stuckPort(self), stuckPort(self)])
        self.assertEqual(await self.served(proxy, 1, b"/x"), ["<504>"])
        [line] = self.assertLogged(log, "504", "/x")
        self.assertIn("rule main", line)
        self.assertIn("b0: connect timeout (0.5 s)", line)
        self.assertIn("b1: connect timeout (0.5 s)", line)

    async def test_connectTimeoutThenRefused(self) -> None:
        """
        A connect timeout on one source and a refusal on the other is not a
        timeout on every try: 502.
        """
        log = LogCapture(self)
        proxy = await self.proxy([stuckPort(self), freePort()])
        self.assertEqual(await self.served(proxy, 1, b"/x"), ["<502>"])
        [line] = self.assertLogged(log, "502", "/x", "rule main")
        self.assertIn("b0: connect timeout", line)
        self.assertRegex(line, r"b1: [^;]*refused")

    async def test_connectTimeoutThenServed(self) -> None:
        """
        A source that cannot be connected to in C{connect_timeout} is
        passed over for the next.
        """
        backend = startNamed(self, "b1")
        proxy = await self.proxy([stuckPort(self), backend])
        self.assertEqual(await self.served(proxy, 2), ["b1", "b1"])

    async def test_readTimeoutLogged(self) -> None:
        """
        A C{read_timeout} before the head gives a 504 naming each source.
        """
        log = LogCapture(self)
        backends = self.backends(2)
        for backend in backends:
            backend.behaviour.mode = Reply(hang=True)
        proxy = await self.proxy(backends, {"read_timeout": "0.3"})
        self.assertEqual(await self.served(proxy, 1, b"/x"), ["<504>"])
        [line] = self.assertLogged(log, "504", "/x", "rule main")
        self.assertIn("b0: no response within read_timeout (0.3 s)", line)
        self.assertIn("b1: no response within read_timeout (0.3 s)", line)

    async def test_interpretersNotStarting(self) -> None:
        """
        When no source can be tried at all (every source is an interpreter
        whose program exits at once) the client gets a 503 once each has
        had its C{spawn_timeout}.
        """
        log = LogCapture(self)
        command = interpreterCommand(sys.executable, "-c", "raise SystemExit(3)")
        sources = [
            {
                "type": "interpreter",
                "address": f"127.0.0.1:{freePort()}",
                "interpreter": command,
                "spawn_timeout": "0.3",
            }
            for _ in range(2)
        ]
        proxy = await self.proxy(sources)
        self.assertEqual(await self.served(proxy, 1, b"/x"), ["<503>"])
        [line] = self.assertLogged(log, "503", "/x", "rule main")
        self.assertIn("b0:", line)
        self.assertIn("b1:", line)

    async def test_invalidResponseHead(self) -> None:
        """
        An ambiguous response head gives a 502 whose log line says what was
        wrong with it.
        """
        log = LogCapture(self)
        [backend] = self.backends(1)
        backend.behaviour.mode = Reply(
            raw=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok"
        )
        proxy = await self.proxy([backend])
        self.assertEqual(await self.served(proxy, 1, b"/x"), ["<502>"])
        [line] = self.assertLogged(log, "502", "/x", "rule main")
        self.assertIn("b0:", line)
        self.assertIn("Content-Length and Transfer-Encoding", line)

    async def test_closedAfterHead(self) -> None:
        """
        A backend that closes after its head, before any body byte, gives a
        502 whose log line names the rule, the source and why.
        """
        log = LogCapture(self)
        [backend] = self.backends(1)
        backend.behaviour.mode = Reply(body=b"x" * 100, cut=0)
        proxy = await self.proxy([backend])
        self.assertEqual(await self.served(proxy, 1, b"/x"), ["<502>"])
        [line] = self.assertLogged(log, "b0", "/x")
        self.assertIn("rule main", line)
        self.assertNotIn("twisted.python.failure.Failure", line, "why, in words")

    async def test_badInternalRedirect(self) -> None:
        """
        A backend asking for an internal redirect to a relative path gives
        a 502 whose log line names the rule, the source and why.
        """
        log = LogCapture(self)
        [backend] = self.backends(1)
        backend.behaviour.mode = Reply(headers=[(b"X-Accel-Redirect", b"relative/file")])
        proxy = await self.proxy([backend])
        self.assertEqual(await self.served(proxy, 1, b"/x"), ["<502>"])
        [line] = self.assertLogged(log, "502", "/x")
        self.assertIn("rule main", line)
        self.assertIn("b0", line)

    async def test_tooManyInternalRedirects(self) -> None:
        """
        A backend redirecting internally for ever gives a 500 whose log
        line names the rule.
        """
        log = LogCapture(self)
        [backend] = self.backends(1)
        backend.behaviour.mode = Reply(headers=[(b"X-Accel-Redirect", b"/again")])
        proxy = await self.proxy([backend])
        self.assertEqual(await self.served(proxy, 1, b"/x"), ["<500>"])
        [line] = self.assertLogged(log, "500")
        self.assertIn("rule main", line)


# The retry decision, exactly, with agents answered by hand.


class _Consumer:
    """
    Takes what a body producer writes.
    """

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


@implementer(IResponse)
class _Response:
    """
    A response head; its body is given by L{finish} or cut by L{cut}.
    """

    version = (b"HTTP", 1, 1)
    request = None
    previousResponse = None

    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self.phrase = b"Whatever"
        self.headers = Headers({b"x-from": [b"backend"]})
        self.length = len(body)
        self.body = body
        self.protocol: Any = None
        self.transport = StringTransport()

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def setPreviousResponse(self, response: IResponse) -> None:
        pass

    def finish(self) -> None:
        self.protocol.dataReceived(self.body)
        self.protocol.connectionLost(Failure(ResponseDone()))

    def cut(self, after: int = 0) -> None:
        if after:
            self.protocol.dataReceived(self.body[:after])
        self.protocol.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))


@attrs.define(eq=False)
class _Attempt:
    """
    One C{request()} call on a L{_Agent}, answered by the test.
    """

    source: str
    method: bytes
    uri: bytes
    producer: IBodyProducer | None
    d: Deferred[IResponse]
    cancelled: bool = False
    producing: bool = False
    consumer: _Consumer = attrs.Factory(_Consumer)

    def send_body(self) -> bytes:
        """
        Start producing the body, as an agent does once connected; return
        what was produced at once.
        """
        assert self.producer is not None
        self.producing = True
        self.producer.startProducing(self.consumer)
        return self.consumer.data

    def fail(self, error: Exception) -> None:
        if self.producing and self.producer is not None:
            self.producer.stopProducing()
        self.d.errback(Failure(error))

    def respond(self, code: int = 200, body: bytes = b"hello") -> _Response:
        response = _Response(code, body)
        self.d.callback(response)
        return response


@implementer(IAgent)
class _Agent:
    """
    An agent for one source that records its requests as L{_Attempt}s.
    """

    def __init__(self, source: str, attempts: list[_Attempt]) -> None:
        self.source = source
        self.attempts = attempts

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        def cancel(d: Deferred[IResponse]) -> None:
            attempt.cancelled = True

        attempt = _Attempt(self.source, method, uri, bodyProducer, Deferred(cancel))
        self.attempts.append(attempt)
        return attempt.d


def _neverReceived() -> ResponseNeverReceived:
    return ResponseNeverReceived([Failure(ConnectionDone())])


class RetryDecisionTests(SynchronousTestCase):
    """
    When an attempt fails, whether the request goes to the next source
    (SPEC §3 "Dispatch"), with the real site and exchange in front of
    agents that fail or answer as each test says.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.attempts: list[_Attempt] = []

    def proxy(self, sources: int = 2, **rule: str) -> None:
        text = configText(
            {f"s{n}": {"address": f"127.0.0.1:{n + 1}"} for n in range(sources)},
            {"read_timeout": "5", **rule},
        )
        runtime = build(
            parse_config(text, "<test>"),
            self.clock,
            agent_factory=lambda source, settings: _Agent(source.name, self.attempts),
        )
        self.site = runtime.site

    def send(self, data: bytes) -> StringTransport:
        """
        A client connection that sends C{data}.
        """
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        protocol = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        return transport

    def request(self, method: bytes = b"GET", body: bytes | None = None) -> StringTransport:
        lines = [method + b" /p HTTP/1.1", b"Host: client.example"]
        if body is not None:
            lines.append(b"Content-Length: %d" % len(body))
        return self.send(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))

    def response(self, transport: StringTransport, method: bytes = b"GET") -> Response:
        [response] = parseResponses(transport.value(), [method == b"HEAD"])
        return response

    def sources(self) -> list[str]:
        return [attempt.source for attempt in self.attempts]

    def test_connectErrorNextSourceEvenForPost(self) -> None:
        """
        A refused connection or a connect timeout sent nothing: a POST goes
        to the next source, which gets its whole body.
        """
        for error in [ConnectionRefusedError(), ConnectTimeout()]:
            self.attempts.clear()
            self.proxy()
            client = self.request(b"POST", b"data=1")
            self.attempts[0].fail(error)
            self.assertEqual(self.sources(), ["s0", "s1"])
            self.assertEqual(self.attempts[1].send_body(), b"data=1")
            self.attempts[1].respond().finish()
            self.assertEqual(self.response(client).status, 200)

    def test_requestNotSentNextSourceEvenForPost(self) -> None:
        """
        A pooled connection found closed before the request went out: the
        POST goes to the next source.
        """
        self.proxy()
        self.request(b"POST", b"data=1")
        self.attempts[0].fail(RequestNotSent())
        self.assertEqual(self.sources(), ["s0", "s1"])

    def test_neverReceivedRetriedForIdempotent(self) -> None:
        """
        Sent, connection lost, no response byte: GET, HEAD, OPTIONS, TRACE,
        PUT and DELETE go to the next source.
        """
        for method in [b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"]:
            self.attempts.clear()
            self.proxy()
            client = self.request(method)
            self.attempts[0].fail(_neverReceived())
            self.assertEqual(self.sources(), ["s0", "s1"], method)
            self.attempts[1].respond(204, b"").finish()
            self.assertEqual(self.response(client, method).status, 204, method)

    def test_neverReceivedNotRetriedOtherwise(self) -> None:
        """
        The same for POST, PATCH or LOCK (which may have been acted on) is
        a 502 after the one try.
        """
        for method in [b"POST", b"PATCH", b"LOCK"]:
            self.attempts.clear()
            self.proxy()
            client = self.request(method, b"x")
            self.attempts[0].send_body()
            self.attempts[0].fail(_neverReceived())
            self.assertEqual(self.sources(), ["s0"], method)
            self.assertEqual(self.response(client).status, 502, method)

    def test_neverReceivedBodyNotStarted(self) -> None:
        """
        An idempotent request whose body had not begun to go out is tried
        on the next source, which gets all of it.
        """
        self.proxy()
        client = self.request(b"PUT", b"0123456789")
        self.attempts[0].fail(_neverReceived())
        self.assertEqual(self.sources(), ["s0", "s1"])
        self.assertEqual(self.attempts[1].send_body(), b"0123456789")
        self.attempts[1].respond().finish()
        self.assertEqual(self.response(client).status, 200)

    def test_neverReceivedBodyStarted(self) -> None:
        """
        Once part of the body went out it cannot be sent again: a PUT is
        then a 502 after the one try, for a lost response or a failed
        transmission alike.
        """
        for error in [_neverReceived(), RequestTransmissionFailed([Failure(ConnectionLost())])]:
            self.attempts.clear()
            self.proxy()
            client = self.request(b"PUT", b"0123456789")
            self.assertEqual(self.attempts[0].send_body(), b"0123456789")
            self.attempts[0].fail(error)
            self.assertEqual(self.sources(), ["s0"])
            self.assertEqual(self.response(client).status, 502)

    def test_neverReceivedEmptyBody(self) -> None:
        """
        An empty body (C{Content-Length: 0}) cannot be partly streamed: an
        idempotent request carrying one is retried like one without a body.
        """
        self.proxy()
        client = self.send(b"PUT /p HTTP/1.1\r\nHost: client.example\r\nContent-Length: 0\r\n\r\n")
        self.attempts[0].fail(_neverReceived())
        self.assertEqual(self.sources(), ["s0", "s1"])
        self.attempts[1].respond().finish()
        self.assertEqual(self.response(client).status, 200)

    def test_neverAfterResponse(self) -> None:
        """
        Once a response head arrived nothing is retried: not when the body
        fails before its first byte (502), nor after part of it reached the
        client (the connection is closed on a short body).
        """
        self.proxy()
        client = self.request()
        self.attempts[0].respond(200, b"0123456789").cut()
        self.assertEqual(self.sources(), ["s0"])
        self.assertEqual(self.response(client).status, 502)

        self.attempts.clear()
        self.proxy()
        client = self.request()
        self.attempts[0].respond(200, b"0123456789").cut(after=4)
        self.assertEqual(self.sources(), ["s0"])
        self.assertTrue(client.disconnecting)
        response = self.response(client)
        self.assertEqual((response.status, response.complete), (200, False))

    def test_errorAnswerNotRetried(self) -> None:
        """
        An HTTP error answer is an answer: relayed, not retried.
        """
        self.proxy()
        client = self.request()
        self.attempts[0].respond(503, b"busy").finish()
        self.assertEqual(self.sources(), ["s0"])
        self.assertEqual(self.response(client).status, 503)

    def test_oneTryPerSource(self) -> None:
        """
        Each source is tried at most once per request: with three sources
        refusing, three tries, then a 502.
        """
        self.proxy(3, max_fails="0")
        client = self.request()
        for attempt in range(3):
            self.attempts[attempt].fail(ConnectionRefusedError())
        self.assertEqual(sorted(self.sources()), ["s0", "s1", "s2"])
        self.assertEqual(self.response(client).status, 502)

    def test_allOutOfRotationOneTry(self) -> None:
        """
        When every source is out of rotation, one try, not one per source.
        """
        self.proxy(3, max_fails="1")
        self.request()
        for attempt in range(3):
            self.attempts[attempt].fail(ConnectionRefusedError())
        self.attempts.clear()
        client = self.request()
        self.assertEqual(len(self.attempts), 1)
        self.attempts[0].fail(ConnectionRefusedError())
        self.assertEqual(len(self.attempts), 1)
        self.assertEqual(self.response(client).status, 502)

    def test_failuresCounted(self) -> None:
        """
        Connect failures take a source out of rotation (C{max_fails = 1});
        an HTTP error answer does not.
        """
        self.proxy(2, balancer="failover")
        self.request()
        self.attempts[0].respond(500, b"oops").finish()
        self.request()
        self.assertEqual(self.sources(), ["s0", "s0"])
        self.attempts[1].fail(ConnectionRefusedError())
        self.attempts[2].respond().finish()
        self.request()
        self.assertEqual(self.sources(), ["s0", "s0", "s1", "s1"])

    def test_readTimeoutNextSourceForIdempotent(self) -> None:
        """
        No response head within C{read_timeout}: the attempt is cancelled
        and a GET goes to the next source.
        """
        self.proxy()
        client = self.request()
        self.clock.advance(4.9)
        self.assertEqual(self.sources(), ["s0"])
        self.clock.advance(0.2)
        self.assertTrue(self.attempts[0].cancelled)
        self.assertEqual(self.sources(), ["s0", "s1"])
        self.attempts[1].respond().finish()
        self.assertEqual(self.response(client).status, 200)

    def test_readTimeoutEverywhere(self) -> None:
        """
        A GET timing out on every source gives a 504.
        """
        self.proxy()
        client = self.request()
        self.clock.advance(5.1)
        self.clock.advance(5.1)
        self.assertEqual(self.sources(), ["s0", "s1"])
        self.assertTrue(all(attempt.cancelled for attempt in self.attempts))
        self.assertEqual(self.response(client).status, 504)

    def test_readTimeoutPostNotRetried(self) -> None:
        """
        A POST timing out is a 504 after the one try.
        """
        self.proxy()
        client = self.request(b"POST", b"x=1")
        self.attempts[0].send_body()
        self.clock.advance(5.1)
        self.assertEqual(self.sources(), ["s0"])
        self.assertTrue(self.attempts[0].cancelled)
        self.assertEqual(self.response(client).status, 504)


class InterpreterRestartTests(_ResilienceCase):
    """
    An interpreter source that dies is restarted by its supervisor, and
    requests wait for it rather than fail (SPEC §2: "Requests routed to one
    that is still starting wait for it").
    """

    timeout = 20

    async def test_requestWaitsForRestart(self) -> None:
        """
        The only source's program is killed; the very next request is
        answered once the program is back, not with a 502, and the source
        is not taken out of rotation for it.
        """
        import os
        import signal
        import tempfile

        directory = tempfile.mkdtemp()
        with open(os.path.join(directory, "index.html"), "w") as f:
            f.write("back")
        port = freePort()
        command = interpreterCommand(
            sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", directory
        )
        proxy = await self.proxy(
            [{"type": "interpreter", "address": f"127.0.0.1:{port}", "interpreter": command}]
        )
        first = await fetch(self, proxy.port, b"/index.html")
        self.assertEqual((first.status, first.body), (200, b"back"))
        interpreter = proxy.runtime.interpreters["b0"]
        os.kill(interpreter.pid, signal.SIGKILL)
        started = time.monotonic()
        again = await fetch(self, proxy.port, b"/index.html")
        self.assertEqual((again.status, again.body), (200, b"back"))
        self.assertLess(time.monotonic() - started, 10)
        self.assertTrue(proxy.runtime.site.resource.select(b"x").routes[0].resource.health.in_rotation("b0"))

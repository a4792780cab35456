# -*- test-case-name: tests.test_health -*-
"""
Tests for L{txrevproxy._health}: passive accounting, active checks, probes.

Accounting and the probe schedule run on a fake clock; L{http_probe} is
tested against a real L{Site} on 127.0.0.1 through a real pooled L{Agent}.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from twisted.application.service import IService
from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txrevproxy._health import HealthChecker, SourceHealth, http_probe

REFUSED = "connection refused"


def captureMessages(case: SynchronousTestCase, source: object) -> list[str]:
    """
    Collect, for the rest of the test, the text of every log event emitted
    by C{source}.
    """
    messages: list[str] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_source") is source:
            messages.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    case.addCleanup(globalLogPublisher.removeObserver, observe)
    return messages


def inRotation(health: SourceHealth, names: str = "abc") -> str:
    """
    The names among C{names} that C{health} has in rotation, as one string.
    """
    return "".join(name for name in names if health.in_rotation(name))


class SourceHealthTests(SynchronousTestCase):
    def health(self, max_fails: int = 1, fail_timeout: float = 10, rule: str = "") -> SourceHealth:
        self.clock = Clock()
        health = SourceHealth(["a", "b", "c"], max_fails, fail_timeout, self.clock, rule)
        self.messages = captureMessages(self, health)
        return health

    def test_invalid(self) -> None:
        clock = Clock()
        self.assertRaises(ValueError, SourceHealth, ["a", "a"], 1, 10, clock)
        self.assertRaises(ValueError, SourceHealth, ["a"], -1, 10, clock)
        self.assertRaises(ValueError, SourceHealth, ["a"], True, 10, clock)
        self.assertRaises(ValueError, SourceHealth, ["a"], 1.5, 10, clock)
        self.assertRaises(ValueError, SourceHealth, ["a"], 1, -1, clock)
        self.assertRaises(ValueError, SourceHealth, ["a"], 1, float("nan"), clock)

    def test_unknownSource(self) -> None:
        health = self.health()
        self.assertRaises(KeyError, health.in_rotation, "z")
        self.assertRaises(KeyError, health.failed, "z", REFUSED)
        self.assertRaises(KeyError, health.candidates, ["a", "z"])

    def test_allInRotationAtFirst(self) -> None:
        health = self.health()
        self.assertEqual(inRotation(health), "abc")
        self.assertEqual(health.candidates(["c", "a"]), ["c", "a"])
        self.assertEqual(self.messages, [])

    def test_oneFailureOutForFailTimeout(self) -> None:
        """
        With C{max_fails = 1}, one failure takes a source out for
        C{fail_timeout} seconds, after which it is back on trial.
        """
        health = self.health(max_fails=1, fail_timeout=10)
        self.clock.advance(3)
        health.failed("b", REFUSED)
        self.assertEqual(inRotation(health), "ac")
        self.assertEqual(health.candidates(["a", "b", "c"]), ["a", "c"])
        self.clock.advance(9.9)
        self.assertFalse(health.in_rotation("b"))
        self.clock.advance(0.1)
        self.assertTrue(health.in_rotation("b"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_threeFailuresWithinWindow(self) -> None:
        health = self.health(max_fails=3, fail_timeout=10)
        for _ in range(2):
            health.failed("a", REFUSED)
            self.assertTrue(health.in_rotation("a"))
            self.clock.advance(4)
        health.failed("a", REFUSED)
        self.assertEqual(inRotation(health), "bc")
        self.clock.advance(10)
        self.assertEqual(inRotation(health), "abc")

    def test_threeFailuresOutsideWindow(self) -> None:
        """
        Failures older than C{fail_timeout} seconds are forgotten.
        """
        health = self.health(max_fails=3, fail_timeout=10)
        for _ in range(5):
            health.failed("a", REFUSED)
            self.clock.advance(6)
        self.assertTrue(health.in_rotation("a"))
        health.failed("a", REFUSED)
        self.clock.advance(1)
        health.failed("a", REFUSED)
        self.assertFalse(health.in_rotation("a"))

    def test_trialFailureOutAgainAtOnce(self) -> None:
        health = self.health(max_fails=3, fail_timeout=10)
        for _ in range(3):
            health.failed("a", REFUSED)
        self.clock.advance(10)
        self.assertTrue(health.in_rotation("a"))
        health.failed("a", "connect timeout (5 s)")
        self.assertFalse(health.in_rotation("a"))
        self.clock.advance(9)
        self.assertFalse(health.in_rotation("a"))
        self.clock.advance(1)
        self.assertTrue(health.in_rotation("a"))

    def test_trialPassed(self) -> None:
        """
        A success during the trial ends it: from then on C{max_fails} failures
        are needed again.
        """
        health = self.health(max_fails=2, fail_timeout=10)
        health.failed("a", REFUSED)
        health.failed("a", REFUSED)
        self.clock.advance(10)
        health.succeeded("a")
        health.failed("a", REFUSED)
        self.assertTrue(health.in_rotation("a"))
        health.failed("a", REFUSED)
        self.assertFalse(health.in_rotation("a"))

    def test_succeededResetsCount(self) -> None:
        health = self.health(max_fails=3, fail_timeout=10)
        health.failed("a", REFUSED)
        health.failed("a", REFUSED)
        health.succeeded("a")
        health.failed("a", REFUSED)
        health.failed("a", REFUSED)
        self.assertTrue(health.in_rotation("a"))
        health.failed("a", REFUSED)
        self.assertFalse(health.in_rotation("a"))

    def test_succeededDoesNotEndTimeOut(self) -> None:
        """
        A late answer to a request sent before a source went out does not
        bring it back early.
        """
        health = self.health()
        health.failed("a", REFUSED)
        health.succeeded("a")
        self.assertFalse(health.in_rotation("a"))

    def test_failureWhileOutRestartsTimeOut(self) -> None:
        """
        A source tried while out (because every source was) and failing again
        stays out C{fail_timeout} seconds from that failure.
        """
        health = self.health()
        health.failed("a", REFUSED)
        self.clock.advance(5)
        health.failed("a", REFUSED)
        self.clock.advance(9)
        self.assertFalse(health.in_rotation("a"))
        self.clock.advance(1)
        self.assertTrue(health.in_rotation("a"))

    def test_candidatesWhenAllOut(self) -> None:
        health = self.health()
        for name in "abc":
            health.failed(name, REFUSED)
        self.assertEqual(health.candidates(["b", "c"]), ["b", "c"])
        self.assertEqual(health.candidates(("a",)), ["a"])
        self.assertEqual(health.candidates([]), [])

    def test_candidatesOnlyAmongUntried(self) -> None:
        """
        The fallback looks only at the untried sources: if those left are all
        out, one of them is tried, even though a tried one is in rotation.
        """
        health = self.health()
        health.failed("b", REFUSED)
        health.failed("c", REFUSED)
        self.assertEqual(health.candidates(["b", "c"]), ["b", "c"])
        self.assertEqual(health.candidates(["a", "b", "c"]), ["a"])

    def test_maxFailsZero(self) -> None:
        health = self.health(max_fails=0)
        for _ in range(10):
            health.failed("a", REFUSED)
        self.assertEqual(inRotation(health), "abc")
        self.assertEqual(self.messages, [])
        health.mark("a", False, "health check answered 500")
        self.assertEqual(inRotation(health), "bc")

    def test_markDownUntilUp(self) -> None:
        health = self.health()
        health.mark("a", False, "health check answered 500")
        self.clock.advance(1000)
        self.assertFalse(health.in_rotation("a"))
        health.failed("a", REFUSED)
        health.mark("a", True, "health check passed")
        self.assertTrue(health.in_rotation("a"))

    def test_markUpEndsTimeOut(self) -> None:
        health = self.health(max_fails=1, fail_timeout=60)
        health.failed("a", REFUSED)
        self.clock.advance(1)
        health.mark("a", True, "health check passed")
        self.assertTrue(health.in_rotation("a"))

    def test_markUpWhileInRotationKeepsPassiveWorking(self) -> None:
        health = self.health(max_fails=1)
        health.mark("a", True, "health check passed")
        health.failed("a", REFUSED)
        self.assertFalse(health.in_rotation("a"))

    def test_logOut(self) -> None:
        health = self.health(max_fails=1, fail_timeout=10)
        for _ in range(3):
            health.failed("b", "connection refused")
            self.clock.advance(1)
        self.assertEqual(
            self.messages,
            ["source b out of rotation for 10 s: connection refused (1 failure in 10 s)"],
        )

    def test_logRuleAndPlural(self) -> None:
        health = self.health(max_fails=3, fail_timeout=2.5, rule="api")
        for _ in range(3):
            health.failed("c", "connect timeout (5 s)")
        self.assertEqual(
            self.messages,
            ["rule api: source c out of rotation for 2.5 s: connect timeout (5 s) (3 failures in 2.5 s)"],
        )

    def test_logTrial(self) -> None:
        health = self.health(max_fails=1, fail_timeout=10)
        health.failed("b", REFUSED)
        self.clock.advance(10)
        for _ in range(5):
            health.candidates(["a", "b", "c"])
            self.assertTrue(health.in_rotation("b"))
        health.failed("b", "connection reset")
        self.assertEqual(
            self.messages,
            [
                "source b out of rotation for 10 s: connection refused (1 failure in 10 s)",
                "source b back in rotation (trial)",
                "source b out of rotation for 10 s: connection reset (failed its trial)",
            ],
        )

    def test_logMark(self) -> None:
        health = self.health()
        health.mark("b", True, "health check passed")
        for _ in range(3):
            health.mark("b", False, "health check answered 503")
            health.failed("b", REFUSED)
        self.clock.advance(20)
        self.assertFalse(health.in_rotation("b"))
        for _ in range(3):
            health.mark("b", True, "health check passed")
        self.assertEqual(
            self.messages,
            [
                "source b out of rotation until a health check passes: health check answered 503",
                "source b back in rotation: health check passed",
            ],
        )

    def test_logMarkUpEndsTimeOut(self) -> None:
        health = self.health()
        health.failed("b", REFUSED)
        health.mark("b", True, "health check passed")
        self.assertEqual(self.messages[1:], ["source b back in rotation: health check passed"])


class FakeProbe:
    """
    A probe whose answers the test gives: each call returns a new pending
    L{Deferred}, or fires at once with C{answer} when one is set.
    """

    def __init__(self, answer: Optional[Callable[[], Deferred[int]]] = None) -> None:
        self.answer = answer
        self.pending: list[Deferred[int]] = []
        self.cancelled = 0
        self.calls = 0

    def __call__(self) -> Deferred[int]:
        self.calls += 1
        if self.answer is not None:
            return self.answer()
        d: Deferred[int] = Deferred(self.cancel)
        self.pending.append(d)
        return d

    def cancel(self, d: Deferred[int]) -> None:
        self.cancelled += 1


class HealthCheckerTests(SynchronousTestCase):
    def checker(
        self, probes: dict[str, FakeProbe], interval: float = 10, timeout: Optional[float] = None
    ) -> HealthChecker:
        self.clock = Clock()
        self.health = SourceHealth(sorted(probes), 1, 10, self.clock)
        self.messages = captureMessages(self, self.health)
        return HealthChecker(self.health, probes, interval, self.clock, timeout=timeout)

    def test_interface(self) -> None:
        checker = self.checker({"a": FakeProbe()})
        self.assertTrue(verifyObject(IService, checker))

    def test_invalidInterval(self) -> None:
        self.assertRaises(ValueError, self.checker, {"a": FakeProbe()}, 0)
        self.assertRaises(ValueError, self.checker, {"a": FakeProbe()}, -1)

    def test_nothingWhenNotStarted(self) -> None:
        probe = FakeProbe(lambda: succeed(200))
        self.checker({"a": probe})
        self.clock.advance(100)
        self.assertEqual(probe.calls, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_schedule(self) -> None:
        """
        Every source is probed at start, then every C{interval} seconds.
        """
        a, b = FakeProbe(lambda: succeed(200)), FakeProbe(lambda: succeed(204))
        self.checker({"a": a, "b": b}, interval=5).startService()
        self.assertEqual((a.calls, b.calls), (1, 1))
        self.clock.advance(4.9)
        self.assertEqual((a.calls, b.calls), (1, 1))
        self.clock.advance(0.1)
        self.assertEqual((a.calls, b.calls), (2, 2))
        self.clock.pump([5] * 4)
        self.assertEqual((a.calls, b.calls), (6, 6))
        self.assertEqual(inRotation(self.health, "ab"), "ab")
        self.assertEqual(self.messages, [])

    def test_intervalFromStartOfProbe(self) -> None:
        """
        A slow answer does not stretch the period.
        """
        probe = FakeProbe()
        self.checker({"a": probe}, interval=10).startService()
        self.clock.advance(3)
        probe.pending[0].callback(200)
        self.clock.advance(6.9)
        self.assertEqual(probe.calls, 1)
        self.clock.advance(0.1)
        self.assertEqual(probe.calls, 2)
        self.assertEqual(probe.cancelled, 0)

    def test_noOverlap(self) -> None:
        """
        With a timeout longer than the interval, the next probe of a source
        waits for the previous one to end.
        """
        probe = FakeProbe()
        self.checker({"a": probe}, interval=2, timeout=5).startService()
        self.clock.advance(4.9)
        self.assertEqual(probe.calls, 1)
        self.clock.advance(0.1)
        self.assertEqual((probe.calls, probe.cancelled), (2, 1))

    def test_downThenUpAtFirstPass(self) -> None:
        answers = iter([500, 302])
        probe = FakeProbe(lambda: succeed(next(answers)))
        self.checker({"a": probe}, interval=3).startService()
        self.assertFalse(self.health.in_rotation("a"))
        self.clock.advance(3)
        self.assertTrue(self.health.in_rotation("a"))
        self.assertEqual(
            self.messages,
            [
                "source a out of rotation until a health check passes: health check answered 500",
                "source a back in rotation: health check passed",
            ],
        )

    def test_statuses(self) -> None:
        for status, up in [(200, True), (299, True), (301, True), (399, True), (404, False), (199, False), (503, False)]:
            probe = FakeProbe(lambda: succeed(status))
            self.checker({"a": probe}).startService()
            self.assertEqual(self.health.in_rotation("a"), up, status)

    def test_timeout(self) -> None:
        """
        A probe with no answer within the timeout is cancelled and the source
        marked down; the default timeout is C{min(interval, 5)}.
        """
        probe = FakeProbe()
        self.checker({"a": probe}, interval=30).startService()
        self.clock.advance(4.9)
        self.assertTrue(self.health.in_rotation("a"))
        self.clock.advance(0.1)
        self.assertEqual(probe.cancelled, 1)
        self.assertFalse(self.health.in_rotation("a"))
        self.assertEqual(
            self.messages,
            ["source a out of rotation until a health check passes: health check got no answer within 5 s"],
        )
        self.clock.advance(25)
        self.assertEqual(probe.calls, 2)

    def test_customTimeout(self) -> None:
        probe = FakeProbe()
        self.checker({"a": probe}, interval=2, timeout=0.5).startService()
        self.clock.advance(0.5)
        self.assertFalse(self.health.in_rotation("a"))

    def test_errorIsDown(self) -> None:
        probe = FakeProbe(lambda: fail(ConnectionRefusedError()))
        self.checker({"a": probe}).startService()
        self.assertFalse(self.health.in_rotation("a"))
        self.assertIn("health check failed: Connection was refused", self.messages[0])

    def test_raisingProbeIsDownAndKeepsSchedule(self) -> None:
        def broken() -> Deferred[int]:
            raise RuntimeError("no agent")

        probe = FakeProbe(broken)
        self.checker({"a": probe}, interval=1).startService()
        self.assertFalse(self.health.in_rotation("a"))
        self.clock.advance(1)
        self.assertEqual(probe.calls, 2)

    def test_stopServiceCancelsEverything(self) -> None:
        slow, quick = FakeProbe(), FakeProbe(lambda: succeed(200))
        checker = self.checker({"a": slow, "b": quick}, interval=10)
        checker.startService()
        checker.stopService()
        self.assertFalse(checker.running)
        self.assertEqual(slow.cancelled, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(self.health.in_rotation("a"))
        self.clock.advance(100)
        self.assertEqual((slow.calls, quick.calls), (1, 1))
        self.assertEqual(self.messages, [])

    def test_restart(self) -> None:
        probe = FakeProbe(lambda: succeed(200))
        checker = self.checker({"a": probe}, interval=10)
        checker.startService()
        checker.stopService()
        checker.startService()
        self.assertEqual(probe.calls, 2)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(probe.calls, 3)


# Real HTTP below.


class Answer(Resource):
    """
    Answers with C{code} and a body of C{size} bytes, remembering the request
    headers it got.
    """

    isLeaf = True

    def __init__(self, code: int, size: int = 0) -> None:
        super().__init__()
        self.code, self.size = code, size
        self.seen: list[dict[bytes, list[bytes]]] = []

    def render_GET(self, request: Any) -> bytes:
        self.seen.append(dict(request.requestHeaders.getAllRawHeaders()))
        request.setResponseCode(self.code)
        return b"x" * self.size


class Hang(Resource):
    """
    Never finishes its answer; with C{start}, sends the head and part of the
    body first.
    """

    isLeaf = True

    def __init__(self, start: bool) -> None:
        super().__init__()
        self.start = start

    def render_GET(self, request: Any) -> object:
        if self.start:
            request.setHeader(b"content-length", b"1000")
            request.write(b"partial")
        return NOT_DONE_YET


class Connections(WrappingFactory):
    """
    Counts the server's connections and tells when all are closed.
    """

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.made = 0
        self.waiting: list[Deferred[None]] = []

    def registerProtocol(self, p: ProtocolWrapper) -> None:
        super().registerProtocol(p)
        self.made += 1

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self.waiting = self.waiting, []
            for d in waiting:
                d.callback(None)

    def allClosed(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.protocols:
            self.waiting.append(d)
        else:
            d.callback(None)
        return d


async def waitUntil(condition: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.01)


class HTTPProbeTests(TestCase):
    timeout = 10
    def setUp(self) -> None:
        root = Resource()
        self.ok = Answer(200, size=200_000)
        root.putChild(b"ok", self.ok)
        root.putChild(b"fail", Answer(500, size=10))
        root.putChild(b"hang", Hang(start=False))
        root.putChild(b"partial", Hang(start=True))
        self.connections = Connections(Site(root))
        port = reactor.listenTCP(0, self.connections, interface="127.0.0.1")
        self.addCleanup(self.connections.allClosed)
        self.addCleanup(port.stopListening)
        self.prefix = b"http://127.0.0.1:%d" % (port.getHost().port,)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)

    def probe(self, path: bytes, timeout: float = 5.0) -> Callable[[], Deferred[int]]:
        return http_probe(self.agent, self.prefix + path, b"app.example", timeout, reactor)

    async def test_ok(self) -> None:
        """
        A 200 fires with 200 once the body is read; the request names the
        given host and the checker, and the connection goes back to the
        pool for the next probe.
        """
        probe = self.probe(b"/ok")
        self.assertEqual(await probe(), 200)
        self.assertEqual(await probe(), 200)
        self.assertEqual(self.connections.made, 1)
        self.assertEqual(self.ok.seen[0][b"Host"], [b"app.example"])
        self.assertEqual(self.ok.seen[0][b"User-Agent"], [b"txrevproxy-health-check"])

    async def test_serverError(self) -> None:
        self.assertEqual(await self.probe(b"/fail")(), 500)

    async def test_noAnswer(self) -> None:
        started = time.monotonic()
        with self.assertRaises(TimeoutError):
            await self.probe(b"/hang", timeout=0.2)()
        self.assertLess(time.monotonic() - started, 3)
        await self.connections.allClosed()

    async def test_unfinishedBody(self) -> None:
        """
        A body that never ends times out too, and its connection is closed
        rather than left in the pool.
        """
        with self.assertRaises(TimeoutError):
            await self.probe(b"/partial", timeout=0.2)()
        await self.connections.allClosed()

    async def test_refused(self) -> None:
        port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        probe = http_probe(self.agent, b"http://127.0.0.1:%d/" % (number,), b"x", 5, reactor)
        with self.assertRaises(ConnectionRefusedError):
            await probe()

    async def test_checker(self) -> None:
        """
        The checker with real probes marks a 200 source up and a 500 source
        down.
        """
        health = SourceHealth(["good", "bad"], 1, 10, reactor)
        health.mark("good", False, "assumed down")
        probes = {"good": self.probe(b"/ok"), "bad": self.probe(b"/fail")}
        checker = HealthChecker(health, probes, 60, reactor)
        checker.startService()
        self.addCleanup(checker.stopService)
        await waitUntil(lambda: health.in_rotation("good") and not health.in_rotation("bad"))

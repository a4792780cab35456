# -*- test-case-name: tests.test_interpreter -*-
"""
Tests for L{txrevproxy._interpreter}: supervision of local backend programs.

The schedule (probes, restarts, SIGKILL) is tested with a fake clock and a fake
process reactor. Starting, probing, restarting and stopping are also tested
with real child processes that listen on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
from typing import Callable, Mapping, Sequence

import attrs
from twisted.application.service import IService
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import (
    ConnectionRefusedError,
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
)
from twisted.internet.interfaces import IProcessProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txrevproxy._interpreter import (
    Backoff,
    Interpreter,
    SpawnFailed,
    findExecutable,
)


def captureLogs(case: SynchronousTestCase) -> list[LogEvent]:
    """
    Collect every log event for the rest of the test.
    """
    events: list[LogEvent] = []
    observer = implementer(ILogObserver)(lambda event: events.append(event))
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def temporaryDirectory(case: SynchronousTestCase) -> str:
    """
    Make a directory outside the source tree, removed after the test.
    """
    directory = tempfile.mkdtemp(prefix="txrevproxy-test-")
    case.addCleanup(shutil.rmtree, directory)
    return directory


def sourceEvents(events: list[LogEvent], name: str) -> list[LogEvent]:
    return [e for e in events if e.get("source") == name]


class FakeProcess:
    """
    An C{IProcessTransport} stand-in whose exit the test decides.
    """

    def __init__(self, protocol: IProcessProtocol, pid: int) -> None:
        self.protocol = protocol
        self.pid: int | None = pid
        self.signals: list[str] = []
        self.stdinClosed = False

    def closeStdin(self) -> None:
        self.stdinClosed = True

    def signalProcess(self, name: str) -> None:
        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(name)

    def exit(self, code: int | None = 0, signal: int | None = None) -> None:
        self.pid = None
        if code == 0 and signal is None:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(code, signal))
        self.protocol.processExited(reason)
        self.protocol.processEnded(reason)


@attrs.frozen
class Spawned:
    executable: str
    args: Sequence[str]
    env: Mapping[str, str]
    childFDs: Mapping[int, object]
    process: FakeProcess


class ProcessClock(MemoryReactorClock):
    """
    A memory reactor with a clock that also records C{spawnProcess} calls.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[Spawned] = []
        self.spawnError: OSError | None = None

    def spawnProcess(  # type: ignore[no-untyped-def]
        self, processProtocol, executable, args=(), env=None, path=None,
        uid=None, gid=None, usePTY=False, childFDs=None,
    ) -> FakeProcess:
        if self.spawnError is not None:
            raise self.spawnError
        process = FakeProcess(processProtocol, 1000 + len(self.spawned))
        self.spawned.append(Spawned(executable, args, env, childFDs, process))
        processProtocol.makeConnection(process)
        return process

    @property
    def process(self) -> FakeProcess:
        return self.spawned[-1].process


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    An endpoint that refuses connections until C{listening} is set, and
    records when it was tried.
    """

    def __init__(self, clock: ProcessClock) -> None:
        self.clock = clock
        self.listening = False
        self.attempts: list[float] = []
        self.transports: list[StringTransport] = []

    def connect(self, factory: Factory) -> Deferred[Protocol]:
        self.attempts.append(self.clock.seconds())
        if not self.listening:
            return fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.transports.append(transport)
        return succeed(protocol)


class BackoffTests(SynchronousTestCase):
    def test_doublesUpToMaximum(self) -> None:
        backoff = Backoff(0.5, 30)
        self.assertEqual(
            [backoff.delay(n) for n in range(9)],
            [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0],
        )

    def test_hugeAttempt(self) -> None:
        self.assertEqual(Backoff(0.5, 30).delay(100000), 30.0)

    def test_invalid(self) -> None:
        self.assertRaises(ValueError, Backoff, 0, 1)
        self.assertRaises(ValueError, Backoff, 2, 1)
        self.assertRaises(ValueError, Backoff, 1, 2, factor=0.5)


class FindExecutableTests(SynchronousTestCase):
    def test_path(self) -> None:
        self.assertEqual(findExecutable(sys.executable), sys.executable)

    def test_pathNotExecutable(self) -> None:
        path = os.path.join(temporaryDirectory(self), "plain")
        open(path, "w").close()
        self.assertIsNone(findExecutable(path))

    def test_lookedUpOnPath(self) -> None:
        directory = temporaryDirectory(self)
        program = os.path.join(directory, "txrevproxy-test-program")
        open(program, "w").close()
        os.chmod(program, stat.S_IRWXU)
        self.patch(os, "environ", {"PATH": directory})
        self.assertEqual(findExecutable("txrevproxy-test-program"), program)
        self.assertIsNone(findExecutable("txrevproxy-no-such-program"))


class ScheduleTests(SynchronousTestCase):
    """
    Spawning, probing, restarting and stopping, on a fake clock.
    """

    def setUp(self) -> None:
        self.clock = ProcessClock()
        self.endpoint = FakeEndpoint(self.clock)
        self.events = captureLogs(self)
        self.environ = {"PATH": "/nowhere", "KEEP": "base", "OVERRIDE": "base"}
        self.interp = Interpreter(
            "app",
            [sys.executable, "-m", "app"],
            {"OVERRIDE": "extra", "NEW": "1"},
            self.endpoint,
            3.0,
            self.clock,
            environ=self.environ,
            stopGrace=5.0,
        )

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IService, self.interp))
        self.assertTrue(verifyObject(IStreamClientEndpoint, self.endpoint))
        self.assertEqual(self.interp.name, "app")

    def test_invalid(self) -> None:
        self.assertRaises(
            ValueError, Interpreter, "x", [], {}, self.endpoint, 1.0, self.clock
        )
        self.assertRaises(
            ValueError, Interpreter, "x", ["a"], {}, self.endpoint, 0, self.clock
        )

    def test_spawn(self) -> None:
        """
        The program is started without a shell, with the proxy's environment
        (as it is at start) plus the extra variables, and output pipes.
        """
        self.environ["LATE"] = "yes"
        self.interp.startService()
        [spawned] = self.clock.spawned
        self.assertEqual(spawned.executable, sys.executable)
        self.assertEqual(list(spawned.args), [sys.executable, "-m", "app"])
        self.assertEqual(
            spawned.env,
            {
                "PATH": "/nowhere",
                "KEEP": "base",
                "OVERRIDE": "extra",
                "NEW": "1",
                "LATE": "yes",
            },
        )
        self.assertEqual(spawned.childFDs, {0: "w", 1: "r", 2: "r"})
        self.assertTrue(spawned.process.stdinClosed)
        self.assertEqual(self.interp.pid, 1000)
        self.assertFalse(self.interp.ready)
        [started] = sourceEvents(self.events, "app")
        self.assertEqual(started["pid"], 1000)

    def test_probeSchedule(self) -> None:
        """
        The address is probed with a growing interval (capped at 0.5 s) until
        it accepts a connection. The probe connection is then closed, waiters
        fire, and probing stops.
        """
        self.interp.startService()
        intervals = []
        for attempt in range(6):
            [probe] = self.clock.getDelayedCalls()
            interval = probe.getTime() - self.clock.seconds()
            intervals.append(round(interval, 6))
            self.clock.advance(interval)
            self.assertEqual(len(self.endpoint.attempts), attempt + 1)
        self.assertEqual(intervals, [0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
        waiter = self.interp.whenReady()
        self.endpoint.listening = True
        self.clock.advance(0.49)
        self.assertNoResult(waiter)
        self.clock.advance(0.01)
        self.assertEqual(len(self.endpoint.attempts), 7)
        self.assertIsNone(self.successResultOf(waiter))
        self.assertTrue(self.interp.ready)
        [transport] = self.endpoint.transports
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(self.successResultOf(self.interp.whenReady()))

    def test_whenReadyTimeout(self) -> None:
        """
        L{Interpreter.whenReady} fails with L{SpawnFailed}, naming the source,
        C{spawn_timeout} seconds after the call. Probing goes on.
        """
        self.interp.startService()
        self.clock.advance(1.0)
        waiter = self.interp.whenReady()
        self.clock.advance(2.5)
        self.assertNoResult(waiter)
        self.clock.advance(0.5)
        error = self.failureResultOf(waiter, SpawnFailed).value
        self.assertIn("'app'", str(error))
        self.assertIn("3 s", str(error))
        self.endpoint.listening = True
        self.clock.advance(0.5)
        self.assertTrue(self.interp.ready)

    def test_whenReadyCancel(self) -> None:
        self.interp.startService()
        waiter = self.interp.whenReady()
        waiter.cancel()
        self.failureResultOf(waiter, CancelledError)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # only the probe

    def test_whenReadyNotRunning(self) -> None:
        self.failureResultOf(self.interp.whenReady(), SpawnFailed)

    def test_restartBackoff(self) -> None:
        """
        A program that keeps exiting is restarted after 0.5 s, doubling up to
        30 s. A run of 10 s or more resets the delay.
        """
        self.interp.startService()
        starts = [self.clock.seconds()]
        for _ in range(8):
            self.clock.process.exit(1)
            before = len(self.clock.spawned)
            while len(self.clock.spawned) == before:
                self.clock.advance(0.25)
            starts.append(self.clock.seconds())
        self.assertEqual(
            [b - a for a, b in zip(starts, starts[1:])],
            [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0],
        )
        self.clock.advance(10.0)
        self.clock.process.exit(1)
        self.clock.advance(0.5)
        self.assertEqual(len(self.clock.spawned), 10)

    def test_exitLogged(self) -> None:
        """
        An exit is logged with its exit code or signal, and the program is no
        longer ready.
        """
        self.endpoint.listening = True
        self.interp.startService()
        self.clock.advance(0.05)
        self.assertTrue(self.interp.ready)
        self.clock.process.exit(None, signal.SIGKILL)
        self.assertFalse(self.interp.ready)
        self.assertIsNone(self.interp.pid)
        exited = sourceEvents(self.events, "app")[-1]
        self.assertEqual(exited["signal"], signal.SIGKILL)
        self.assertEqual(exited["delay"], 0.5)
        self.assertIn("signal 9", exited["status"])
        self.clock.advance(0.5)
        self.clock.process.exit(3)
        exited = sourceEvents(self.events, "app")[-1]
        self.assertEqual(exited["exitCode"], 3)
        self.assertEqual(exited["status"], "exit code 3")

    def test_waitAcrossRestart(self) -> None:
        """
        A request waiting while the program exits and restarts is served once
        the new run is ready.
        """
        self.interp.startService()
        waiter = self.interp.whenReady()
        self.clock.process.exit(1)
        self.clock.advance(0.5)
        self.endpoint.listening = True
        self.clock.advance(0.05)
        self.assertIsNone(self.successResultOf(waiter))
        self.assertEqual(len(self.clock.spawned), 2)

    def test_stopTermThenKill(self) -> None:
        """
        Stopping sends SIGTERM, then SIGKILL after the grace period. The result
        fires when the program exits; it is not restarted, waiters fail, and no
        delayed call is left.
        """
        self.interp.startService()
        waiter = self.interp.whenReady()
        process = self.clock.process
        stopped = self.interp.stopService()
        self.failureResultOf(waiter, SpawnFailed)
        self.failureResultOf(self.interp.whenReady(), SpawnFailed)
        self.assertEqual(process.signals, ["TERM"])
        self.clock.advance(4.9)
        self.assertEqual(process.signals, ["TERM"])
        self.clock.advance(0.1)
        self.assertEqual(process.signals, ["TERM", "KILL"])
        self.assertNoResult(stopped)
        process.exit(None, signal.SIGKILL)
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.clock.spawned), 1)

    def test_stopPromptExit(self) -> None:
        self.interp.startService()
        process = self.clock.process
        stopped = self.interp.stopService()
        process.exit(0)
        self.successResultOf(stopped)
        self.assertEqual(process.signals, ["TERM"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopWhileRestarting(self) -> None:
        self.interp.startService()
        self.clock.process.exit(1)
        self.successResultOf(self.interp.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_startWhileStopping(self) -> None:
        """
        Starting again before the previous run has exited starts a new run
        once it has.
        """
        self.interp.startService()
        process = self.clock.process
        stopped = self.interp.stopService()
        self.interp.startService()
        self.assertEqual(len(self.clock.spawned), 1)
        process.exit(0)
        self.successResultOf(stopped)
        self.assertEqual(len(self.clock.spawned), 2)

    def test_spawnError(self) -> None:
        """
        A program that cannot be started is logged and retried with back-off.
        """
        self.clock.spawnError = PermissionError("denied")
        self.interp.startService()
        self.assertIsNone(self.interp.pid)
        [event] = sourceEvents(self.events, "app")
        self.assertIn("denied", str(event["error"]))
        self.clock.spawnError = None
        self.clock.advance(0.5)
        self.assertEqual(self.interp.pid, 1000)

    def test_notFound(self) -> None:
        interp = Interpreter(
            "gone", ["txrevproxy-no-such-program"], {}, self.endpoint, 1.0, self.clock
        )
        interp.startService()
        self.assertEqual(self.clock.spawned, [])
        [event] = sourceEvents(self.events, "gone")
        self.assertIsInstance(event["error"], FileNotFoundError)
        self.successResultOf(interp.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_outputLines(self) -> None:
        """
        Output is logged line by line, from both streams, with long lines cut.
        """
        interp = Interpreter(
            "out", [sys.executable], {}, self.endpoint, 1.0, self.clock, maxLineLength=10
        )
        interp.startService()
        protocol = self.clock.process.protocol
        protocol.childDataReceived(1, b"one\r\ntw")
        protocol.childDataReceived(2, b"err\n")
        protocol.childDataReceived(1, b"o\n" + b"x" * 25)
        protocol.childDataReceived(1, b"yy\n" + b"z" * 12 + b"\nlast")
        protocol.childConnectionLost(1)
        lines = [
            (e["stream"], e["line"]) for e in sourceEvents(self.events, "out") if "line" in e
        ]
        self.assertEqual(
            lines,
            [
                ("stdout", "one"),
                ("stderr", "err"),
                ("stdout", "two"),
                ("stdout", "x" * 10 + " [truncated]"),
                ("stdout", "z" * 10 + " [truncated]"),
                ("stdout", "last"),
            ],
        )


SERVER = r"""
import os, signal, socket, sys, time
port, delay = int(sys.argv[1]), float(sys.argv[2])
if "ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("greeting", os.environ.get("GREETING"), os.environ.get("BASE"), flush=True)
print("on stderr", file=sys.stderr, flush=True)
time.sleep(delay)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(16)
while True:
    c, _ = s.accept()
    c.sendall(b"hi\n")
    c.close()
"""


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Collect(Protocol):
    """
    Send C{request} on connection, and collect the reply until the server
    closes the connection.
    """

    def __init__(self, request: bytes = b"") -> None:
        self.request = request
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(self.received)


def waitForEvent(case: TestCase, match: Callable[[LogEvent], bool]) -> Deferred[LogEvent]:
    """
    @return: a L{Deferred} that fires with the next log event that matches.
    """
    found: Deferred[LogEvent] = Deferred()

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        if not found.called and match(event):
            found.callback(event)

    globalLogPublisher.addObserver(observe)
    case.addCleanup(globalLogPublisher.removeObserver, observe)
    return found


class RealProcessTests(TestCase):
    """
    Supervise real programs listening on 127.0.0.1.
    """

    timeout = 10

    def setUp(self) -> None:
        self.port = freePort()
        self.endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        self.events = captureLogs(self)

    def interpreter(
        self,
        argv: Sequence[str],
        spawnTimeout: float = 5.0,
        env: Mapping[str, str] = {},
        **kw: object,
    ) -> Interpreter:
        interp = Interpreter(
            "real", argv, env, self.endpoint, spawnTimeout, reactor, **kw  # type: ignore[arg-type]
        )
        interp.startService()

        def killLeftover() -> None:
            # Only if stopping failed: kill the process this test started.
            if interp.pid is not None:
                os.kill(interp.pid, signal.SIGKILL)

        self.addCleanup(killLeftover)
        self.addCleanup(lambda: interp.stopService() if interp.running else None)
        return interp

    def server(self, delay: float = 0.0, *extra: str) -> list[str]:
        return [sys.executable, "-c", SERVER, str(self.port), str(delay), *extra]

    async def fetch(self, request: bytes = b"") -> bytes:
        protocol = await connectProtocol(self.endpoint, Collect(request))
        return await protocol.done

    async def test_startAndConnect(self) -> None:
        interp = self.interpreter(self.server())
        await interp.whenReady()
        self.assertTrue(interp.ready)
        self.assertEqual(await self.fetch(), b"hi\n")

    async def test_waitsUntilListening(self) -> None:
        """
        A request that arrives while the program starts waits for it.
        """
        interp = self.interpreter(self.server(0.4))
        waiter = interp.whenReady()
        self.assertFalse(waiter.called)
        started = reactor.seconds()
        await waiter
        self.assertGreaterEqual(reactor.seconds() - started, 0.3)
        self.assertEqual(await self.fetch(), b"hi\n")

    async def test_neverListens(self) -> None:
        interp = self.interpreter(
            [sys.executable, "-c", "import time; time.sleep(30)"], spawnTimeout=1.0
        )
        started = reactor.seconds()
        with self.assertRaises(SpawnFailed) as raised:
            await interp.whenReady()
        self.assertGreaterEqual(reactor.seconds() - started, 0.9)
        self.assertIn("'real'", str(raised.exception))
        self.assertIsNotNone(interp.pid)

    async def test_restartAfterKill(self) -> None:
        """
        A program killed from outside is logged, restarted and ready again.
        """
        interp = self.interpreter(self.server())
        await interp.whenReady()
        pid = interp.pid
        assert pid is not None
        exited = waitForEvent(
            self, lambda e: e.get("source") == "real" and "delay" in e
        )
        os.kill(pid, signal.SIGKILL)
        event = await exited
        self.assertEqual(event["signal"], signal.SIGKILL)
        self.assertFalse(interp.ready)
        await interp.whenReady()
        self.assertNotIn(interp.pid, (None, pid))
        self.assertEqual(await self.fetch(), b"hi\n")

    async def test_stopTerminates(self) -> None:
        interp = self.interpreter(self.server())
        await interp.whenReady()
        stopped = waitForEvent(self, lambda e: e.get("source") == "real" and "status" in e)
        await interp.stopService()
        self.assertEqual((await stopped)["signal"], signal.SIGTERM)
        self.assertIsNone(interp.pid)
        with self.assertRaises(ConnectionRefusedError):
            await self.fetch()

    async def test_stopKillsAfterGrace(self) -> None:
        """
        A program that ignores SIGTERM is killed after the grace period.
        """
        interp = self.interpreter(self.server(0.0, "ignore-term"), stopGrace=0.5)
        await interp.whenReady()
        stopped = waitForEvent(self, lambda e: e.get("source") == "real" and "status" in e)
        started = reactor.seconds()
        await interp.stopService()
        self.assertGreaterEqual(reactor.seconds() - started, 0.45)
        self.assertEqual((await stopped)["signal"], signal.SIGKILL)
        self.assertIsNone(interp.pid)

    async def test_outputAndEnvironment(self) -> None:
        """
        The program's output reaches the log, and it sees the proxy's
        environment plus the source's C{env}.
        """
        interp = self.interpreter(
            self.server(), env={"GREETING": "hello"}, environ={"BASE": "base"}
        )
        await interp.whenReady()
        lines = {
            (e["stream"], e["line"])
            for e in sourceEvents(self.events, "real")
            if "line" in e
        }
        self.assertIn(("stdout", "greeting hello base"), lines)
        self.assertIn(("stderr", "on stderr"), lines)

    async def test_twistWeb(self) -> None:
        """
        The intended use: C{twist web} serving a directory.
        """
        root = temporaryDirectory(self)
        with open(os.path.join(root, "hello.txt"), "wb") as f:
            f.write(b"hello from twist web")
        interp = self.interpreter(
            [
                sys.executable,
                "-m",
                "twisted",
                "web",
                "--listen",
                f"tcp:{self.port}:interface=127.0.0.1",
                "--path",
                root,
            ]
        )
        await interp.whenReady()
        response = await self.fetch(b"GET /hello.txt HTTP/1.0\r\nHost: x\r\n\r\n")
        self.assertTrue(response.startswith(b"HTTP/1.0 200"), response[:100])
        self.assertTrue(response.endswith(b"hello from twist web"))

# -*- test-case-name: tests.test_interpreter -*-
"""
Supervision of C{interpreter} sources: local backend programs that the proxy
starts, waits for, restarts and stops.

Cherokee starts such a program only after a connection to it has been refused.
It then retries exactly once, so the first request after a start usually gets
a 502. Here the program starts with the proxy, and readiness is found by
probing its address. Requests wait for readiness (L{Interpreter.whenReady}). A
program that exits is restarted with back-off, and its output goes to the log.
"""

from __future__ import annotations

import os
import shlex
from functools import partial
from typing import Any, Callable, Mapping, Protocol as _TypingProtocol, Sequence, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessProtocol,
    IProcessTransport,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._process import Backoff, LineSplitter, findExecutable

__all__ = ["Backoff", "Interpreter", "SpawnFailed", "findExecutable"]


class SpawnFailed(Exception):
    """
    An interpreter source did not accept connections in time, or was stopped
    while a request waited for it.
    """


RESTART_BACKOFF = Backoff(0.5, 30.0)
PROBE_BACKOFF = Backoff(0.05, 0.5)
_PROBE_TIMEOUT = 2.0


class _Reactor(_TypingProtocol):
    """
    The reactor features an L{Interpreter} needs (C{IReactorTime} and
    C{IReactorProcess}).
    """

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall: ...

    def seconds(self) -> float: ...

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = ...,
        *,
        childFDs: Mapping[int, int | str] | None = ...,
    ) -> IProcessTransport: ...


class _Child(ProcessProtocol):
    """
    One run of the supervised program. It reports output and exit to its
    L{Interpreter}.
    """

    transport: IProcessTransport | None

    def __init__(self, interpreter: Interpreter, maxLineLength: int) -> None:
        self._interpreter = interpreter
        self.startedAt = 0.0
        self._streams = {
            fd: LineSplitter(partial(interpreter._outputLine, self, stream), maxLineLength)
            for fd, stream in ((1, "stdout"), (2, "stderr"))
        }

    def connectionMade(self) -> None:
        # The program gets an empty stdin; it has nobody to talk to there.
        assert self.transport is not None
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD in self._streams:
            self._streams[childFD].feed(data)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD in self._streams:
            self._streams[childFD].flush()

    def processExited(self, reason: Failure) -> None:
        # processExited rather than processEnded, which waits until every copy
        # of the output pipes is closed, including copies held by grandchildren.
        self._interpreter._childExited(self, reason)

    def signal(self, name: str) -> None:
        assert self.transport is not None
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass


def _describeExit(reason: Failure) -> str:
    if isinstance(reason.value, ProcessTerminated) and reason.value.signal is not None:
        return f"killed by signal {reason.value.signal}"
    return f"exit code {getattr(reason.value, 'exitCode', None)}"


class Interpreter(Service):
    """
    Start, supervise and stop one C{interpreter} source.

    @ivar name: the source's name, used in log messages and errors.
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        endpoint: IStreamClientEndpoint,
        spawn_timeout: float,
        reactor: _Reactor,
        *,
        stopGrace: float = 5.0,
        environ: Mapping[str, str] = os.environ,
        restartBackoff: Backoff = RESTART_BACKOFF,
        probeBackoff: Backoff = PROBE_BACKOFF,
        resetAfter: float = 10.0,
        maxLineLength: int = 4096,
    ) -> None:
        """
        @param name: the source's name.
        @param argv: the program and its arguments; C{argv[0]} is looked up on
            C{PATH} unless it is a path.
        @param env: variables added to (or replacing) C{environ} for the program.
        @param endpoint: the program's address, probed for readiness. For an
            C{https} backend this is the plain TCP endpoint, without TLS.
        @param spawn_timeout: how long L{whenReady} waits, in seconds.
        @param reactor: provides C{IReactorTime} and C{IReactorProcess}.
        @param stopGrace: seconds between SIGTERM and SIGKILL when stopping.
        @param environ: the proxy's environment, read (not copied) at each
            start.
        @param restartBackoff: delays before restarting a program that exited.
        @param probeBackoff: delays between readiness probes.
        @param resetAfter: a run at least this long (seconds) resets the
            restart back-off.
        @param maxLineLength: output lines are cut at this many bytes.
        """
        if not argv:
            raise ValueError(f"source {name!r}: empty command line")
        if not spawn_timeout > 0:
            raise ValueError(f"source {name!r}: spawn_timeout must be positive")
        self.name = name  # type: ignore[assignment]  # (Service.name is typed None)
        self._argv = tuple(argv)
        self._extraEnv = dict(env)
        self._endpoint = endpoint
        self._spawnTimeout = spawn_timeout
        self._reactor = reactor
        self._stopGrace = stopGrace
        self._environ = environ
        self._restartBackoff = restartBackoff
        self._probeBackoff = probeBackoff
        self._resetAfter = resetAfter
        self._maxLineLength = maxLineLength

        self._child: _Child | None = None
        self._ready = False
        self._waiters: dict[Deferred[None], IDelayedCall] = {}
        self._restarts = 0
        self._restartCall: IDelayedCall | None = None
        self._probes = 0
        self._probeCall: IDelayedCall | None = None
        self._probing: Deferred[Protocol] | None = None
        self._killCall: IDelayedCall | None = None
        self._exitWaiters: list[Deferred[None]] = []

    @property
    def ready(self) -> bool:
        """
        Whether the running program is known to accept connections.
        """
        return self._ready

    @property
    def pid(self) -> int | None:
        """
        The running program's process id, or L{None} if none is running.
        """
        if self._child is None or self._child.transport is None:
            return None
        return self._child.transport.pid

    def whenReady(self) -> Deferred[None]:
        """
        Wait until the program accepts connections.

        @return: a L{Deferred} that fires with L{None} at once if the program is
            ready, else when it becomes ready. It fails with L{SpawnFailed} if
            that takes longer than C{spawn_timeout} seconds from now, or if the
            service stops (or is not running).
        """
        if not self.running:
            return fail(SpawnFailed(f"source {self.name!r} is not running"))
        if self._ready:
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._cancelWaiter)
        self._waiters[waiter] = self._reactor.callLater(
            self._spawnTimeout, self._waiterTimedOut, waiter
        )
        return waiter

    def startService(self) -> None:
        Service.startService(self)
        if self._child is None:
            self._spawn()
        # Else the previous run is still stopping; it is restarted when it exits.

    def stopService(self) -> Deferred[None]:
        """
        Stop the program: SIGTERM, then SIGKILL after C{stopGrace} seconds.

        @return: a L{Deferred} that fires once the program has exited.
        """
        Service.stopService(self)
        self._ready = False
        self._cancelRestart()
        self._cancelProbe()
        self._failWaiters(SpawnFailed(f"source {self.name!r} was stopped"))
        child = self._child
        if child is None:
            return succeed(None)
        exited: Deferred[None] = Deferred()
        self._exitWaiters.append(exited)
        if self._killCall is None:
            self.log.info("[{source}] stopping (pid {pid})", source=self.name, pid=self.pid)
            child.signal("TERM")
            self._killCall = self._reactor.callLater(self._stopGrace, self._kill, child)
        return exited

    def _spawn(self) -> None:
        self._restartCall = None
        command = shlex.join(self._argv)
        executable = findExecutable(self._argv[0])
        environment = {**self._environ, **self._extraEnv}
        child = _Child(self, self._maxLineLength)
        child.startedAt = self._reactor.seconds()
        # Set before spawning: the reactor may report the exit from spawnProcess.
        self._child = child
        try:
            if executable is None:
                raise FileNotFoundError(f"{self._argv[0]!r} not found on PATH")
            self._reactor.spawnProcess(
                child, executable, self._argv, environment,
                childFDs={0: "w", 1: "r", 2: "r"},
            )
        except OSError as e:
            self._child = None
            delay = self._scheduleRestart(0.0)
            self.log.error(
                "[{source}] cannot start {command}: {error}; retrying in {delay:g} s",
                source=self.name, command=command, error=e, delay=delay,
            )
            return
        if self._child is not child:
            return  # It has already exited and a restart is scheduled.
        self.log.info(
            "[{source}] started {command} (pid {pid})",
            source=self.name, command=command, pid=self.pid,
        )
        self._probes = 0
        self._scheduleProbe(child)

    def _scheduleRestart(self, uptime: float) -> float:
        if uptime >= self._resetAfter:
            self._restarts = 0
        delay = self._restartBackoff.delay(self._restarts)
        self._restarts += 1
        self._restartCall = self._reactor.callLater(delay, self._spawn)
        return delay

    def _cancelRestart(self) -> None:
        if self._restartCall is not None:
            self._restartCall.cancel()
            self._restartCall = None

    def recheck(self) -> None:
        """
        A connection to the program was refused: it may have just exited,
        before its exit was noticed.  Until a probe (or a restart) shows it
        accepting again, L{whenReady} waits instead of answering at once.
        """
        child = self._child
        if not self._ready or child is None or not self.running:
            return
        self._ready = False
        self._cancelProbe()
        self._probes = 0
        self._scheduleProbe(child)

    def _scheduleProbe(self, child: _Child) -> None:
        delay = self._probeBackoff.delay(self._probes)
        self._probes += 1
        self._probeCall = self._reactor.callLater(delay, self._probe, child)

    def _probe(self, child: _Child) -> None:
        self._probeCall = None
        attempt: Deferred[Any] = self._endpoint.connect(Factory.forProtocol(Protocol))
        attempt.addTimeout(_PROBE_TIMEOUT, cast(IReactorTime, self._reactor))
        self._probing = attempt
        attempt.addCallbacks(
            self._probeSucceeded, self._probeFailed,
            callbackArgs=(child,), errbackArgs=(child,),
        )

    def _probeSucceeded(self, probe: Protocol, child: _Child) -> None:
        self._probing = None
        if probe.transport is not None:
            probe.transport.loseConnection()
        if child is not self._child or not self.running:
            return
        self._ready = True
        self.log.info(
            "[{source}] accepting connections after {elapsed:.2f} s",
            source=self.name,
            elapsed=self._reactor.seconds() - child.startedAt,
        )
        waiters, self._waiters = self._waiters, {}
        for waiter, timer in waiters.items():
            timer.cancel()
            waiter.callback(None)

    def _probeFailed(self, reason: Failure, child: _Child) -> None:
        self._probing = None
        if child is self._child and self.running:
            self._scheduleProbe(child)

    def _cancelProbe(self) -> None:
        if self._probeCall is not None:
            self._probeCall.cancel()
            self._probeCall = None
        if self._probing is not None:
            probing, self._probing = self._probing, None
            probing.cancel()

    def _cancelWaiter(self, waiter: Deferred[None]) -> None:
        timer = self._waiters.pop(waiter, None)
        if timer is not None:
            timer.cancel()

    def _waiterTimedOut(self, waiter: Deferred[None]) -> None:
        del self._waiters[waiter]
        waiter.errback(
            SpawnFailed(
                f"source {self.name!r} did not accept connections "
                f"within {self._spawnTimeout:g} s"
            )
        )

    def _failWaiters(self, error: SpawnFailed) -> None:
        waiters, self._waiters = self._waiters, {}
        for waiter, timer in waiters.items():
            timer.cancel()
            waiter.errback(error)

    def _kill(self, child: _Child) -> None:
        self._killCall = None
        if child is self._child:
            self.log.warn(
                "[{source}] still running {grace:g} s after SIGTERM; sending SIGKILL",
                source=self.name,
                grace=self._stopGrace,
            )
            child.signal("KILL")

    def _childExited(self, child: _Child, reason: Failure) -> None:
        if child is not self._child:
            return
        self._child = None
        self._ready = False
        self._cancelProbe()
        status = _describeExit(reason)
        fields = dict(
            source=self.name,
            status=status,
            exitCode=getattr(reason.value, "exitCode", None),
            signal=getattr(reason.value, "signal", None),
        )
        if self._killCall is not None or self._exitWaiters:
            if self._killCall is not None:
                self._killCall.cancel()
                self._killCall = None
            self.log.info("[{source}] stopped ({status})", **fields)
            exitWaiters, self._exitWaiters = self._exitWaiters, []
            for exited in exitWaiters:
                exited.callback(None)
            if self.running:
                self._spawn()  # Started again while it was stopping.
            return
        if not self.running:
            return
        uptime = self._reactor.seconds() - child.startedAt
        delay = self._scheduleRestart(uptime)
        self.log.warn(
            "[{source}] exited ({status}) after {uptime:.1f} s; "
            "restarting in {delay:g} s",
            uptime=uptime,
            delay=delay,
            **fields,
        )

    def _outputLine(self, child: _Child, stream: str, line: bytes, cut: bool) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if cut:
            text += " [truncated]"
        pid = child.transport.pid if child.transport is not None else None
        self.log.info(
            "[{source}] {line}", source=self.name, line=text, stream=stream, pid=pid
        )

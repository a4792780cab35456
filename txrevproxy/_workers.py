# -*- test-case-name: tests.test_workers -*-
"""
Several processes serving the same listeners (C{[server] workers}).

One Python process uses one core.  With C{workers = N} the proxy started
by twistd listens itself and starts N-1 worker processes running the same
configuration; every process opens the same TCP ports with C{SO_REUSEPORT},
and the kernel spreads new connections over them.  Workers are supervised
like interpreter sources (restarted with back-off when they exit, stopped
with TERM then KILL), and interpreter sources are started by the first
process only: workers reach them as plain backends.

Only C{tcp:} and C{tcp6:} listeners with a fixed port can be shared this
way; the configuration is refused otherwise.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.internet.tcp import makeBinding
from twisted.logger import Logger

from ._interpreter import Interpreter

__all__ = ["ParentWatch", "SharedPort", "parse_tcp", "shared_listener", "worker_supervisors"]


@attrs.frozen
class SharedPort:
    """
    A TCP listener several processes can open at once.
    """

    port: int
    interface: str = ""
    backlog: int = 50


def parse_tcp(description: str) -> SharedPort:
    """
    Read a C{tcp:PORT[:interface=A][:backlog=N]} (or C{tcp6:}) description.

    @raise ValueError: It is another kind of endpoint, or has no fixed port.
    """
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "tcp6"):
        raise ValueError(f"{description!r}: workers > 1 needs tcp: or tcp6: listeners")
    options: dict[str, str] = {}
    positional = []
    for part in rest.split(":"):
        name, equals, value = part.partition("=")
        if equals:
            options[name] = value
        else:
            positional.append(part)
    port = options.pop("port", positional[0] if positional else "")
    if not port.isdigit() or int(port) == 0:
        raise ValueError(f"{description!r}: workers > 1 needs a fixed port")
    interface = options.pop("interface", "::" if kind == "tcp6" else "")
    backlog = options.pop("backlog", "50")
    if options or len(positional) > 1 or not backlog.isdigit():
        raise ValueError(f"{description!r}: only port, interface and backlog go with workers > 1")
    return SharedPort(int(port), interface, int(backlog))


class _SharedListener(Service):
    """
    Listens on a L{SharedPort} with C{SO_REUSEPORT} while running.
    """

    def __init__(self, reactor: Any, shared: SharedPort, factory: Any) -> None:
        self._reactor = reactor
        self._shared = shared
        self._factory = factory
        self._port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        binding = makeBinding(self._shared.interface, self._shared.port, reuseAddress=True, reusePort=True)
        self._port = self._reactor.listenTCP(binding, self._factory, backlog=self._shared.backlog)

    def startService(self) -> None:
        if self._port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        stopping: Deferred[None] = maybeDeferred(port.stopListening)  # type: ignore[call-overload]
        return stopping


def shared_listener(reactor: Any, description: str, factory: Any) -> Service:
    """
    A service listening on C{description} (a C{tcp:} listener) in a way
    other processes may share.
    """
    return _SharedListener(reactor, parse_tcp(description), factory)


def worker_supervisors(
    reactor: Any, config_path: str, count: int, probe: SharedPort, parent: MultiService
) -> list[Interpreter]:
    """
    Start and supervise C{count} worker processes running C{config_path}.

    @param probe: A shared listener whose accepting connections tells that
        the processes are serving (any of them may answer the probe).
    """
    workers = []
    host = probe.interface if probe.interface not in ("", "::", "0.0.0.0") else "127.0.0.1"
    for index in range(1, count + 1):
        argv = [
            sys.executable, "-m", "twisted", "--log-format", "text",
            "revproxy", "--config", os.path.abspath(config_path), "--worker",
        ]
        worker = Interpreter(
            f"worker-{index}",
            argv,
            {},
            TCP4ClientEndpoint(reactor, host, probe.port, timeout=1),
            30.0,
            reactor,
        )
        worker.setServiceParent(parent)
        workers.append(worker)
    return workers


class ParentWatch(Service):
    """
    Stops a worker whose first process is gone (killed without the chance
    to stop its workers), so no orphan keeps serving the shared ports.
    """

    _log = Logger()

    def __init__(self, reactor: Any, interval: float = 1.0) -> None:
        self._reactor = reactor
        self._parent = os.getppid()
        self._loop = LoopingCall(self._check)
        self._loop.clock = reactor
        self._interval = interval

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _check(self) -> None:
        if os.getppid() != self._parent:
            self._log.warn("The proxy's first process is gone: this worker stops")
            self._loop.stop()
            self._reactor.stop()

"""
The keep-alive pool in memory: a L{SourceAgent} over a L{BackendPool},
connected to a real C{twisted.web} L{Site} through L{twisted.test.iosim},
with time on a L{MemoryReactorClock}.  No sockets, no real time.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from txrevproxy import ProxySettings
from txrevproxy._backend import SourceAgent, make_pool


class _Answer(Resource):
    """
    Answers C{ok}, with a C{Keep-Alive: timeout=N} when asked for one.
    """

    isLeaf = True

    def render(self, request: Any) -> bytes:
        if request.path == b"/advertise":
            request.setHeader(b"keep-alive", b"timeout=2")
        return b"ok"


@implementer(IStreamClientEndpoint)
class _MemoryEndpoint:
    """
    Connects each client to a new server protocol of C{site}, in memory.

    @ivar servers: The server side transports, in order of connection.
    """

    def __init__(self, site: Site) -> None:
        self.site = site
        self.servers: list[Any] = []
        self.pumps: list[IOPump] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        address = IPv4Address("TCP", "127.0.0.1", 80)
        client = factory.buildProtocol(address)
        server = self.site.buildProtocol(address)
        assert client is not None and server is not None
        transport = FakeTransport(server, isServer=True)
        self.servers.append(transport)
        self.pumps.append(
            connect(server, transport, client, FakeTransport(client, isServer=False), greet=False)
        )
        return succeed(client)

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()

    def open(self) -> int:
        return sum(1 for server in self.servers if not server.disconnected)


class PoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        site = Site(_Answer(), reactor=self.clock)
        site.log = lambda request: None  # type: ignore[method-assign]
        self.endpoint = _MemoryEndpoint(site)

    def agent(self, **settings: Any) -> SourceAgent:
        pool = make_pool(self.clock, ProxySettings(sources=("b",), **settings))
        self.addCleanup(pool.closeCachedConnections)
        return SourceAgent(pool, self.endpoint, b"http://b")

    def openAfter(self, seconds: float) -> int:
        """
        How many backend connections are open once C{seconds} pass.
        """
        self.clock.advance(seconds)
        self.endpoint.flush()
        return self.endpoint.open()

    def get(self, agent: SourceAgent, path: bytes = b"/") -> bytes:
        d = agent.request(b"GET", b"http://b" + path, Headers({b"host": [b"b"]}))
        d.addCallback(readBody)
        self.endpoint.flush()
        return self.successResultOf(d)

    def test_reused(self) -> None:
        """
        Sequential requests share one connection.
        """
        agent = self.agent()
        for _ in range(3):
            self.assertEqual(self.get(agent), b"ok")
        self.assertEqual(len(self.endpoint.servers), 1)

    def test_idleTimeout(self) -> None:
        """
        An idle connection is closed after C{keepalive_timeout}, not before.
        """
        agent = self.agent(keepalive_timeout=4.0)
        self.get(agent)
        self.assertEqual(self.openAfter(3.9), 1)
        self.assertEqual(self.openAfter(0.2), 0)

    def test_advertisedTimeout(self) -> None:
        """
        A backend's C{Keep-Alive: timeout=2} has its connection leave the
        pool a second early, before C{keepalive_timeout}.
        """
        agent = self.agent(keepalive_timeout=4.0)
        self.get(agent, b"/advertise")
        self.assertEqual(self.openAfter(0.9), 1)
        self.assertEqual(self.openAfter(0.2), 0)

    def test_idleCap(self) -> None:
        """
        Concurrency is not capped, but at most C{reuse_connections} idle
        connections are kept.
        """
        agent = self.agent(reuse_connections=2)
        pending = [
            agent.request(b"GET", b"http://b/", Headers({b"host": [b"b"]})).addCallback(readBody)
            for _ in range(4)
        ]
        self.endpoint.flush()
        self.assertEqual([self.successResultOf(d) for d in pending], [b"ok"] * 4)
        self.assertEqual(len(self.endpoint.servers), 4)
        self.endpoint.flush()
        self.assertEqual(self.endpoint.open(), 2)

    def test_noKeepAlive(self) -> None:
        """
        C{allow_keepalive = no}: a connection per request, and the backend
        is told C{Connection: close}.
        """
        agent = self.agent(allow_keepalive=False)
        self.get(agent)
        self.get(agent)
        self.assertEqual(len(self.endpoint.servers), 2)
        self.assertEqual(self.endpoint.open(), 0)

    def test_takenNotTimedOut(self) -> None:
        """
        An idle timer that runs out while its connection is in use (it is
        moved, not cancelled, when the connection is taken) leaves the
        connection alone; the timer starts again when it comes back.
        """
        agent = self.agent(keepalive_timeout=4.0)
        self.get(agent)
        self.clock.advance(3)
        taken = agent.pool.take(b"http://b")
        assert taken is not None
        self.assertEqual(self.openAfter(2), 1)
        agent.pool._putConnection(b"http://b", taken)
        self.assertEqual(self.openAfter(3.9), 1)
        self.assertEqual(self.openAfter(0.2), 0)

    def test_mostRecentFirst(self) -> None:
        """
        The connection used last is taken first, so the ones left idle are
        those that time out.
        """
        agent = self.agent()
        pending = [
            agent.request(b"GET", b"http://b/", Headers({b"host": [b"b"]})).addCallback(readBody)
            for _ in range(2)
        ]
        self.endpoint.flush()
        for d in pending:
            self.successResultOf(d)
        idle = list(agent.pool._connections[b"http://b"])
        self.assertEqual(len(idle), 2)
        self.assertIs(agent.pool.take(b"http://b"), idle[-1])

    def test_closingPoolKeepsNothing(self) -> None:
        """
        A connection that finishes its request after the pool was told to
        close its connections is closed, not kept.
        """
        agent = self.agent()
        d = agent.request(b"GET", b"http://b/", Headers({b"host": [b"b"]})).addCallback(readBody)
        agent.pool.closeCachedConnections()
        self.endpoint.flush()
        self.assertEqual(self.successResultOf(d), b"ok")
        self.endpoint.flush()
        self.assertEqual(self.endpoint.open(), 0)
        self.assertEqual(agent.pool._connections.get(b"http://b", []), [])

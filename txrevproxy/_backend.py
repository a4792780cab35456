# -*- test-case-name: tests.test_pool,tests.test_resilience -*-
"""
Backends: a source as one proxy rule uses it, with its own keep-alive pool.

A rule gets a pool per source, as Cherokee keeps one per rule and host:
C{reuse_connections} and C{keepalive_timeout} are rule settings, and two
rules never hand each other a connection made under different terms.  The
endpoint for a source is built once and reused for every connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.web.client import URI
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from ._config import ProxySettings, SourceAddress, SourceConfig
from ._endpoints import source_endpoint
from ._client import Pairs
from ._headers import headers_of
from ._pool import BackendPool

__all__ = ["Backend", "AgentFactory", "SourceAgent", "make_agent", "make_pool"]

AgentFactory = Callable[[SourceConfig, ProxySettings], IAgent]

_log = Logger()


def make_pool(reactor: Any, settings: ProxySettings) -> BackendPool:
    """
    The keep-alive pool a rule's settings ask for.
    """
    pool = BackendPool(reactor, persistent=settings.allow_keepalive)
    pool.maxPersistentPerHost = settings.reuse_connections
    pool.cachedConnectionTimeout = settings.keepalive_timeout  # type: ignore[assignment]
    return pool


@implementer(IAgent)
@attrs.frozen
class SourceAgent:
    """
    An L{IAgent} for one source: every request goes to its endpoint over
    its pool.

    Unlike L{twisted.web.client.Agent} it sends the request target exactly
    as given (Agent re-serialises the URI, which drops an empty C{?}), adds
    no C{Host} (the proxy always sets one) and does no per-request URI
    parsing or endpoint lookup: the source is known in advance.

    @ivar prefix: The C{scheme://authority} that URIs for this source start
        with; what follows it is the request target.
    """

    pool: BackendPool
    endpoint: IStreamClientEndpoint
    prefix: bytes

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Optional[Headers] = None,
        bodyProducer: Optional[IBodyProducer] = None,
    ) -> Deferred[IResponse]:
        pairs = [(n, v) for n, values in (headers or Headers()).getAllRawHeaders() for v in values]
        return self.send(method, uri, pairs, bodyProducer)

    def send(
        self, method: bytes, uri: bytes, pairs: Pairs, body: Optional[IBodyProducer]
    ) -> Deferred[IResponse]:
        """
        L{request}, with the fields as a list of pairs (what the proxy has
        at hand), sent in that order.
        """
        if uri.startswith(self.prefix):
            target = uri[len(self.prefix) :] or b"/"
        else:
            target = URI.fromBytes(uri).originForm
        pool = self.pool
        connection = pool.take(self.prefix)
        if connection is not None:
            return connection.request(method, target, pairs, body, pool.persistent)
        d: Deferred[Any] = pool.getConnection(self.prefix, self.endpoint)
        d.addCallback(
            lambda connection: connection.request(method, target, pairs, body, pool.persistent)
        )
        return d


def make_agent(
    reactor: Any, source: SourceConfig, settings: ProxySettings, pool: BackendPool
) -> IAgent:
    """
    Build the agent for one source of one rule, sending over C{pool}.
    """
    endpoint = source_endpoint(reactor, source, settings.connect_timeout)
    return SourceAgent(pool, endpoint, uri_prefix(source.address))


def uri_prefix(address: SourceAddress) -> bytes:
    """
    The C{scheme://authority} of URIs naming a source.
    """
    if address.scheme == "unix":
        return b"http://unix"
    return str(address).encode("ascii")


@attrs.define(eq=False)
class Backend:
    """
    A source as one rule reaches it.

    @ivar name: The source's name, for logs and balancers.
    @ivar host: The C{Host} value for requests to it.
    @ivar uri_prefix: Scheme and authority to put before the request target;
        the agent's endpoint, not this, decides where the request goes.
    @ivar agent: Sends the requests, over the pool.
    @ivar waiter: For an interpreter source, returns a L{Deferred} that fires
        once the program accepts connections (or fails after
        C{spawn_timeout}); L{None} for a plain host.
    @ivar ready: For an interpreter source, whether it is known to be up.
    @ivar recheck: For an interpreter source, called when its address
        refused a connection: it may have exited, so L{when_ready} waits
        until it is seen accepting again (or restarted).
    """

    name: str
    host: bytes
    uri_prefix: bytes
    agent: IAgent
    waiter: Optional[Callable[[], Deferred[None]]] = None
    ready: Callable[[], bool] = lambda: True
    recheck: Callable[[], None] = lambda: None

    @classmethod
    def of(cls, source: SourceConfig, agent: IAgent, interpreter: Any = None) -> Backend:
        """
        The backend for a source, sending through C{agent}.
        """
        if interpreter is None:
            return cls(source.name, source.address.host_header, uri_prefix(source.address), agent)
        return cls(
            source.name,
            source.address.host_header,
            uri_prefix(source.address),
            agent,
            interpreter.whenReady,
            lambda: interpreter.ready,
            interpreter.recheck,
        )

    def send(
        self, method: bytes, uri: bytes, pairs: Pairs, body: Optional[IBodyProducer]
    ) -> Deferred[IResponse]:
        """
        Send a request through the agent: as pairs to our own, as
        L{Headers} to any other (a library user's, say).
        """
        if isinstance(self.agent, SourceAgent):
            return self.agent.send(method, uri, pairs, body)
        return self.agent.request(method, uri, headers_of(pairs), body)

    def when_ready(self) -> Deferred[None]:
        """
        Fires when a request can be sent: at once for a running backend.
        """
        if self.waiter is None or self.ready():
            return succeed(None)
        return self.waiter()

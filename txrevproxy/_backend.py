# -*- test-case-name: tests.test_backend -*-
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
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import CertificateOptions, optionsForClientTLS, Certificate
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent, IAgentEndpointFactory
from zope.interface import implementer

from ._config import ProxySettings, SourceAddress, SourceConfig

__all__ = ["Backend", "AgentFactory", "make_agent", "make_pool", "source_endpoint"]

AgentFactory = Callable[[SourceConfig, ProxySettings], IAgent]

_log = Logger()


def _tls_options(source: SourceConfig) -> Any:
    host = source.address.host
    if not source.tls_verify:
        # CertificateOptions without verify=True skips certificate checks.
        return CertificateOptions()
    trust = None
    if source.tls_ca is not None:
        with open(source.tls_ca, "rb") as f:
            trust = Certificate.loadPEM(f.read())
    return optionsForClientTLS(host, trustRoot=trust)


def source_endpoint(
    reactor: Any, source: SourceConfig, timeout: float, tls: bool = True
) -> IStreamClientEndpoint:
    """
    The client endpoint that reaches a source: TCP (with TLS for
    C{https://} unless C{tls} is false) or a Unix socket.
    """
    address = source.address
    if address.scheme == "unix":
        return UNIXClientEndpoint(reactor, address.path, timeout=timeout)
    endpoint = HostnameEndpoint(reactor, address.host, address.port, timeout=timeout)
    if address.scheme == "https" and tls:
        return wrapClientTLS(_tls_options(source), endpoint)
    return endpoint


@implementer(IAgentEndpointFactory)
@attrs.frozen
class _FixedEndpoint:
    """
    Every URI goes to the one endpoint of a source: the URI only names the
    pool key, the endpoint decides where bytes go.
    """

    endpoint: IStreamClientEndpoint

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return self.endpoint


def make_pool(reactor: Any, settings: ProxySettings) -> HTTPConnectionPool:
    """
    The keep-alive pool a rule's settings ask for.
    """
    pool = HTTPConnectionPool(reactor, persistent=settings.allow_keepalive)
    pool.maxPersistentPerHost = settings.reuse_connections
    pool.cachedConnectionTimeout = settings.keepalive_timeout
    pool.retryAutomatically = True
    return pool


def make_agent(
    reactor: Any, source: SourceConfig, settings: ProxySettings, pool: HTTPConnectionPool
) -> IAgent:
    """
    Build the agent for one source of one rule, sending over C{pool}.
    """
    endpoint = source_endpoint(reactor, source, settings.connect_timeout)
    if source.address.scheme == "https" and not source.tls_verify:
        _log.warn(
            "Source {source}: TLS certificate verification is off (tls_verify = no)",
            source=source.name,
        )
    return Agent.usingEndpointFactory(reactor, _FixedEndpoint(endpoint), pool=pool)


def _uri_prefix(address: SourceAddress) -> bytes:
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
    """

    name: str
    host: bytes
    uri_prefix: bytes
    agent: IAgent
    waiter: Optional[Callable[[], Deferred[None]]] = None
    ready: Callable[[], bool] = lambda: True

    @classmethod
    def of(cls, source: SourceConfig, agent: IAgent, interpreter: Any = None) -> Backend:
        """
        The backend for a source, sending through C{agent}.
        """
        if interpreter is None:
            return cls(source.name, source.address.host_header, _uri_prefix(source.address), agent)
        return cls(
            source.name,
            source.address.host_header,
            _uri_prefix(source.address),
            agent,
            interpreter.whenReady,
            lambda: interpreter.ready,
        )

    def when_ready(self) -> Deferred[None]:
        """
        Fires when a request can be sent: at once for a running backend.
        """
        if self.waiter is None or self.ready():
            return succeed(None)
        return self.waiter()

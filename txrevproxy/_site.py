# -*- test-case-name: tests.test_library,tests.test_proxy_wire -*-
"""
Turning a L{Configuration} into the things that run: the L{Site} with its
resource tree, and the services that go with it (interpreters, pools).

Listening is left to the caller (the twistd plugin, or an application that
embeds the proxy), so a test or a program can serve the same site on
whatever endpoint it likes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IAgent
from twisted.web.resource import IResource
from twisted.web.server import Site

from ._backend import AgentFactory, Backend, make_agent, make_pool
from ._endpoints import source_endpoint
from ._balancers import make_balancer
from ._config import Configuration, ProxySettings, RuleConfig, SourceConfig, VServerConfig
from ._errorpages import ErrorPages
from ._files import FileHandler
from ._interpreter import Interpreter
from ._proxy import ReverseProxyResource
from ._redirect import RedirectResource
from ._request import Limits
from ._server import ProxySite
from ._vhosts import Route, VirtualHosts, VServer

__all__ = ["ProxySite", "Runtime", "build"]

_log = Logger()


class _Pools(Service):
    """
    Closes the idle backend connections on shutdown, so nothing is left
    half-open for the backends to time out.
    """

    def __init__(self) -> None:
        self.pools: list[HTTPConnectionPool] = []

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return DeferredList([pool.closeCachedConnections() for pool in self.pools])


@attrs.frozen
class Runtime:
    """
    What a configuration builds.

    @ivar site: The L{Site} to listen with.
    @ivar resource: Its root resource (the vserver selector), for mounting
        in another tree.
    @ivar service: Interpreters and pools; start it before serving and stop
        it after.
    @ivar interpreters: The interpreter sources' supervisors, by name.
    """

    site: Site
    resource: IResource
    service: MultiService
    interpreters: Mapping[str, Interpreter]


def build(
    config: Configuration,
    reactor: Any,
    agent_factory: Optional[AgentFactory] = None,
    start_interpreters: bool = True,
) -> Runtime:
    """
    Build the site and services for a configuration.

    @param reactor: Used for timers, connections and processes.
    @param agent_factory: Makes the L{IAgent} for one source of one proxy
        rule; the default makes a L{SourceAgent} over its own keep-alive
        L{BackendPool}.
        Tests pass agents that reach in-memory backends.
    @param start_interpreters: Whether this process starts and supervises
        the interpreter sources; a worker process does not, and reaches
        them as plain backends.
    """
    service = MultiService()
    pools = _Pools()
    pools.setServiceParent(service)

    def default_factory(source: SourceConfig, settings: ProxySettings) -> IAgent:
        pool = make_pool(reactor, settings)
        pools.pools.append(pool)
        return make_agent(reactor, source, settings, pool)

    factory = agent_factory or default_factory
    interpreters = {}
    for source in config.sources:
        if source.address.scheme == "https" and not source.tls_verify:
            _log.warn(
                "Source {source}: TLS certificate verification is off (tls_verify = no)",
                source=source.name,
            )
        if source.type == "interpreter" and start_interpreters:
            interpreter = Interpreter(
                source.name,
                source.interpreter,
                dict(source.env),
                # Readiness is probed on the socket, without TLS.
                source_endpoint(reactor, source, 1.0, tls=False),
                source.spawn_timeout,
                reactor,
            )
            interpreter.setServiceParent(service)
            interpreters[source.name] = interpreter
    vservers = [
        _vserver(config, vserver, reactor, factory, interpreters, service)
        for vserver in config.vservers
    ]
    root = VirtualHosts(vservers, config.server.trusted_proxies)
    access_log = config.server.access_log
    server = config.server
    site = ProxySite(
        root,
        limits=Limits(header_timeout=server.header_timeout, max_body_size=server.max_body_size),
        max_connections=server.max_connections,
        server_tokens=server.server_tokens.encode("ascii"),
        logPath=None if access_log in ("-", "off") else access_log,
        timeout=server.timeout,
        reactor=reactor,
    )
    if access_log == "off":
        site.log = lambda request: None  # type: ignore[method-assign]
    return Runtime(site, root, service, interpreters)


def _vserver(
    config: Configuration,
    vserver: VServerConfig,
    reactor: Any,
    factory: AgentFactory,
    interpreters: Mapping[str, Interpreter],
    service: MultiService,
) -> VServer:
    pages = ErrorPages(vserver.error_pages)
    routes = tuple(
        Route(rule, _handler(config, vserver, rule, pages, reactor, factory, interpreters, service))
        for rule in config.rules_of(vserver.name)
    )
    return VServer(vserver.name, vserver.hosts, routes, pages)


def _handler(
    config: Configuration,
    vserver: VServerConfig,
    rule: RuleConfig,
    pages: ErrorPages,
    reactor: Any,
    factory: AgentFactory,
    interpreters: Mapping[str, Interpreter],
    service: MultiService,
) -> IResource:
    if rule.handler == "file":
        root = rule.document_root or vserver.document_root
        assert root is not None
        return FileHandler(root, pages)
    if rule.handler == "redirect":
        assert rule.redirect is not None
        return RedirectResource(rule.redirect)
    settings = rule.proxy
    assert settings is not None
    sources = config.source_map
    backends = [
        Backend.of(sources[name], factory(sources[name], settings), interpreters.get(name))
        for name in settings.sources
    ]
    balancer = make_balancer(
        settings.balancer, [(name, sources[name].weight) for name in settings.sources]
    )
    resource = ReverseProxyResource(
        backends,
        settings,
        balancer,
        reactor,
        pages=pages,
        trusted_proxies=config.server.trusted_proxies,
        server_tokens=config.server.server_tokens.encode("ascii"),
        name=rule.name,
    )
    checker = resource.health_checker()
    if checker is not None:
        checker.setName(f"health:{rule.name}")
        checker.setServiceParent(service)
    return resource

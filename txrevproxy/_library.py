# -*- test-case-name: tests.test_library -*-
"""
The short way to a proxy resource for programs that embed txrevproxy in
their own C{twisted.web} tree, without a configuration file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from twisted.web.iweb import IAgent

from ._backend import Backend, make_agent, make_pool
from ._balancers import make_balancer
from ._config import ProxySettings, SourceConfig
from ._errorpages import ErrorPages
from ._proxy import ReverseProxyResource
from ._values import Network

__all__ = ["proxy_resource"]


def proxy_resource(
    sources: Sequence[SourceConfig],
    reactor: Any,
    settings: Optional[ProxySettings] = None,
    *,
    agents: Optional[Sequence[IAgent]] = None,
    trusted_proxies: Sequence[Network] = (),
    pages: ErrorPages = ErrorPages(),
    server_tokens: bytes = b"txrevproxy",
) -> ReverseProxyResource:
    """
    Make a L{ReverseProxyResource} for C{sources} (C{host} sources: a program
    that embeds the proxy runs its own backends).

    @param settings: The proxy keys; by default those of the configuration
        file's defaults, over all of C{sources}.
    @param agents: One L{IAgent} per source, in order; by default each gets
        an L{Agent} with its own keep-alive pool.
    """
    if settings is None:
        settings = ProxySettings(sources=[source.name for source in sources])  # type: ignore[misc]
    if agents is None:
        agents = [make_agent(reactor, s, settings, make_pool(reactor, settings)) for s in sources]
    backends = [Backend.of(source, agent) for source, agent in zip(sources, agents)]
    balancer = make_balancer(settings.balancer, [(s.name, s.weight) for s in sources])
    return ReverseProxyResource(
        backends,
        settings,
        balancer,
        reactor,
        pages=pages,
        trusted_proxies=trusted_proxies,
        server_tokens=server_tokens,
    )

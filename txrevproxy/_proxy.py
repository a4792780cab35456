# -*- test-case-name: tests.test_proxy_wire -*-
"""
The proxy Resource: the leaf of the resource tree that hands each request
to an L{Exchange} with the backends of one rule.

The resource is a leaf: whatever lies below the path it is mounted at is
forwarded, byte for byte, so it serves the same in txrevproxy's own tree
(where a rule decides what "below" means) and in any other C{twisted.web}
tree or Klein route.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ._backend import Backend
from ._balancers import IBalancer
from ._config import ProxySettings
from ._errorpages import ErrorPages
from ._headers import HeaderPolicy, request_peer
from ._health import HealthChecker, SourceHealth, http_probe
from ._exchange import Exchange
from ._values import Network, apply_rewrites

__all__ = ["ReverseProxyResource", "forwarded_target"]


def forwarded_target(request: Any) -> bytes:
    """
    What to send as the request target: the raw path less the segments the
    resource tree consumed on the way here (C{request.prepath}), plus the
    raw query.  Working on the raw bytes keeps the target byte-exact.
    """
    path, question, query = request.uri.partition(b"?")
    if path[:1] != b"/":
        # Absolute-form: the routing authority is not forwarded.
        scheme_end = path.find(b"://")
        slash = path.find(b"/", scheme_end + 3) if scheme_end >= 0 else -1
        path = path[slash:] if slash >= 0 else b"/"
    consumed = len(request.prepath)
    if consumed:
        segments = path.split(b"/")
        path = b"/" + b"/".join(segments[1 + consumed :])
    return path + question + query


class ReverseProxyResource(Resource):
    """
    Forwards requests to a set of backends picked by a balancer.

    @ivar backends: The sources, in configuration order.
    @ivar by_name: The same, by source name.
    """

    isLeaf = True

    def __init__(
        self,
        backends: Sequence[Backend],
        settings: ProxySettings,
        balancer: IBalancer,
        reactor: IReactorTime,
        *,
        pages: ErrorPages = ErrorPages(),
        trusted_proxies: Sequence[Network] = (),
        server_tokens: bytes = b"txrevproxy",
        name: str = "proxy",
    ) -> None:
        super().__init__()
        self.backends = tuple(backends)
        self.settings = settings
        self.balancer = balancer
        self.reactor = reactor
        self.pages = pages
        self.trusted_proxies = tuple(trusted_proxies)
        self.server_tokens = server_tokens
        self.name = name
        self.policy = HeaderPolicy(
            request_hide=settings.request_hide_headers,
            request_add=settings.request_add_headers,
            reply_hide=settings.reply_hide_headers,
            reply_add=settings.reply_add_headers,
            reply_rewrite=settings.reply_rewrite,
            preserve_server=settings.preserve_server,
        )
        self.by_name = {backend.name: backend for backend in self.backends}
        self.health = SourceHealth(
            list(self.by_name), settings.max_fails, settings.fail_timeout, reactor, rule=name
        )
        # Buffered bodies (HTTP/2, or a tree whose requests are not ours)
        # are read from disk in steps on this reactor, not the global one.
        self.cooperator = Cooperator(scheduler=lambda step: reactor.callLater(0, step))

    def render(self, request: Any) -> Any:
        peer = request_peer(request, self.trusted_proxies)
        Exchange(self, request, peer, self.rewrite_target(forwarded_target(request))).start()
        return NOT_DONE_YET

    def health_checker(self) -> Optional[HealthChecker]:
        """
        The service that probes the backends when C{health_check} is set,
        or L{None}.  Whoever serves this resource starts and stops it.
        """
        path = self.settings.health_check
        if path is None:
            return None
        timeout = min(self.settings.health_interval, 5.0)
        probes = {
            b.name: http_probe(b.agent, b.uri_prefix + path.encode("ascii"), b.host, timeout, self.reactor)
            for b in self.backends
        }
        return HealthChecker(self.health, probes, self.settings.health_interval, self.reactor, timeout)

    def rewrite_target(self, target: bytes) -> bytes:
        """
        Apply C{request_rewrite}: the first rule that matches rewrites.
        """
        return apply_rewrites(self.settings.request_rewrite, target)

# -*- test-case-name: tests.test_rules,tests.test_proxy_wire -*-
"""
The root of the resource tree: picks the vserver by host name, then the
first rule of that vserver whose conditions hold, then hands the request to
that rule's handler.

This is the "request in, vserver, rule, handler" part of the data flow; the
handlers never look back up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional
from urllib.parse import quote

import attrs
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from ._config import RuleConfig
from ._errorpages import ErrorPages
from ._headers import request_peer
from ._rules import Default, RequestFacts, matches_all, normalize_path
from ._values import Network

__all__ = ["Route", "VServer", "VirtualHosts", "host_name"]


_ALWAYS = (Default(),)


def host_name(authority: bytes) -> bytes:
    """
    The host part of a C{Host} value, lower-cased, without port or trailing
    dot: what vserver names are compared with.
    """
    host = authority.strip().lower()
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1]
    return host.rpartition(b":")[0].rstrip(b".") if b":" in host else host.rstrip(b".")


@attrs.frozen
class Route:
    """
    A rule with the resource that handles what it matches.
    """

    rule: RuleConfig
    resource: IResource


@attrs.frozen
class VServer:
    """
    A virtual server: its names, its rules in match order, its error pages.
    """

    name: str
    hosts: tuple[str, ...]
    routes: tuple[Route, ...]
    pages: ErrorPages = ErrorPages()

    def route(self, facts: Callable[[], RequestFacts], internal: bool = False) -> Optional[Route]:
        """
        The first route whose rule matches, or L{None}.  A client request
        (not C{internal}) that matches an internal rule gets L{None}, so it
        is answered 404 as if nothing matched (nginx's C{internal}).

        @param facts: Makes what the conditions look at; not called when
            the first rule to try matches everything (C{match = default}).
        """
        known: Optional[RequestFacts] = None
        for route in self.routes:
            if route.rule.match == _ALWAYS:
                matched = True
            else:
                known = known or facts()
                matched = matches_all(route.rule.match, known)
            if matched:
                if route.rule.internal and not internal:
                    return None
                return route
        return None


def _split_prefix(request: Any, prefix: str) -> None:
    """
    Mark the rule's directory as consumed, so handlers serve or forward
    what is below it (nginx's C{alias}).  When the client spelled the
    prefix differently (percent-encoded, dot-segments), the path is
    replaced by its normalised form so the count of raw segments is right.
    """
    segments = [s for s in prefix.split("/") if s]
    raw = request.path.split(b"/")[1 : 1 + len(segments)]
    if [normalize_path(b"/" + s).strip("/") for s in raw] != segments or any(
        s in (b"", b".", b"..") for s in raw
    ):
        path = quote(normalize_path(request.path), safe="/:@!$&'()*+,;=-._~").encode("ascii")
        query = request.uri.partition(b"?")
        request.path = path
        request.uri = path + query[1] + query[2]
    request.prepath = [s.encode("utf-8") for s in segments]
    request.postpath = request.path.split(b"/")[1 + len(segments) :]


class VirtualHosts(Resource):
    """
    The root resource of a txrevproxy site.
    """

    isLeaf = True

    def __init__(self, vservers: Sequence[VServer], trusted_proxies: Sequence[Network] = ()) -> None:
        super().__init__()
        self._exact: dict[bytes, VServer] = {}
        self._wildcards: list[tuple[bytes, VServer]] = []
        self._default = next(v for v in vservers if v.name == "default")
        self._trusted = tuple(trusted_proxies)
        for vserver in vservers:
            for host in vserver.hosts:
                raw = host.lower().encode("ascii")
                if raw == b"*":
                    self._wildcards.append((b"", vserver))
                elif raw.startswith(b"*."):
                    self._wildcards.append((raw[1:], vserver))
                else:
                    self._exact.setdefault(raw, vserver)

    def select(self, authority: bytes) -> VServer:
        """
        The vserver for a C{Host}: an exact name first, then wildcards in
        configuration order, then C{default}.
        """
        host = host_name(authority)
        vserver = self._exact.get(host)
        if vserver is not None:
            return vserver
        for suffix, vserver in self._wildcards:
            if host.endswith(suffix) and host != suffix[1:]:
                return vserver
        return self._default

    def facts(self, request: IRequest) -> RequestFacts:
        """
        What the rules of a vserver are matched against.
        """
        path, question, query = request.uri.partition(b"?")
        return RequestFacts(
            method=request.method,
            path=normalize_path(request.path),
            query=query.decode("latin-1") if question else None,
            headers=request.requestHeaders,
            client=request_peer(request, self._trusted).client,
            tls=request.isSecure(),
        )

    def render(self, request: Any) -> Any:
        vserver = self.select(request.getHeader(b"host") or b"")
        internal = getattr(request, "internal_redirects", 0) > 0
        route = vserver.route(lambda: self.facts(request), internal)
        if route is None:
            return vserver.pages.render(request, 404)
        prefix = route.rule.strip_prefix if route.rule.strip_directory else None
        if prefix is not None and prefix != "/":
            _split_prefix(request, prefix)
        return route.resource.render(request)

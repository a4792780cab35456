# -*- test-case-name: tests.test_limits -*-
"""
The L{Site} of a proxy: the factory of client connections.

Twisted picks HTTP/1.1 or HTTP/2 for each connection (ALPN) in a private
wrapper; the proxy puts its own HTTP/1.1 channel inside that wrapper, keeps
a count of open connections against C{max_connections}, and answers the
errors that happen before any resource runs with the vserver's pages.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web import http
from twisted.web.http import combinedLogFormatter
from twisted.web.resource import IResource
from twisted.web.server import Site

from ._errorpages import ErrorPages
from ._channel import ProxyChannel
from ._request import Limits, ProxyRequest

__all__ = ["ProxySite", "access_log_line"]

_log = Logger()


def access_log_line(timestamp: str, request: Any) -> str:
    """
    A combined-log-format line for C{request}, naming the method and target
    the client sent even when an internal redirect served another.
    """
    received = getattr(request, "received", None)
    if received is not None:
        request = _AsReceived(request, *received)
    return combinedLogFormatter(timestamp, request)


class _AsReceived:
    """
    A request seen with the method and target it arrived with.
    """

    def __init__(self, request: Any, method: bytes, uri: bytes) -> None:
        self._request = request
        self.method = method
        self.uri = uri

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


class _Channel(http._GenericHTTPChannelProtocol):  # type: ignore[misc]
    """
    Twisted's private wrapper that picks HTTP/1.1 or HTTP/2 by ALPN, around
    our HTTP/1.1 channel; it also keeps the site's count of open
    connections.
    """

    def dataReceived(self, data: bytes) -> None:
        before = self._channel
        try:
            super().dataReceived(data)
        finally:
            if self._channel is not before and isinstance(before, ProxyChannel):
                # Switched to HTTP/2: the HTTP/1.1 channel's timers are moot.
                before.stop_timers()

    def connectionLost(self, reason: Any) -> None:
        self.factory.connections -= 1
        super().connectionLost(reason)


class ProxySite(Site):
    """
    A L{Site} whose requests are validated and stream their bodies, with
    none of the Twisted defaults a proxy must not add (no C{text/html}
    content type, no POST form parsing, no tracebacks).

    @ivar limits: What each connection's channel enforces.
    @ivar max_connections: Client connections served at once; a connection
        past it is closed at once (the listener keeps accepting, so the
        kernel's backlog does not fill with clients that will time out).
    @ivar connections: Client connections open now.
    """

    requestFactory = ProxyRequest
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        *,
        limits: Limits = Limits(),
        max_connections: int = 10000,
        server_tokens: bytes = b"txrevproxy",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("logFormatter", access_log_line)
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)
        self.limits = limits
        self.max_connections = max_connections
        self.server_tokens = server_tokens
        self.connections = 0
        self._refusing = False

    def protocol(self) -> Any:  # type: ignore[override]
        return _Channel(ProxyChannel())

    def buildProtocol(self, addr: Any) -> Any:
        if self.connections >= self.max_connections:
            if not self._refusing:
                _log.warn(
                    "{count} client connections open (max_connections): closing new ones",
                    count=self.connections,
                )
            self._refusing = True
            return None
        self._refusing = False
        self.connections += 1
        return super().buildProtocol(addr)

    def error_body(
        self, authority: bytes, status: int, method: bytes = b"GET"
    ) -> tuple[list[tuple[bytes, list[bytes]]], bytes]:
        """
        The headers and body of an error the proxy answers before any
        resource runs, from the error pages of the vserver C{authority}
        selects.
        """
        select = getattr(self.resource, "select", None)
        pages = select(authority).pages if select is not None else ErrorPages()
        body = pages.body(status)
        headers = [
            (b"Server", [self.server_tokens]),
            (b"Content-Type", [b"text/html; charset=utf-8"]),
            (b"Content-Length", [b"%d" % len(body)]),
        ]
        return headers, b"" if method == b"HEAD" else body

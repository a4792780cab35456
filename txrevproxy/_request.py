# -*- test-case-name: tests.test_limits,tests.test_timeouts,tests.test_duplex -*-
"""
A client's request as the proxy handles it: its body streamed as it
arrives, its refusals answered with the vserver's pages.

Twisted's own request reads the whole body (to memory or a temporary file)
before a resource sees it.  A proxy must instead start the backend request
at once and stream the body through, so that an upload of any size costs a
socket buffer, not its size in memory or on disk.  The resource sees the
same L{Request} API; only C{body_stream} and L{ProxyRequest.when_gone} are
new.  The channel that feeds it (L{txrevproxy._channel.ProxyChannel}) has
checked its head already.
"""

from __future__ import annotations

from io import BytesIO
from collections.abc import Callable
from typing import Any, Optional

import attrs

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request, version as twisted_version

from ._streams import RequestBody
from ._validation import Rejection, validate_head

__all__ = ["ALLOWED_METHODS", "BodyTooLarge", "DEFAULT_LIMITS", "ProxyRequest", "Limits"]

_log = Logger()

ALLOWED_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE"


class BodyTooLarge(Exception):
    """
    A request body grew past C{max_body_size} while it streamed.
    """


@attrs.frozen
class Limits:
    """
    The bounds a channel enforces.  The head limits are nginx's defaults
    (8 KiB lines, 32 KiB in all) and fixed; the others come from
    C{[server]}.

    @ivar header_timeout: Seconds a client has to send a complete head (408).
    @ivar max_body_size: Largest body (413); 0 is no limit.
    """

    header_timeout: float = 10.0
    max_body_size: int = 0
    max_line: int = 8192
    max_head: int = 32768
    max_headers: int = 100


DEFAULT_LIMITS = Limits()


class ProxyRequest(Request):
    """
    A request whose body, when it has one, is streamed.

    @ivar body_stream: The body as it arrives, for requests processed before
        their body; L{None} when the body was read first (no body, or
        HTTP/2).
    """

    channel: Any  # the ProxyChannel, or an H2Stream for HTTP/2
    content: Any
    body_stream: Optional[RequestBody] = None
    header_overrides: list[tuple[bytes, list[bytes]]] = []
    _streaming = False
    _received = 0
    _too_large = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.defaultContentType = None

    _on_gone: Optional[Callable[[Failure], None]] = None

    def when_gone(self, callback: Callable[[Failure], None]) -> None:
        """
        Call C{callback} if the client goes away before the response is
        finished: L{notifyFinish}'s errback, without a L{Deferred} made and
        fired for every request that ends well.
        """
        self._on_gone = callback

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        callback, self._on_gone = self._on_gone, None
        if callback is not None and not self.finished:
            callback(reason)

    def gotLength(self, length: Optional[int]) -> None:
        if self._streaming:
            # Nothing is spooled: the body goes straight to body_stream.
            self.content = BytesIO()
        else:
            super().gotLength(length)

    def start_early(self, command: bytes, path: bytes, version: bytes, length: Optional[int]) -> None:
        """
        Process the request now that its head is complete; its body will
        follow through C{body_stream}.
        """
        transport = self.channel.transport
        self.body_stream = RequestBody(length, transport.pauseProducing, transport.resumeProducing)
        super().requestReceived(command, path, version)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        limit = getattr(self.channel.site, "limits", DEFAULT_LIMITS).max_body_size
        if limit and self._received > limit:
            self._body_too_large()
            return
        if self.body_stream is None:
            super().handleContentChunk(data)
        elif not self.finished:
            self.body_stream.write(data)

    def _body_too_large(self) -> None:
        if self._too_large:
            return
        self._too_large = True
        self.content = BytesIO()
        stream = self.body_stream
        if stream is None:
            return  # Buffered (HTTP/2): answered in requestReceived.
        if self.startedWriting:
            # A backend already answered: the only honest end is a cut.
            if self.channel is not None:
                self.channel.transport.abortConnection()
        elif not self.finished:
            self._error(413)
        # Then the backend request is abandoned, its answer unwanted.
        stream.fail(Failure(BodyTooLarge()))

    def _error(self, status: int) -> None:
        # After a refusal nothing more is read from this connection.
        if _checks_heads(self.channel):
            self.channel.persistent = False
        self.setResponseCode(status)
        if status == 405:
            self.responseHeaders.setRawHeaders(b"allow", [ALLOWED_METHODS])
        body = self.channel.site.error_body(self.getHeader(b"host") or b"", status, self.method)
        for name, values in body[0]:
            self.responseHeaders.setRawHeaders(name, values)
        self.write(body[1])
        self.finish()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.body_stream is not None:
            self.body_stream.finish()
            return
        if self._too_large:
            self._refuse(command, path or b"*", version, 413)
            return
        if not _checks_heads(self.channel):
            # HTTP/2: the head arrives whole, body read, through H2Stream;
            # it gets the same checks an HTTP/1.1 head gets in the channel.
            if path is None:
                self._refuse(command, b"*", version, 405)  # CONNECT
                return
            headers = [(n, v) for n, vs in self.requestHeaders.getAllRawHeaders() for v in vs]
            verdict = validate_head(command, path, version, headers)
            if isinstance(verdict, Rejection):
                _log.info("Rejected an HTTP/2 request: {status} ({reason})",
                          status=verdict.status, reason=verdict.reason)
                self._refuse(command, path, version, verdict.status)
                return
            for name in verdict.dropped:
                self.requestHeaders.removeHeader(name)
        super().requestReceived(command, path, version)

    def _refuse(self, command: bytes, path: bytes, version: bytes, status: int) -> None:
        self.method, self.uri, self.clientproto = command, path, version
        self.path = path.partition(b"?")[0]
        self._error(status)

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            self._before_head()
        super().write(data)

    def _before_head(self) -> None:
        """
        Last touches to the response head, whoever wrote the response.
        """
        tokens = getattr(self.channel.site, "server_tokens", None)
        if tokens is not None and self.responseHeaders.getRawHeaders(b"server") == [twisted_version]:
            # Twisted's Request.process names Twisted; handlers that do not
            # set their own Server (files, redirects, errors) say ours.
            self.responseHeaders.setRawHeaders(b"server", [tokens])
        if _checks_heads(self.channel):
            if self.body_stream is not None and not self.body_stream.complete:
                # Answered before its body is in: the rest of the body will
                # never be read, so nothing after it on this connection can
                # be parsed.
                self.channel.persistent = False
            if not self.channel.persistent:
                # Say so (RFC 9112 §9.6), whoever built the headers.
                self.responseHeaders.setRawHeaders(b"connection", [b"close"])
        if self.header_overrides:
            # An internal redirect's kept headers replace the target's own,
            # unless the target failed (its error page is HTML, whatever
            # the backend said the file would be).
            if self.code < 400:
                for name, values in self.header_overrides:
                    self.responseHeaders.setRawHeaders(name, values)
            self.header_overrides = []


def _checks_heads(channel: Any) -> bool:
    """
    Whether C{channel} is the proxy's HTTP/1.1 channel, which has checked
    the request head already and decides when the connection closes (an
    HTTP/2 stream is not).
    """
    return getattr(channel, "checks_heads", False)

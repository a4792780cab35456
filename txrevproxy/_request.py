# -*- test-case-name: tests.test_request -*-
"""
The server side of a client connection: an L{HTTPChannel} and L{Request}
that check every request head and start processing it as soon as the head
is complete.

Twisted's own request reads the whole body (to memory or a temporary file)
before a resource sees it.  A proxy must instead start the backend request
at once and stream the body through, so that an upload of any size costs a
socket buffer, not its size in memory or on disk.  The resource sees the
same L{Request} API; only C{body_stream} is new.

Twisted's parser is strict about framing but leaves the rest of a front
end's duties to us (security.md §0): the head is validated here before any
resource runs, obs-fold is refused, the head's size and the time to send it
are bounded, and bodies are bounded.  Anything refused is answered and the
connection closed, so nothing after it on the connection is ever parsed.
"""

from __future__ import annotations

from io import BytesIO
from collections.abc import Callable
from typing import Any, Optional

import attrs

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.server import Request, version as twisted_version

from ._errorpages import reason_phrase
from ._headers import connection_tokens
from ._streams import RequestBody
from ._validation import Rejection, validate_head

__all__ = ["BodyTooLarge", "ProxyChannel", "ProxyRequest", "Limits"]

_log = Logger()

_ALLOW = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE"


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


_DEFAULT = Limits()


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
        limit = getattr(self.channel.site, "limits", _DEFAULT).max_body_size
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
        if isinstance(self.channel, ProxyChannel):
            self.channel.persistent = False
        self.setResponseCode(status)
        if status == 405:
            self.responseHeaders.setRawHeaders(b"allow", [_ALLOW])
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
        if not isinstance(self.channel, ProxyChannel):
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
        if isinstance(self.channel, ProxyChannel):
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



class ProxyChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that validates each request head, bounds it in size
    and time, and hands requests with a body to the resource when their
    head is complete.
    """

    site: Any  # the ProxySite (set by it when building the channel)
    transport: Any

    MAX_LENGTH = _DEFAULT.max_line
    # Twisted's own head limits answer a bare 400; ours (below them) answer
    # 431 with a page.
    totalHeadersSize = _DEFAULT.max_head * 2
    maxHeaders = _DEFAULT.max_headers * 2

    _head_lines = 0
    _head_size = 0
    _rejected = False
    _in_body = False
    _header_timer: Optional[IDelayedCall] = None
    _header_armed = False
    _host: Any = None

    _limits: Limits = _DEFAULT

    def connectionMade(self) -> None:
        self._limits = getattr(self.site, "limits", _DEFAULT)
        super().connectionMade()
        self._start_header_timer()

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        # Twisted hands the transport each name, separator and value as a
        # piece of its own; one joined piece costs a fraction of that.
        if not isinstance(headers, Headers):
            super().writeHeaders(version, code, reason, headers)
            return
        lines = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        self.transport.write(b"".join(lines))

    # Twisted's idle timeout (TimeoutMixin) is switched off for each request
    # and on again after it, which costs a new timer per request; this one
    # is kept, and moved, for the life of the connection.
    _idle: Optional[IDelayedCall] = None

    def setTimeout(self, period: Optional[float]) -> Optional[float]:
        previous, self.timeOut = self.timeOut, period  # type: ignore[assignment]
        if period is not None:
            if self._idle is not None and self._idle.active():
                self._idle.reset(period)
            else:
                self._idle = self.callLater(period, self._idle_expired)
        return previous

    def resetTimeout(self) -> None:
        if self.timeOut is not None and self._idle is not None and self._idle.active():
            self._idle.reset(self.timeOut)

    def _idle_expired(self) -> None:
        self._idle = None
        if self.timeOut is not None:
            self.timeoutConnection()

    def getHost(self) -> Any:
        # Each request asks; the local address of a connection never
        # changes, and asking the socket is a system call.
        if self._host is None:
            self._host = self.transport.getHost()
        return self._host

    def dataReceived(self, data: bytes) -> None:
        if not self._handlingRequest and not self._in_body and not self._rejected:
            self._start_header_timer()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._rejected:
            return
        limits = self._limits
        self._head_lines += 1
        self._head_size += len(line) + 2
        if self._head_lines > 1 and line[:1] in (b" ", b"\t"):
            self._reject(400, "obs-fold (a header continuation line)")
        elif self._head_size > limits.max_head or self._head_lines > limits.max_headers + 2:
            self._reject(431, "request head too large")
        else:
            super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._head_lines == 0:
            self._reject(414, "request line too long")
        else:
            self._reject(431, "header line too long")

    def allHeadersReceived(self) -> None:
        self._disarm_header_timer()
        self._head_lines = self._head_size = 0
        request = self.requests[-1]
        headers = [
            (name, value)
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        verdict = validate_head(
            self._command,
            self._path,
            self._version,
            headers,
            max_body_size=self._limits.max_body_size,
        )
        if isinstance(verdict, Rejection):
            self._reject(verdict.status, verdict.reason)
            return
        for name in verdict.dropped:
            request.requestHeaders.removeHeader(name)
        if verdict.absolute:
            # Route by the target's authority and forward origin-form, with a
            # Host regenerated from it (RFC 9112 §3.2.2).
            request.requestHeaders.setRawHeaders(b"host", [verdict.authority])
            self._path = verdict.path + (b"" if verdict.query is None else b"?" + verdict.query)
        streaming = self.length != 0 and isinstance(request, ProxyRequest)
        if streaming:
            request._streaming = True
            self._in_body = True
        super().allHeadersReceived()
        if streaming and not request.finished:
            request.start_early(self._command, self._path, self._version, self.length)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        """
        Whether the connection stays open after this request: HTTP/1.1
        unless C{close} is among the C{Connection} tokens of any of its
        C{Connection} headers (a comma list, in any case; Twisted reads
        only the first header, split on spaces).  HTTP/1.0 never.
        """
        values = request.requestHeaders.getRawHeaders(b"connection")
        if version == b"HTTP/1.1" and (values is None or b"close" not in connection_tokens(values)):
            return True
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        return False

    def allContentReceived(self) -> None:
        self._in_body = False
        if self._rejected:
            return
        if not self.requests or self.requests[-1].finished:
            # The response went out before the body was in, and the
            # connection is closing: what is left of the body is ignored.
            self._handlingRequest = True
            return
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_header_timer()
        super().connectionLost(reason)
        self.stop_timers()

    def stop_timers(self) -> None:
        """
        This channel is done with (closed, or replaced by HTTP/2): no timer
        of its may fire.
        """
        self._stop_header_timer()
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _start_header_timer(self) -> None:
        if self._header_armed:
            return
        self._header_armed = True
        timer = self._header_timer
        if timer is not None and timer.active():
            # Moving a timer costs a fraction of making one, and a
            # keep-alive connection would make one per request.
            timer.reset(self._limits.header_timeout)
        else:
            self._header_timer = self.callLater(self._limits.header_timeout, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        """
        A head is complete: the timer is left to run out harmlessly, or to
        be moved for the next head.
        """
        self._header_armed = False

    def _stop_header_timer(self) -> None:
        self._header_armed = False
        if self._header_timer is not None:
            if self._header_timer.active():
                self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self._header_armed:
            return
        self._header_armed = False
        if self._head_lines or getattr(self, "_buffer", None) or self._dataBuffer:
            self._reject(408, "request head not complete within header_timeout")
        else:
            self._rejected = True
            self.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own parser refusing something (a bad request line,
        # header, length or chunk): answered like our own refusals, with
        # the vserver's page, rather than a bare status line.
        self._reject(400, "malformed request (refused by the HTTP parser)")

    def _reject(self, status: int, reason: str) -> None:
        """
        Answer a request that must not go on, and close: nothing after it
        on this connection is parsed.  A request already being proxied
        (its body was streaming) is abandoned with it.
        """
        self._rejected = True
        self._stop_header_timer()
        peer = getattr(self.transport.getPeer(), "host", "?")
        _log.info("Rejected a request from {peer}: {status} ({reason})", peer=peer, status=status, reason=reason)
        requests, self.requests = self.requests, []
        self.persistent = False
        request = requests[-1] if requests else None
        answered = request is not None and request.startedWriting
        if not answered:
            self.transport.write(self._refusal(request, status))
        for abandoned in requests:
            if not abandoned.finished:
                abandoned.connectionLost(Failure(ConnectionLost(f"request refused: {reason}")))
        if answered:
            # A response is under way: the only honest end is a cut.
            self.transport.abortConnection()
        else:
            self.loseConnection()

    def _refusal(self, request: Optional[Request], status: int) -> bytes:
        """
        The whole response refusing C{request}, from the error pages of the
        vserver its C{Host} selects.
        """
        host = b""
        if request is not None:
            host = request.requestHeaders.getRawHeaders(b"host", [b""])[0]
        headers, body = self.site.error_body(host, status, getattr(self, "_command", b"GET"))
        lines = [b"HTTP/1.1 %d %s" % (status, reason_phrase(status) or b"Error")]
        for name, values in headers:
            lines.extend(name + b": " + value for value in values)
        if status == 405:
            lines.append(b"Allow: " + _ALLOW)
        lines.append(b"Date: " + datetimeToString())
        lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

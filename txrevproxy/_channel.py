# -*- test-case-name: tests.test_limits,tests.test_smuggling,tests.test_validation -*-
"""
The HTTP/1.1 side of a client connection: an L{HTTPChannel} that checks
every request head before any resource runs, and hands a request with a
body to the resource as soon as its head is complete.

Twisted's parser is strict about framing but leaves the rest of a front
end's duties to us (security.md §0): the head is validated here, obs-fold
is refused, the head's size and the time to send it are bounded.  Anything
refused is answered with the vserver's page and the connection closed, so
nothing after it on the connection is ever parsed.  The channel's timers
(head, idle) are kept for the life of the connection and moved, since a
keep-alive connection would otherwise make and cancel them per request.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from ._errorpages import reason_phrase
from ._headers import connection_tokens
from ._request import ALLOWED_METHODS, DEFAULT_LIMITS, Limits, ProxyRequest
from ._validation import Rejection, validate_head

__all__ = ["ProxyChannel"]

_log = Logger()


class ProxyChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that validates each request head, bounds it in size
    and time, and hands requests with a body to the resource when their
    head is complete.
    """

    site: Any  # the ProxySite (set by it when building the channel)
    transport: Any
    checks_heads = True  # (what ProxyRequest asks of its channel)

    MAX_LENGTH = DEFAULT_LIMITS.max_line
    # Twisted's own head limits answer a bare 400; ours (below them) answer
    # 431 with a page.
    totalHeadersSize = DEFAULT_LIMITS.max_head * 2
    maxHeaders = DEFAULT_LIMITS.max_headers * 2

    _head_lines = 0
    _head_size = 0
    _rejected = False
    _in_body = False
    _header_timer: Optional[IDelayedCall] = None
    _header_armed = False
    _host: Any = None

    _limits: Limits = DEFAULT_LIMITS

    def connectionMade(self) -> None:
        self._limits = getattr(self.site, "limits", DEFAULT_LIMITS)
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
            lines.append(b"Allow: " + ALLOWED_METHODS)
        lines.append(b"Date: " + datetimeToString())
        lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

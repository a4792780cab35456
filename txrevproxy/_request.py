# -*- test-case-name: tests.test_request -*-
"""
The server side of a client connection: an L{HTTPChannel} and L{Request}
that start processing a request as soon as its head is complete.

Twisted's own request reads the whole body (to memory or a temporary file)
before a resource sees it.  A proxy must instead start the backend request
at once and stream the body through, so that an upload of any size costs a
socket buffer, not its size in memory or on disk.  The resource sees the
same L{Request} API; only C{body_stream} is new.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, Optional

from twisted.web.http import HTTPChannel
from twisted.web.server import Request

from ._streams import RequestBody

__all__ = ["ProxyChannel", "ProxyRequest"]


class ProxyRequest(Request):
    """
    A request whose body, when it has one, is streamed.

    @ivar body_stream: The body as it arrives, for requests processed before
        their body; L{None} when the body was read first (no body, or
        HTTP/2).
    """

    body_stream: Optional[RequestBody] = None
    _streaming = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.defaultContentType = None

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
        if self.body_stream is None:
            super().handleContentChunk(data)
        elif not self.finished:
            self.body_stream.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.body_stream is None:
            super().requestReceived(command, path, version)
        else:
            self.body_stream.finish()

    def finish(self) -> None:
        if self.body_stream is not None and not self.body_stream.complete:
            # The rest of the body will never be read, so nothing after it
            # on this connection can be parsed: close once this is done.
            self.channel.persistent = False
        super().finish()


class ProxyChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that hands requests with a body to the resource
    when their head is complete.
    """

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        streaming = self.length != 0 and isinstance(request, ProxyRequest)
        if streaming:
            request._streaming = True
        super().allHeadersReceived()
        if streaming and not request.finished:
            request.start_early(self._command, self._path, self._version, self.length)

    def allContentReceived(self) -> None:
        if not self.requests or self.requests[-1].finished:
            # The response went out before the body was in, and the
            # connection is closing: what is left of the body is ignored.
            self._handlingRequest = True
            return
        super().allContentReceived()

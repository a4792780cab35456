#!/usr/bin/env python
"""
The two small Twisted programs the benchmark starts as separate processes.

C{backend}: a keep-alive HTTP/1.1 origin, used when nginx is not installed. It
serves each C{/NAME} of a given size with a C{Content-Length}, streams large
bodies from one reusable chunk (so a 200 MiB body costs no memory), and counts
the TCP connections it accepted, served as a number at C{/__conns}.

C{stock}: C{twisted.web.proxy.ReverseProxyResource} in front of a backend, the
Twisted baseline that txrevproxy is compared with.

Both log nothing per request: logging is not what is being measured.

Usage::

    python _servers.py backend PORT NAME=SIZE [NAME=SIZE ...]
    python _servers.py stock PORT BACKEND_PORT
"""

from __future__ import annotations

import sys
from typing import Sequence

from twisted.internet.interfaces import IAddress, IPullProducer
from twisted.internet.protocol import Protocol
from twisted.web.http import HTTPChannel
from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

_CHUNK = b"x" * 65536


class QuietSite(Site):
    """
    A L{Site} that writes no access log and counts accepted connections.
    """

    accepted: int = 0

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        """
        Count the connection, then build the usual L{HTTPChannel}.
        """
        self.accepted += 1
        return super().buildProtocol(addr)

    def log(self, request: Request) -> None:
        """
        Log nothing: the benchmark measures proxying, not logging.
        """


@implementer(IPullProducer)
class _ChunkProducer:
    """
    Write C{size} bytes to a request one 64 KiB chunk at a time, only when
    the transport asks for more, so the backend holds no more than one chunk.
    """

    def __init__(self, request: Request, size: int) -> None:
        self._request = request
        self._left = size

    def resumeProducing(self) -> None:
        """
        Write the next chunk, or finish the request when all is written.
        """
        if self._left <= 0:
            self._request.unregisterProducer()
            self._request.finish()
            return
        chunk = _CHUNK if self._left >= len(_CHUNK) else _CHUNK[: self._left]
        self._left -= len(chunk)
        self._request.write(chunk)

    def stopProducing(self) -> None:
        """
        The client went away: write nothing more.
        """
        self._left = 0


class Body(Resource):
    """
    A body of a fixed size: small ones held as bytes, large ones streamed.
    """

    isLeaf = True

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._body = b"x" * size if size <= 1 << 20 else b""

    def render_GET(self, request: Request) -> bytes | int:
        """
        Answer with the body and its C{Content-Length}.
        """
        request.setHeader(b"content-type", b"application/octet-stream")
        if self._body or self._size == 0:
            return self._body
        request.setHeader(b"content-length", b"%d" % (self._size,))
        producer = _ChunkProducer(request, self._size)
        request.notifyFinish().addErrback(lambda _: producer.stopProducing())
        request.registerProducer(producer, False)
        return NOT_DONE_YET


class Connections(Resource):
    """
    How many TCP connections the site has accepted, as a decimal number.
    """

    isLeaf = True

    def __init__(self, site: QuietSite) -> None:
        super().__init__()
        self._site = site

    def render_GET(self, request: Request) -> bytes:
        """
        Answer with the counter, which includes the asking connection.
        """
        request.setHeader(b"content-type", b"text/plain")
        return b"%d\n" % (self._site.accepted,)


def _listen(site: Site, port: int) -> None:
    """
    Serve C{site} on 127.0.0.1:C{port} and run the reactor until stopped.
    """
    from twisted.internet import reactor

    reactor.listenTCP(port, site, backlog=1024, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def backend(port: int, bodies: Sequence[str]) -> None:
    """
    Run the counting origin server with the C{NAME=SIZE} bodies given.
    """
    root = Resource()
    site = QuietSite(root)
    site.protocol = HTTPChannel
    for spec in bodies:
        name, _, size = spec.partition("=")
        root.putChild(name.encode("ascii"), Body(int(size)))
    root.putChild(b"__conns", Connections(site))
    _listen(site, port)


def stock(port: int, backend_port: int) -> None:
    """
    Run Twisted's stock reverse proxy in front of 127.0.0.1:C{backend_port}.
    """
    _listen(QuietSite(ReverseProxyResource("127.0.0.1", backend_port, b"")), port)


def main(argv: Sequence[str]) -> int:
    """
    Dispatch on the first argument; see the module docstring.
    """
    if len(argv) >= 2 and argv[0] == "backend":
        backend(int(argv[1]), argv[2:])
    elif len(argv) == 3 and argv[0] == "stock":
        stock(int(argv[1]), int(argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

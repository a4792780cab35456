"""
Internal redirects end to end: a real backend answering X-Accel-Redirect
and X-Sendfile, a real proxy, real sockets on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.helpers import startProxy
from txrevproxy import parse_config


class _Backend(Resource):
    """
    Answers according to the path, and records what it was asked.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes, bytes]] = []

    def render(self, request: Any) -> bytes:
        body = request.content.read()
        self.seen.append((request.method, request.uri, body))
        path = request.path
        headers = request.requestHeaders
        self.seen_headers = headers
        if path.startswith(b"/accel/"):
            target = path[len(b"/accel") :].replace(b"%3F", b"?")
            request.setHeader(b"x-accel-redirect", target)
            request.setHeader(b"content-type", b"application/x-kept")
            request.setHeader(b"content-disposition", b'attachment; filename="r.bin"')
            request.setHeader(b"x-dropped", b"yes")
            request.addCookie(b"k", b"v")
            return b"backend body that must be discarded"
        if path.endswith(b"/sendfile"):
            request.setHeader(b"x-sendfile", b"/files/data.txt")
            return b"discard me"
        if path == b"/loop":
            request.setHeader(b"x-accel-redirect", b"/loop")
            return b""
        if path.startswith(b"/dynamic"):
            request.setHeader(b"content-type", b"text/x-dynamic")
            return b"dynamic content for " + request.uri
        if path == b"/status/404":
            request.setResponseCode(404)
            return b"backend's own 404 body"
        if path == b"/status/302":
            request.setResponseCode(302)
            request.setHeader(b"location", b"http://example.com/next")
            return b""
        return b"plain"


def _send(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def _split(response: bytes) -> tuple[bytes, dict[bytes, list[bytes]], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], headers, body


class InternalRedirectTests(TestCase):
    timeout = 15

    def setUp(self) -> Any:
        self.root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.root)
        os.mkdir(os.path.join(self.root, "files"))
        os.mkdir(os.path.join(self.root, "files", "sub"))
        with open(os.path.join(self.root, "files", "sub", "index.html"), "wb") as f:
            f.write(b"the index")
        with open(os.path.join(self.root, "files", "data.txt"), "wb") as f:
            f.write(b"0123456789" * 10)
        pages = os.path.join(self.root, "pages")
        os.mkdir(pages)
        with open(os.path.join(pages, "404.html"), "wb") as f:
            f.write(b"<p>custom not found</p>")
        with open(os.path.join(pages, "502.html"), "wb") as f:
            f.write(b"<p>custom bad gateway</p>")
        self.backend = _Backend()
        site = Site(self.backend)
        self.backend_connections = 0
        build_protocol = site.buildProtocol

        def counting(addr: Any) -> Any:
            self.backend_connections += 1
            return build_protocol(addr)

        site.buildProtocol = counting  # type: ignore[method-assign]
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        dead = reactor.listenTCP(0, Site(self.backend), interface="127.0.0.1")
        dead_port = dead.getHost().port
        dead.stopListening()
        self.addCleanup(port.stopListening)
        config = parse_config(
            f"""
[server]
access_log = off

[vserver:default]
document_root = {self.root}
error_pages = {pages}

[source:app]
address = 127.0.0.1:{port.getHost().port}

[rule:files]
priority = 30
match = directory /files
handler = file
internal = yes

[rule:dynamic]
priority = 20
match = directory /dynamic
handler = proxy
sources = app
internal = yes

[rule:plain]
priority = 15
match = directory /plain
handler = proxy
sources = app
x_sendfile = no

[rule:errors]
priority = 10
match = directory /status
handler = proxy
sources = app
vserver_errors = yes

[source:dead]
address = 127.0.0.1:{dead_port}

[rule:down]
priority = 40
match = directory /down
handler = proxy
sources = dead

[rule:moved]
priority = 40
match = directory /old
handler = redirect
redirect = 301 https://$host/new$path$query

[rule:app]
match = default
handler = proxy
sources = app
"""
        )
        return Deferred.fromCoroutine(self._proxy(config))

    async def _proxy(self, config: Any) -> None:
        self.port = (await startProxy(self, config)).port

    def get(self, target: bytes, method: bytes = b"GET", extra: bytes = b"", body: bytes = b"") -> Any:
        request = (
            method + b" " + target + b" HTTP/1.1\r\nHost: example\r\nConnection: close\r\n"
            + extra
            + (b"Content-Length: %d\r\n" % len(body) if body else b"")
            + b"\r\n"
            + body
        )
        return deferToThread(_send, self.port, request).addCallback(_split)

    @inlineCallbacks
    def test_accelToFile(self) -> Any:
        """
        X-Accel-Redirect to an internal file rule serves the file's bytes
        with only the kept backend headers, which replace the file's.
        """
        status, headers, body = yield self.get(b"/accel/files/data.txt")
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(body, b"0123456789" * 10)
        self.assertEqual(headers[b"content-type"], [b"application/x-kept"])
        self.assertEqual(headers[b"content-disposition"], [b'attachment; filename="r.bin"'])
        self.assertIn(b"k=v", headers[b"set-cookie"][0])
        self.assertNotIn(b"x-dropped", headers)
        self.assertNotIn(b"x-accel-redirect", headers)

    @inlineCallbacks
    def test_accelRange(self) -> Any:
        """
        The file behind a redirect honours Range.
        """
        status, headers, body = yield self.get(b"/accel/files/data.txt", extra=b"Range: bytes=0-4\r\n")
        self.assertEqual(status, b"HTTP/1.1 206 Partial Content")
        self.assertEqual(body, b"01234")

    @inlineCallbacks
    def test_sendfile(self) -> Any:
        """
        X-Sendfile works the same way.
        """
        status, headers, body = yield self.get(b"/sendfile")
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(body, b"0123456789" * 10)
        self.assertNotIn(b"x-sendfile", headers)

    @inlineCallbacks
    def test_accelToProxyRule(self) -> Any:
        """
        The target may be a proxy rule: dynamic content, fetched with GET
        even when the original request was a POST, without its body.
        """
        status, headers, body = yield self.get(
            b"/accel/dynamic/x%3Fq=1", method=b"POST", body=b"form=data"
        )
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(body, b"dynamic content for /dynamic/x?q=1")
        self.assertEqual(self.backend.seen[-1], (b"GET", b"/dynamic/x?q=1", b""))
        self.assertEqual(self.backend.seen[-2][0], b"POST")

    @inlineCallbacks
    def test_internalRuleDirectly(self) -> Any:
        """
        A client asking for an internal rule's path gets the vserver's 404.
        """
        status, headers, body = yield self.get(b"/files/data.txt")
        self.assertEqual(status, b"HTTP/1.1 404 Not Found")
        self.assertEqual(body, b"<p>custom not found</p>")

    @inlineCallbacks
    def test_badTargets(self) -> Any:
        """
        Targets with dot-segments (plain or encoded), NUL, or not absolute
        give 502 and never a file.
        """
        for target in (b"/files/../files/data.txt", b"/files/%2e%2e/x", b"/files/%00x"):
            status, _, body = yield self.get(b"/accel" + target.replace(b"?", b"%3F"))
            self.assertEqual(status, b"HTTP/1.1 502 Bad Gateway", target)
            self.assertNotIn(b"0123456789", body)

    @inlineCallbacks
    def test_loop(self) -> Any:
        """
        A redirect loop ends in a 500 after ten redirects.
        """
        status, _, _ = yield self.get(b"/loop")
        self.assertEqual(status, b"HTTP/1.1 500 Internal Server Error")
        self.assertEqual(sum(1 for m, uri, _ in self.backend.seen if uri == b"/loop"), 11)

    @inlineCallbacks
    def test_disabled(self) -> Any:
        """
        With x_sendfile = no the backend's answer is relayed, the headers
        hidden.
        """
        status, headers, body = yield self.get(b"/plain/sendfile")
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(body, b"discard me")
        self.assertNotIn(b"x-sendfile", headers)

    @inlineCallbacks
    def test_clientHeadersHidden(self) -> Any:
        """
        X-Sendfile-Type and X-Accel-Mapping from a client never reach a
        backend.
        """
        yield self.get(b"/x", extra=b"X-Sendfile-Type: X-Accel-Redirect\r\nX-Accel-Mapping: /=/etc/\r\n")
        self.assertFalse(self.backend.seen_headers.hasHeader(b"x-sendfile-type"))
        self.assertFalse(self.backend.seen_headers.hasHeader(b"x-accel-mapping"))

    @inlineCallbacks
    def test_vserverErrors(self) -> Any:
        """
        With vserver_errors a backend 404 becomes the vserver's page, status
        kept; a 302 is relayed untouched.
        """
        status, _, body = yield self.get(b"/status/404")
        self.assertEqual(status, b"HTTP/1.1 404 Not Found")
        self.assertEqual(body, b"<p>custom not found</p>")
        status, headers, _ = yield self.get(b"/status/302")
        self.assertEqual(status, b"HTTP/1.1 302 Found")
        self.assertEqual(headers[b"location"], [b"http://example.com/next"])

    @inlineCallbacks
    def test_missingTargetKeepsErrorPage(self) -> Any:
        """
        A redirect to a file that does not exist is the vserver's 404 page,
        presented as HTML, not with the backend's kept Content-Type.
        """
        status, headers, body = yield self.get(b"/accel/files/missing.txt")
        self.assertEqual(status, b"HTTP/1.1 404 Not Found")
        self.assertEqual(body, b"<p>custom not found</p>")
        self.assertEqual(headers[b"content-type"], [b"text/html; charset=utf-8"])

    @inlineCallbacks
    def test_backendConnectionReused(self) -> Any:
        """
        The redirecting response's body is read and dropped, so its backend
        connection goes back to the pool: further requests reuse it.
        """
        for _ in range(3):
            status, _, body = yield self.get_keepalive(b"/accel/files/data.txt")
        self.assertEqual(self.backend_connections, 1)

    def get_keepalive(self, target: bytes) -> Any:
        request = b"GET " + target + b" HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n"
        return deferToThread(_send, self.port, request).addCallback(_split)

    @inlineCallbacks
    def test_customBadGateway(self) -> Any:
        """
        A proxy-generated 502 uses the vserver's C{502.html}.
        """
        status, headers, body = yield self.get(b"/down/x")
        self.assertEqual(status, b"HTTP/1.1 502 Bad Gateway")
        self.assertEqual(body, b"<p>custom bad gateway</p>")

    @inlineCallbacks
    def test_redirectHandler(self) -> Any:
        """
        C{redirect = 301 https://$host/new$path$query} expands the request's
        host, raw path and query; a C{$} in the request is not expanded.
        """
        status, headers, _ = yield self.get(b"/old/a%20b?x=1&y=$host")
        self.assertEqual(status, b"HTTP/1.1 301 Moved Permanently")
        self.assertEqual(headers[b"location"], [b"https://example/new/old/a%20b?x=1&y=%24host"])
        self.assertEqual(headers[b"server"], [b"txrevproxy"])

    @inlineCallbacks
    def test_accelToDirectory(self) -> Any:
        """
        A redirect to a directory named without its trailing slash serves
        the directory's index: the client cannot be sent to an internal
        path with a 301.
        """
        status, _, body = yield self.get(b"/accel/files/sub")
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(body, b"the index")


class AccessLogTests(TestCase):
    """
    The access log names what the client asked for.
    """

    def test_receivedRequestLogged(self) -> None:
        from twisted.internet.address import IPv4Address

        from txrevproxy._server import access_log_line

        class Served:
            method = b"GET"
            uri = b"/protected/report.pdf"
            clientproto = b"HTTP/1.1"
            code = 200
            sentLength = 29
            received = (b"POST", b"/download?id=7")

            def getClientAddress(self) -> IPv4Address:
                return IPv4Address("TCP", "127.0.0.1", 5000)

            def getHeader(self, name: bytes) -> None:
                return None

        line = access_log_line("[24/Nov/2026:21:00:00 +0000]", Served())
        self.assertIn('"POST /download?id=7 HTTP/1.1" 200 29', line)
        del Served.received
        line = access_log_line("[24/Nov/2026:21:00:00 +0000]", Served())
        self.assertIn('"GET /protected/report.pdf HTTP/1.1" 200 29', line)


class AccessLogFileTests(TestCase):
    """
    C{access_log = PATH}: one combined-log-format line per request.
    """

    timeout = 10

    async def test_lineWritten(self) -> None:
        from tests.helpers import proxyConfig, startBackend, socketExchange

        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "access.log")
        backend = startBackend(self)
        proxy = await startProxy(self, proxyConfig([backend.port], server={"access_log": path}))
        await socketExchange(
            proxy.port,
            b"GET /a?b=1 HTTP/1.1\r\nHost: example\r\nUser-Agent: probe/1\r\nConnection: close\r\n\r\n",
        )
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(
            lines[0],
            r'^"127\.0\.0\.1" - - \[[^\]]+\] "GET /a\?b=1 HTTP/1\.1" 200 (\d+|-) "-" "probe/1"$',
        )

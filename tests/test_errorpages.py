# -*- test-case-name: tests.test_errorpages -*-
"""
Tests for L{txrevproxy._errorpages}.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from txrevproxy._errorpages import MAX_PAGE_SIZE, ErrorPages


def temporaryDirectory(case: SynchronousTestCase) -> Path:
    """
    A fresh directory outside the source tree, removed after C{case}.
    """
    path = tempfile.mkdtemp(prefix="txrevproxy-test-")
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return Path(path)


class _Renders(Resource):
    """
    A leaf resource answering every request with one error page, after
    setting a few headers that must survive or vanish.
    """

    isLeaf = True

    def __init__(self, pages: ErrorPages, code: int) -> None:
        super().__init__()
        self.pages = pages
        self.code = code

    def render(self, request: IRequest) -> bytes:
        request.setHeader(b"allow", b"GET, HEAD")
        request.setHeader(b"etag", b'"stale"')
        request.setHeader(b"content-encoding", b"gzip")
        return self.pages.render(request, self.code)


def fetch(
    resource: IResource, method: bytes = b"GET", target: bytes = b"/"
) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    """
    Send one request to a L{Site} around C{resource} over an in-memory
    transport and parse the raw response.

    @return: The status code, the response headers (lower-cased names) and
        the body exactly as sent.
    """
    site = Site(resource, reactor=MemoryReactorClock())
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(
        b"%s %s HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
        % (method, target)
    )
    protocol.connectionLost(Failure(ConnectionDone()))
    head, _, body = transport.value().partition(b"\r\n\r\n")
    statusLine, *lines = head.split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(statusLine.split(b" ")[1]), headers, body


class ErrorPagesTests(SynchronousTestCase):
    """
    L{ErrorPages} picks and renders pages.
    """

    def makeDirectory(self, pages: dict[str, bytes]) -> str:
        directory = temporaryDirectory(self)
        for name, content in pages.items():
            (directory / name).write_bytes(content)
        return str(directory)

    def test_builtinNamesStatus(self) -> None:
        """
        Without a directory, the page names the code and its reason phrase.
        """
        body = ErrorPages().body(404)
        self.assertIn(b"404 Not Found", body)
        self.assertIn(b"502 Bad Gateway", ErrorPages().body(502))
        self.assertTrue(body.startswith(b"<!DOCTYPE html>"))

    def test_builtinUnknownCode(self) -> None:
        """
        A status without a standard reason phrase still gets a page naming it.
        """
        self.assertIn(b"<h1>499</h1>", ErrorPages().body(499))

    def test_customPage(self) -> None:
        """
        C{DIRECTORY/NNN.html} is used for that status, as written.
        """
        directory = self.makeDirectory({"503.html": b"<p>down for a bit</p>"})
        self.assertEqual(
            ErrorPages(directory).body(503), b"<p>down for a bit</p>"
        )

    def test_missingPageFallsBack(self) -> None:
        """
        A status without a page in the directory gets the built-in page, and
        that is not worth a warning.
        """
        directory = self.makeDirectory({"503.html": b"custom"})
        events: list[dict[str, object]] = []
        self.patch(ErrorPages, "_log", Logger(observer=events.append))
        self.assertEqual(ErrorPages(directory).body(404), ErrorPages().body(404))
        self.assertEqual(events, [])

    def test_pageReadEachTime(self) -> None:
        """
        An edited page takes effect on the next error.
        """
        directory = self.makeDirectory({"404.html": b"old"})
        pages = ErrorPages(directory)
        self.assertEqual(pages.body(404), b"old")
        Path(directory, "404.html").write_bytes(b"new")
        self.assertEqual(pages.body(404), b"new")

    def assertUnusable(self, directory: str, code: int) -> None:
        """
        The page for C{code} is replaced by the built-in page, with a warning
        logged once however often the page is asked for.
        """
        events: list[dict[str, object]] = []
        self.patch(ErrorPages, "_log", Logger(observer=events.append))
        pages = ErrorPages(directory)
        for _ in range(3):
            self.assertEqual(pages.body(code), ErrorPages().body(code))
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"].name, "warn")  # type: ignore[attr-defined]
        self.assertEqual(events[0]["code"], code)

    def test_directoryAsPage(self) -> None:
        """
        A directory named like a page is not a page.
        """
        directory = self.makeDirectory({})
        os.mkdir(os.path.join(directory, "500.html"))
        self.assertUnusable(directory, 500)

    def test_fifoAsPage(self) -> None:
        """
        A FIFO named like a page is not read (which would block).
        """
        directory = self.makeDirectory({})
        os.mkfifo(os.path.join(directory, "502.html"))
        self.assertUnusable(directory, 502)

    def test_hugePage(self) -> None:
        """
        A page larger than L{MAX_PAGE_SIZE} is not sent.
        """
        directory = self.makeDirectory({"500.html": b"x" * (MAX_PAGE_SIZE + 1)})
        self.assertUnusable(directory, 500)

    def test_largestPage(self) -> None:
        """
        A page of exactly L{MAX_PAGE_SIZE} bytes is sent.
        """
        directory = self.makeDirectory({"500.html": b"x" * MAX_PAGE_SIZE})
        self.assertEqual(len(ErrorPages(directory).body(500)), MAX_PAGE_SIZE)

    def test_loopingSymlinkPage(self) -> None:
        """
        A page that cannot be opened (a symlink loop) is replaced.
        """
        directory = self.makeDirectory({})
        os.symlink("403.html", os.path.join(directory, "403.html"))
        self.assertUnusable(directory, 403)

    def test_invalidCodes(self) -> None:
        """
        Statuses that carry no error page are programming errors.
        """
        pages = ErrorPages()
        for code in (200, 204, 304, 600, 99, True):
            self.assertRaises(ValueError, pages.body, code)
            self.assertRaises(ValueError, pages.resource, code)

    def test_pathLike(self) -> None:
        """
        The directory may be given as a path object; it is kept as text.
        """
        directory = self.makeDirectory({"404.html": b"custom"})
        pages = ErrorPages(Path(directory))
        self.assertEqual(pages.directory, directory)
        self.assertEqual(pages.body(404), b"custom")
        self.assertRaises(TypeError, ErrorPages, os.fsencode(directory))

    def test_frozenValue(self) -> None:
        """
        L{ErrorPages} is an immutable value, equal by its directory.
        """
        pages = ErrorPages("/srv/errors")
        self.assertEqual(pages, ErrorPages("/srv/errors"))
        self.assertNotEqual(pages, ErrorPages())
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, pages, "directory", None)


class RenderTests(SynchronousTestCase):
    """
    L{ErrorPages.render} and L{ErrorPages.resource} answer a request.
    """

    def test_customPageKeepsStatus(self) -> None:
        """
        The operator's page is sent with the status of the error.
        """
        directory = temporaryDirectory(self)
        (directory / "502.html").write_bytes(b"<h1>backend away</h1>")
        code, headers, body = fetch(_Renders(ErrorPages(str(directory)), 502))
        self.assertEqual(code, 502)
        self.assertEqual(body, b"<h1>backend away</h1>")
        self.assertEqual(headers[b"content-type"], [b"text/html; charset=utf-8"])
        self.assertEqual(headers[b"content-length"], [b"21"])

    def test_headers(self) -> None:
        """
        Headers set for the error itself are kept; those describing another
        representation are dropped.
        """
        code, headers, body = fetch(_Renders(ErrorPages(), 405), method=b"POST")
        self.assertEqual(code, 405)
        self.assertEqual(headers[b"allow"], [b"GET, HEAD"])
        self.assertNotIn(b"etag", headers)
        self.assertNotIn(b"content-encoding", headers)
        self.assertIn(b"405 Method Not Allowed", body)

    def test_builtinEchoesNothing(self) -> None:
        """
        Nothing of the request appears in a built-in page.
        """
        code, headers, body = fetch(
            ErrorPages().resource(404),
            target=b"/%3Cscript%3Ealert(1)%3C/script%3E?q=<marker>",
        )
        self.assertEqual(code, 404)
        self.assertEqual(body, ErrorPages().body(404))
        for fragment in (b"script", b"marker", b"example", b"alert", b"127.0.0.1"):
            self.assertNotIn(fragment, body.lower())

    def test_head(self) -> None:
        """
        A HEAD request gets the status and the page's length, but no body.
        """
        code, headers, body = fetch(ErrorPages().resource(503), method=b"HEAD")
        self.assertEqual(code, 503)
        self.assertEqual(body, b"")
        self.assertEqual(
            headers[b"content-length"], [b"%d" % (len(ErrorPages().body(503)),)]
        )

    def test_resourceIsLeaf(self) -> None:
        """
        L{ErrorPages.resource} answers every path and method below it.
        """
        resource = ErrorPages().resource(410)
        self.assertTrue(verifyObject(IResource, resource))
        code, _, body = fetch(resource, method=b"DELETE", target=b"/a/b/c")
        self.assertEqual(code, 410)
        self.assertIn(b"410 Gone", body)

# -*- test-case-name: tests.test_files -*-
"""
Tests for L{txrevproxy._files}.

The handler is served by a real L{Site} on 127.0.0.1 and spoken to with raw
bytes, so request targets reach it exactly as an attacker would send them
and responses are checked exactly as sent.  (An in-memory transport will
not do: L{static.File} streams through Twisted's global cooperator.)
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import tempfile
import re
import warnings
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import datetimeToString
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from txrevproxy._errorpages import ErrorPages
from txrevproxy._files import MAX_RANGES, FileHandler, _contained

HELLO = b"hello, world\n"
BLOB = bytes(range(256)) * 4
NOT_FOUND = ErrorPages().body(404)


def temporaryDirectory(case: SynchronousTestCase) -> Path:
    """
    A fresh directory outside the source tree, removed after C{case}.
    """
    path = tempfile.mkdtemp(prefix="txrevproxy-test-")
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return Path(path)


class _Exchange(Protocol):
    """
    Send one raw request and collect everything until the server closes.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(b"".join(self.received))


class Response:
    """
    A parsed raw response.
    """

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        statusLine, *lines = head.split(b"\r\n")
        self.code = int(statusLine.split(b" ")[1])
        self.headers: dict[bytes, list[bytes]] = {}
        for line in lines:
            name, _, value = line.partition(b":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name)
        return None if values is None else values[0]


def makeTree(base: Path) -> Path:
    """
    Build a document root with traps around it.

    @return: The root, C{base/files}.
    """
    root = base / "files"
    (root / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "evil.example").mkdir()
    (root / "index-escape").mkdir()
    (base / "files-secret").mkdir()
    (root / "hello.txt").write_bytes(HELLO)
    (root / "page.html").write_bytes(b"<p>hi</p>")
    (root / "blob.unknownext").write_bytes(BLOB)
    (root / "archive.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    (root / "sub" / "index.html").write_bytes(b"<p>sub index</p>")
    (root / "sub" / "deeper.txt").write_bytes(b"deeper")
    (root / "evil.example" / "index.html").write_bytes(b"not evil")
    (base / "secret.txt").write_bytes(b"secret outside the root")
    (base / "files-secret" / "s.txt").write_bytes(b"secret in a sibling")
    os.symlink("hello.txt", root / "inside-link.txt")
    os.symlink("sub", root / "sub-link")
    os.symlink("../secret.txt", root / "escape-link.txt")
    os.symlink("..", root / "dir-escape")
    os.symlink("../files-secret/s.txt", root / "sibling-link.txt")
    os.symlink("../../secret.txt", root / "index-escape" / "index.html")
    os.mkfifo(root / "fifo")
    return root


class FileHandlerTests(TestCase):
    """
    L{FileHandler} serves files below its root, and nothing else.
    """

    timeout = 15

    def setUp(self) -> None:
        self.base = temporaryDirectory(self)
        self.root = makeTree(self.base)
        self.port = self.listen(FileHandler(str(self.root), ErrorPages()))

    def listen(self, resource: IResource) -> int:
        """
        Serve C{resource} on a fresh loopback port for this test.
        """
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        number: int = port.getHost().port
        return number

    @inlineCallbacks
    def request(
        self,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
        method: bytes = b"GET",
        port: int | None = None,
    ) -> Generator[Deferred[Any], Any, Response]:
        """
        Send one raw request over a fresh connection.
        """
        lines = [b"%s %s HTTP/1.1" % (method, target), b"Host: example.com"]
        lines += [b"%s: %s" % header for header in headers]
        lines += [b"Connection: close", b"", b""]
        exchange = _Exchange(b"\r\n".join(lines))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port or self.port)
        yield connectProtocol(endpoint, exchange)
        raw = yield exchange.done
        return Response(raw)

    @inlineCallbacks
    def assertNotFound(
        self, target: bytes, port: int | None = None
    ) -> Generator[Deferred[Any], Any, None]:
        response = yield self.request(target, port=port)
        self.assertEqual((target, response.code), (target, 404))
        self.assertEqual(response.body, NOT_FOUND)

    @inlineCallbacks
    def test_exactBytes(self) -> Generator[Deferred[Any], Any, None]:
        """
        A file is sent as it is, with its length, type and validators.
        """
        response = yield self.request(b"/hello.txt")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, HELLO)
        self.assertEqual(response.header(b"content-length"), b"%d" % len(HELLO))
        self.assertEqual(response.header(b"content-type"), b"text/plain")
        self.assertEqual(response.header(b"accept-ranges"), b"bytes")
        info = os.stat(self.root / "hello.txt")
        self.assertEqual(
            response.header(b"etag"), b'"%x-%x"' % (info.st_mtime_ns, len(HELLO))
        )
        self.assertEqual(
            response.header(b"last-modified"),
            datetimeToString(math.ceil(info.st_mtime)),
        )
        response = yield self.request(b"/blob.unknownext")
        self.assertEqual(response.body, BLOB)

    @inlineCallbacks
    def test_encodedNames(self) -> Generator[Deferred[Any], Any, None]:
        """
        Names are percent-decoded to bytes, whatever their encoding.
        """
        (self.root / "two words.txt").write_bytes(b"spaced")
        with open(os.path.join(os.fsencode(self.root), b"caf\xe9.txt"), "wb") as f:
            f.write(b"latin-1 name")
        response = yield self.request(b"/two%20words.txt")
        self.assertEqual((response.code, response.body), (200, b"spaced"))
        response = yield self.request(b"/caf%E9.txt")
        self.assertEqual((response.code, response.body), (200, b"latin-1 name"))
        self.assertEqual(response.header(b"content-type"), b"text/plain")

    @inlineCallbacks
    def test_contentTypes(self) -> Generator[Deferred[Any], Any, None]:
        """
        Types come from the extension; unknown ones are octet-stream, and a
        compressed file is not declared as a content-encoded one.
        """
        for target, expected in [
            (b"/page.html", b"text/html"),
            (b"/blob.unknownext", b"application/octet-stream"),
            (b"/inside-link.txt", b"text/plain"),
        ]:
            response = yield self.request(target)
            self.assertEqual(response.header(b"content-type"), expected)
        response = yield self.request(b"/archive.tar.gz")
        self.assertEqual(response.body, b"\x1f\x8b not really gzip")
        self.assertNotIn(b"content-encoding", response.headers)

    @inlineCallbacks
    def test_rangeSingle(self) -> Generator[Deferred[Any], Any, None]:
        """
        One satisfiable range is a 206 with C{Content-Range}.
        """
        response = yield self.request(b"/blob.unknownext", [(b"Range", b"bytes=10-19")])
        self.assertEqual(response.code, 206)
        self.assertEqual(response.body, BLOB[10:20])
        self.assertEqual(response.header(b"content-range"), b"bytes 10-19/1024")
        response = yield self.request(b"/blob.unknownext", [(b"Range", b"bytes=-4")])
        self.assertEqual(response.body, BLOB[-4:])
        self.assertEqual(response.header(b"content-range"), b"bytes 1020-1023/1024")

    @inlineCallbacks
    def test_rangeMultiple(self) -> Generator[Deferred[Any], Any, None]:
        """
        Several ranges are a multipart/byteranges 206.
        """
        response = yield self.request(
            b"/blob.unknownext", [(b"Range", b"bytes=0-1,100-103")]
        )
        self.assertEqual(response.code, 206)
        match = re.match(
            rb'multipart/byteranges; boundary="([^"]+)"',
            response.header(b"content-type") or b"",
        )
        assert match is not None
        boundary = match.group(1)
        self.assertEqual(response.header(b"content-length"), b"%d" % len(response.body))
        parts = response.body.split(b"--" + boundary)
        self.assertEqual(parts[-1], b"--\r\n")
        bodies = [part.partition(b"\r\n\r\n")[2].removesuffix(b"\r\n") for part in parts[1:-1]]
        self.assertEqual(bodies, [BLOB[0:2], BLOB[100:104]])
        self.assertIn(b"Content-range: bytes 100-103/1024", parts[2])

    @inlineCallbacks
    def test_rangeUnsatisfiable(self) -> Generator[Deferred[Any], Any, None]:
        """
        A range beyond the end is a 416 naming the size.
        """
        for ranges in (b"bytes=2000-3000", b"bytes=2000-2001,3000-3001"):
            response = yield self.request(b"/blob.unknownext", [(b"Range", ranges)])
            self.assertEqual(response.code, 416)
            self.assertEqual(response.header(b"content-range"), b"bytes */1024")
            self.assertNotIn(BLOB[:16], response.body)

    @inlineCallbacks
    def test_rangeAmplification(self) -> Generator[Deferred[Any], Any, None]:
        """
        Ranges adding up to more than the file, or too many of them, get the
        whole file once instead of a multiplied response.
        """
        for ranges in (
            b"bytes=" + b",".join([b"0-"] * 20),
            b"bytes=0-600,500-1023",
            b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(MAX_RANGES + 1)),
        ):
            response = yield self.request(b"/blob.unknownext", [(b"Range", ranges)])
            self.assertEqual((response.code, response.body), (200, BLOB))
        ranges = b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(0, 2 * MAX_RANGES, 2))
        response = yield self.request(b"/blob.unknownext", [(b"Range", ranges)])
        self.assertEqual(response.code, 206)

    @inlineCallbacks
    def test_noDescriptorLeak(self) -> Generator[Deferred[Any], Any, None]:
        """
        Every way a request for a file ends closes the file.
        """
        opened = lambda: len(os.listdir("/proc/self/fd"))
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("needs /proc/self/fd")
        etag = (yield self.request(b"/hello.txt")).header(b"etag")
        before = opened()
        # A file object dropped unclosed is closed by the garbage collector,
        # so the descriptor count alone cannot see it; its warning can.
        caught = warnings.catch_warnings(record=True)
        unclosed = caught.__enter__()
        self.addCleanup(caught.__exit__, None, None, None)
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(5):
            for headers, method in [
                ([], b"GET"),
                ([], b"HEAD"),
                ([(b"If-None-Match", etag)], b"GET"),
                ([(b"If-Match", b'"other"')], b"GET"),
                ([(b"Range", b"bytes=100-200")], b"GET"),
                ([(b"Range", b"bytes=100-200,300-400")], b"GET"),
                ([(b"Range", b"bytes=0-1,3-4")], b"GET"),
            ]:
                yield self.request(b"/hello.txt", headers, method)
        gc.collect()
        self.assertEqual(opened(), before)
        self.assertEqual(
            [w for w in unclosed if issubclass(w.category, ResourceWarning)], []
        )

    @inlineCallbacks
    def test_ifModifiedSince(self) -> Generator[Deferred[Any], Any, None]:
        """
        An unchanged file is a 304 with no body and no false length; a
        changed one is sent.
        """
        first = yield self.request(b"/hello.txt")
        lastModified = first.header(b"last-modified")
        response = yield self.request(
            b"/hello.txt", [(b"If-Modified-Since", lastModified)]
        )
        self.assertEqual(response.code, 304)
        self.assertEqual(response.body, b"")
        self.assertEqual(response.header(b"etag"), first.header(b"etag"))
        self.assertNotIn(b"content-length", response.headers)
        response = yield self.request(
            b"/hello.txt", [(b"If-Modified-Since", b"Sat, 01 Jan 2000 00:00:00 GMT")]
        )
        self.assertEqual((response.code, response.body), (200, HELLO))

    @inlineCallbacks
    def test_ifNoneMatch(self) -> Generator[Deferred[Any], Any, None]:
        """
        C{If-None-Match} naming the current tag (weakly compared, in a list,
        or C{*}) is a 304; any other tag gets the file.
        """
        etag = (yield self.request(b"/hello.txt")).header(b"etag")
        for value in (etag, b"W/" + etag, b'"other", ' + etag, b"*"):
            response = yield self.request(b"/hello.txt", [(b"If-None-Match", value)])
            self.assertEqual((value, response.code, response.body), (value, 304, b""))
            self.assertEqual(response.header(b"etag"), etag)
        for value in (b'"other"', b'"other", W/"else"', b"garbage"):
            response = yield self.request(b"/hello.txt", [(b"If-None-Match", value)])
            self.assertEqual((value, response.code, response.body), (value, 200, HELLO))

    @inlineCallbacks
    def test_ifNoneMatchBeatsIfModifiedSince(self) -> Generator[Deferred[Any], Any, None]:
        """
        With C{If-None-Match}, C{If-Modified-Since} is ignored (RFC 9110
        13.1.3).
        """
        lastModified = (yield self.request(b"/hello.txt")).header(b"last-modified")
        response = yield self.request(
            b"/hello.txt",
            [(b"If-None-Match", b'"other"'), (b"If-Modified-Since", lastModified)],
        )
        self.assertEqual((response.code, response.body), (200, HELLO))

    @inlineCallbacks
    def test_ifMatch(self) -> Generator[Deferred[Any], Any, None]:
        """
        A failed C{If-Match} or C{If-Unmodified-Since} is a 412.
        """
        etag = (yield self.request(b"/hello.txt")).header(b"etag")
        for headers in (
            [(b"If-Match", b'"other"')],
            [(b"If-Match", b"W/" + etag)],
            [(b"If-Unmodified-Since", b"Sat, 01 Jan 2000 00:00:00 GMT")],
        ):
            response = yield self.request(b"/hello.txt", headers)
            self.assertEqual(response.code, 412)
            self.assertNotIn(HELLO, response.body)
        for headers in ([(b"If-Match", etag)], [(b"If-Match", b"*")]):
            response = yield self.request(b"/hello.txt", headers)
            self.assertEqual((response.code, response.body), (200, HELLO))

    @inlineCallbacks
    def test_ifRange(self) -> Generator[Deferred[Any], Any, None]:
        """
        C{If-Range} with the current validator keeps the range; with any
        other, the whole file is sent.
        """
        first = yield self.request(b"/blob.unknownext")
        etag, lastModified = first.header(b"etag"), first.header(b"last-modified")
        for validator in (etag, lastModified):
            response = yield self.request(
                b"/blob.unknownext", [(b"Range", b"bytes=0-3"), (b"If-Range", validator)]
            )
            self.assertEqual((response.code, response.body), (206, BLOB[:4]))
        for validator in (b'"other"', b"W/" + etag, b"Sat, 01 Jan 2000 00:00:00 GMT"):
            response = yield self.request(
                b"/blob.unknownext", [(b"Range", b"bytes=0-3"), (b"If-Range", validator)]
            )
            self.assertEqual((response.code, response.body), (200, BLOB))
            self.assertNotIn(b"content-range", response.headers)

    @inlineCallbacks
    def test_head(self) -> Generator[Deferred[Any], Any, None]:
        """
        HEAD gets the headers of a GET and no body.
        """
        response = yield self.request(b"/hello.txt", method=b"HEAD")
        self.assertEqual((response.code, response.body), (200, b""))
        self.assertEqual(response.header(b"content-length"), b"%d" % len(HELLO))
        self.assertEqual(response.header(b"content-type"), b"text/plain")
        self.assertIsNotNone(response.header(b"etag"))
        response = yield self.request(b"/missing.txt", method=b"HEAD")
        self.assertEqual((response.code, response.body), (404, b""))
        self.assertEqual(response.header(b"content-length"), b"%d" % len(NOT_FOUND))

    @inlineCallbacks
    def test_otherMethods(self) -> Generator[Deferred[Any], Any, None]:
        """
        Methods other than GET and HEAD are 405 with C{Allow}.
        """
        for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS"):
            response = yield self.request(b"/hello.txt", method=method)
            self.assertEqual(response.code, 405)
            self.assertEqual(response.header(b"allow"), b"GET, HEAD")
            self.assertEqual(response.body, ErrorPages().body(405))

    @inlineCallbacks
    def test_traversal(self) -> Generator[Deferred[Any], Any, None]:
        """
        Dot-segments, plain or encoded, encoded slashes, backslashes and NUL
        are 404, even where they would stay inside the root.
        """
        for target in (
            b"/../secret.txt",
            b"/sub/../../secret.txt",
            b"/%2e%2e/secret.txt",
            b"/%2E%2e/secret.txt",
            b"/sub/%2e%2E/%2e%2e/secret.txt",
            b"/sub/..%2f..%2fsecret.txt",
            b"/..%2fsecret.txt",
            b"/%2e%2e%2fsecret.txt",
            b"/sub/..%5c..%5csecret.txt",
            b"/..\\secret.txt",
            b"/hello.txt%00.html",
            b"/sub/%2e%2e/hello.txt",
            b"/./hello.txt",
            b"/%252e%252e/secret.txt",
        ):
            yield self.assertNotFound(target)

    @inlineCallbacks
    def test_symlinks(self) -> Generator[Deferred[Any], Any, None]:
        """
        Symlinks are followed while they stay inside the root, as a file or a
        directory; one that leaves it is 404.
        """
        response = yield self.request(b"/inside-link.txt")
        self.assertEqual((response.code, response.body), (200, HELLO))
        response = yield self.request(b"/sub-link/deeper.txt")
        self.assertEqual((response.code, response.body), (200, b"deeper"))
        for target in (
            b"/escape-link.txt",
            b"/dir-escape/secret.txt",
            b"/index-escape/",
            b"/sibling-link.txt",
        ):
            yield self.assertNotFound(target)

    @inlineCallbacks
    def test_directories(self) -> Generator[Deferred[Any], Any, None]:
        """
        C{DIR/} serves its C{index.html}; C{DIR} redirects there; a directory
        without an index is 404, never a listing.
        """
        response = yield self.request(b"/sub/")
        self.assertEqual((response.code, response.body), (200, b"<p>sub index</p>"))
        self.assertEqual(response.header(b"content-type"), b"text/html")
        response = yield self.request(b"/sub?a=1")
        self.assertEqual(response.code, 301)
        self.assertEqual(response.header(b"location"), b"/sub/?a=1")
        for target in (b"/", b"/empty", b"/empty/", b"/hello.txt/", b"/sub/deeper.txt/"):
            yield self.assertNotFound(target)

    @inlineCallbacks
    def test_noOpenRedirect(self) -> Generator[Deferred[Any], Any, None]:
        """
        The directory redirect never points at another host.
        """
        response = yield self.request(b"//evil.example")
        self.assertEqual(response.code, 301)
        self.assertEqual(response.header(b"location"), b"/evil.example/")

    @inlineCallbacks
    def test_notRegularFiles(self) -> Generator[Deferred[Any], Any, None]:
        """
        Missing files and FIFOs are 404 (the FIFO is not opened for reading,
        which would hang).
        """
        yield self.assertNotFound(b"/missing.txt")
        yield self.assertNotFound(b"/fifo")

    @inlineCallbacks
    def test_unreadable(self) -> Generator[Deferred[Any], Any, None]:
        """
        A file the server may not read is 403.
        """
        if os.geteuid() == 0:
            self.skipTest("root reads every file")
        (self.root / "hello.txt").chmod(0)
        response = yield self.request(b"/hello.txt")
        self.assertEqual(response.code, 403)
        self.assertEqual(response.body, ErrorPages().body(403))

    @inlineCallbacks
    def test_alias(self) -> Generator[Deferred[Any], Any, None]:
        """
        Mounted below C{/static/}, the path under the mount point is looked
        up in the root (nginx C{alias}).
        """
        tree = Resource()
        tree.putChild(b"static", FileHandler(str(self.root), ErrorPages()))
        port = self.listen(tree)
        response = yield self.request(b"/static/hello.txt", port=port)
        self.assertEqual((response.code, response.body), (200, HELLO))
        response = yield self.request(b"/static/sub/deeper.txt", port=port)
        self.assertEqual((response.code, response.body), (200, b"deeper"))
        response = yield self.request(b"/static/sub", port=port)
        self.assertEqual(response.header(b"location"), b"/static/sub/")
        response = yield self.request(b"/static/sub/", port=port)
        self.assertEqual(response.body, b"<p>sub index</p>")
        yield self.assertNotFound(b"/static/static/hello.txt", port=port)
        yield self.assertNotFound(b"/static/%2e%2e/secret.txt", port=port)
        yield self.assertNotFound(b"/static", port=port)

    @inlineCallbacks
    def test_absoluteForm(self) -> Generator[Deferred[Any], Any, None]:
        """
        An absolute-form target serves the file its path names.
        """
        response = yield self.request(b"http://example.com/hello.txt")
        self.assertEqual((response.code, response.body), (200, HELLO))

    @inlineCallbacks
    def test_customErrorPages(self) -> Generator[Deferred[Any], Any, None]:
        """
        Errors use the configured pages, with the status kept.
        """
        pages = self.base / "errors"
        pages.mkdir()
        (pages / "404.html").write_bytes(b"<h1>nothing here</h1>")
        port = self.listen(FileHandler(str(self.root), ErrorPages(str(pages))))
        response = yield self.request(b"/../secret.txt", port=port)
        self.assertEqual((response.code, response.body), (404, b"<h1>nothing here</h1>"))
        response = yield self.request(b"/hello.txt", method=b"POST", port=port)
        self.assertEqual((response.code, response.body), (405, ErrorPages().body(405)))

    @inlineCallbacks
    def test_rootSwitched(self) -> Generator[Deferred[Any], Any, None]:
        """
        A root that is a symlink is resolved per request, so it can be
        switched to another release while serving.
        """
        current = self.base / "current"
        os.symlink("files", current)
        port = self.listen(FileHandler(str(current), ErrorPages()))
        response = yield self.request(b"/hello.txt", port=port)
        self.assertEqual(response.body, HELLO)
        os.remove(current)
        os.symlink("files-secret", current)
        response = yield self.request(b"/s.txt", port=port)
        self.assertEqual(response.body, b"secret in a sibling")
        yield self.assertNotFound(b"/hello.txt", port=port)


class ContainmentTests(SynchronousTestCase):
    """
    L{_contained} compares whole path components.
    """

    def test_components(self) -> None:
        self.assertTrue(_contained(b"/tmp/x/files", b"/tmp/x/files"))
        self.assertTrue(_contained(b"/tmp/x/files", b"/tmp/x/files/a/b"))
        self.assertFalse(_contained(b"/tmp/x/files", b"/tmp/x/files-secret/s.txt"))
        self.assertFalse(_contained(b"/tmp/x/files", b"/tmp/x/filesx"))
        self.assertFalse(_contained(b"/tmp/x/files", b"/tmp/x"))
        self.assertTrue(_contained(b"/", b"/etc/passwd"))

# -*- test-case-name: tests.test_files -*-
"""
The C{file} handler: static files below a document root.

Twisted's L{static.File} already does the hard parts of serving a file (Range
with 206/416 and multipart/byteranges, C{Last-Modified}, content types,
non-blocking producers), so it serves the bytes.  What it lacks for a public
server is added here, in front of it: mapping a raw URL path to a file that
provably lies inside the root, answering only C{GET} and C{HEAD}, an C{ETag}
with the preconditions evaluated in the RFC 9110 order (L{static.File}
ignores C{If-Range} and answers 304 with a false C{Content-Length}), and
error pages that leak nothing.  L{static.File} is only ever asked to render one regular file that
was already opened and checked; its child lookup, directory listings and
directory redirects are never reached.
"""

from __future__ import annotations

import math
import os
import stat
from typing import IO

from twisted.web import http, static
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ._conditional import preconditions
from ._errorpages import ErrorPages

__all__ = ["FileHandler", "INDEX_NAME"]

INDEX_NAME = b"index.html"
"""
The file served for a request naming a directory with a trailing slash.
"""

DEFAULT_TYPE = "application/octet-stream"
"""
The content type of a file whose extension is unknown (nginx's usual
C{default_type}); never C{text/html}, which would let an uploaded file run
script in the site's origin.
"""

MAX_RANGES = 100
"""
The most ranges one request may ask for before C{Range} is ignored.
"""



class _NotFound(Exception):
    """
    The request names nothing this handler may serve; carries the status.
    """

    def __init__(self, code: int = http.NOT_FOUND) -> None:
        super().__init__(code)
        self.code = code


class _Redirect(Exception):
    """
    A directory was named without its trailing slash.
    """


def _contained(root: bytes, path: bytes) -> bool:
    """
    Whether the canonical C{path} is C{root} or lies below it, compared by
    whole path components (root C{/srv/x} does not contain C{/srv/xy}).
    """
    return os.path.commonpath([root, path]) == root


def _originPath(request: IRequest) -> bytes:
    """
    The raw (still percent-encoded) path of C{request}, without the query;
    the path of an absolute-form target (C{GET http://h/p HTTP/1.1}).
    """
    path: bytes = request.path
    if not path.startswith(b"/"):
        _, sep, rest = path.partition(b"://")
        slash = rest.find(b"/")
        path = rest[slash:] if sep and slash != -1 else b"/"
    return path


def _segments(path: bytes, consumed: int) -> tuple[list[bytes], bool]:
    """
    Decode the segments of C{path} after the first C{consumed} ones.

    @return: The non-empty decoded segments, and whether the path named a
        directory (ended in C{/}, or consumed everything).
    @raise _NotFound: For a segment that is C{.} or C{..} once decoded, or
        that decodes to something holding C{/}, a backslash or NUL: no
        legitimate client sends those, and refusing them outright leaves
        nothing to normalise.
    """
    raw = path[1:].split(b"/")[consumed:]
    parts = []
    for segment in raw:
        decoded = http.unquote(segment)
        if decoded in (b".", b"..") or any(
            bad in decoded for bad in (b"/", b"\\", b"\x00")
        ):
            raise _NotFound()
        if decoded:
            parts.append(decoded)
    return parts, (not raw or raw[-1] == b"")


class _OneFile(static.File):
    """
    L{static.File} restricted to one regular file opened and checked by
    L{FileHandler}: it serves that open file with the size and time of its
    C{fstat}, so the bytes, C{Content-Length} and validators agree even if
    the path is replaced meanwhile, and every way to a directory is a 404.
    """

    def __init__(
        self,
        path: str,
        name: str,
        opened: IO[bytes],
        info: os.stat_result,
        pages: ErrorPages,
    ) -> None:
        super().__init__(path, defaultType=DEFAULT_TYPE)
        self._opened = opened
        self._info = info
        self.handedOver = False
        self.childNotFound = pages.resource(http.NOT_FOUND)  # type: ignore[assignment]
        self.forbidden = pages.resource(http.FORBIDDEN)  # type: ignore[assignment]
        # The type comes from the name requested (as nginx does), so a link
        # "a.txt -> blob" is text/plain.  No Content-Encoding from an
        # extension: a .gz download is application/gzip, not a body that
        # browsers silently decompress.
        self.contentEncodings = {}
        self.type, self.encoding = static.getTypeAndEncoding(
            name, self.contentTypes, self.contentEncodings, DEFAULT_TYPE
        )

    def openForReading(self) -> IO[bytes]:
        self.handedOver = True
        return self._opened

    def getFileSize(self) -> int:
        return self._info.st_size

    def getModificationTime(self) -> float:
        return self._info.st_mtime

    def getChild(self, path: bytes, request: IRequest) -> Resource:
        return self.childNotFound

    def directoryListing(self) -> Resource:
        return self.childNotFound

    def redirect(self, request: IRequest) -> bytes:
        return self.childNotFound.render(request)

    def makeProducer(
        self, request: IRequest, fileForReading: IO[bytes]
    ) -> static.StaticProducer:
        """
        Let L{static.File} handle C{Range}, with two repairs.

        Ranges that together ask for more than the file, or more than
        L{MAX_RANGES} of them, are ignored and the whole file is sent (as
        nginx does): overlapping ranges would otherwise make one small request
        cost many times the file's size (the "Apache Killer", CVE-2011-3192).
        And a multi-range request with no satisfiable range, on which
        Twisted's producer would raise, gets its empty 416.
        """
        byteRange = request.getHeader(b"range")
        if byteRange is not None and not self._rangesReasonable(byteRange):
            request.requestHeaders.removeHeader(b"range")
        producer: static.StaticProducer = super().makeProducer(request, fileForReading)
        if request.code == http.REQUESTED_RANGE_NOT_SATISFIABLE:  # type: ignore[attr-defined]
            producer = static.SingleRangeStaticProducer(request, fileForReading, 0, 0)
        return producer

    def _rangesReasonable(self, byteRange: bytes) -> bool:
        """
        Whether the C{Range} header asks for at most L{MAX_RANGES} ranges
        adding up to no more than the file.  (A malformed header is left for
        L{static.File}, which ignores it.)
        """
        try:
            ranges = self._parseRangeHeader(byteRange)
        except ValueError:
            return True
        if len(ranges) > MAX_RANGES:
            return False
        total = sum(self._rangeToOffsetAndSize(*each)[1] for each in ranges)
        return total <= self.getFileSize()


class FileHandler(Resource):
    """
    Serve the files below a root directory (the C{file} rule handler).

    The file is the root plus the request's path below what the resource
    tree has consumed (C{request.prepath}): mounted at the top that is
    nginx's C{root}, mounted under C{/static/} it is nginx's C{alias}.

    Decisions worth knowing:
      - Only C{GET} and C{HEAD}; anything else is 405 with C{Allow}.
      - A path with a C{.} or C{..} segment (also percent-encoded), an
        encoded C{/}, a backslash or NUL is 404 even if it would stay inside
        the root; so is anything whose real path (symlinks resolved) is
        outside the root.  Symlinks inside the root that stay inside it are
        followed.
      - A directory is never listed.  C{DIR/} serves C{DIR/index.html} when
        that is a regular file inside the root, else 404; C{DIR} without the
        slash redirects (301) to C{DIR/} when there is such an index, else
        404, so directories without one look like missing files.
      - Missing files, FIFOs, devices, sockets are 404; a file the server
        may not read is 403.
      - C{ETag} is C{"<mtime ns hex>-<size hex>"}.  Preconditions
        (C{If-Match}, C{If-Unmodified-Since}, C{If-None-Match},
        C{If-Modified-Since}, C{If-Range}) are evaluated here in RFC 9110
        13.2.2 order; L{static.File} then handles Range, except that ranges
        adding up to more than the file, or more than L{MAX_RANGES}, get
        the whole file.
      - Unknown extensions are C{application/octet-stream}.

    @ivar root: The document root.
    """

    isLeaf = True

    def __init__(self, root: str, pages: ErrorPages) -> None:
        """
        @param root: The document root.  Its real path is taken per request,
            so a root that is a symlink (C{current -> release-42}) can be
            switched while serving.
        @param pages: The error pages for every error this handler answers.
        """
        super().__init__()
        self.root = root
        self._rootBytes = os.fsencode(root)
        self._pages = pages

    def render(self, request: IRequest) -> bytes | int:
        """
        Serve the file the request names, or an error page.
        """
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return self._pages.render(request, http.NOT_ALLOWED)
        path = _originPath(request)
        try:
            parts, directory = _segments(path, len(request.prepath or ()))
            root = os.path.realpath(self._rootBytes)
            # An internal redirect cannot send the client to DIR/ (a path
            # an internal rule would refuse it): its index is served at once.
            internal = bool(getattr(request, "internal_redirects", 0))
            real, info = self._locate(root, parts, directory, internal)
            opened, info = self._open(real, info)
        except _Redirect:
            location = b"/" + path.lstrip(b"/") + b"/"
            query = request.uri.partition(b"?")[2]
            if query:
                location += b"?" + query
            request.setHeader(b"location", location)
            return self._pages.render(request, http.MOVED_PERMANENTLY)
        except _NotFound as e:
            return self._pages.render(request, e.code)
        name = os.fsdecode(parts[-1] if parts and not directory else INDEX_NAME)
        return self._serve(request, real, name, opened, info)

    def _locate(
        self, root: bytes, parts: list[bytes], directory: bool, internal: bool = False
    ) -> tuple[bytes, os.stat_result]:
        """
        Find the regular file C{parts} names below C{root}.

        @return: Its real path and C{stat}.
        @raise _Redirect: For a directory named without a trailing slash
            that has an index.
        @raise _NotFound: If there is no such file inside the root.
        """
        real, info = _stat(root, os.path.join(root, *parts))
        if stat.S_ISDIR(info.st_mode):
            index, indexInfo = _stat(root, os.path.join(real, INDEX_NAME))
            if not stat.S_ISREG(indexInfo.st_mode):
                raise _NotFound()
            if not directory and not internal:
                raise _Redirect()
            return index, indexInfo
        if directory or not stat.S_ISREG(info.st_mode):
            raise _NotFound()
        return real, info

    def _open(
        self, real: bytes, info: os.stat_result
    ) -> tuple[IO[bytes], os.stat_result]:
        """
        Open the file found by L{_locate}, and make sure what was opened is
        that same regular file (not a symlink or FIFO swapped in since).
        """
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except PermissionError:
            raise _NotFound(http.FORBIDDEN)
        except OSError:
            raise _NotFound()
        opened = os.fdopen(fd, "rb")
        try:
            now = os.fstat(fd)
        except OSError:
            opened.close()
            raise _NotFound()
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (
            info.st_dev,
            info.st_ino,
        ):
            opened.close()
            raise _NotFound()
        return opened, now

    def _serve(
        self,
        request: IRequest,
        real: bytes,
        name: str,
        opened: IO[bytes],
        info: os.stat_result,
    ) -> bytes | int:
        """
        Evaluate the preconditions, then let L{static.File} send the file.
        """
        etag = b'"%x-%x"' % (info.st_mtime_ns, info.st_size)
        modified = math.ceil(info.st_mtime)
        resource = None
        try:
            code = preconditions(request, etag, modified)
            if code == http.PRECONDITION_FAILED:
                return self._pages.render(request, code)
            request.setHeader(b"etag", etag)
            if code == http.NOT_MODIFIED:
                # Answered here rather than by static.File, which would
                # send "Content-Length: 0" (RFC 9110 8.6 forbids that).
                request.setResponseCode(http.NOT_MODIFIED)
                request.setHeader(b"last-modified", http.datetimeToString(modified))
                request.write(b"")
                request.finish()
                return NOT_DONE_YET
            resource = _OneFile(os.fsdecode(real), name, opened, info, self._pages)
            result: bytes | int = resource.render(request)
            return result
        finally:
            # Once handed over, the producer closes the file when done.
            if resource is None or not resource.handedOver:
                opened.close()


def _stat(root: bytes, candidate: bytes) -> tuple[bytes, os.stat_result]:
    """
    Resolve C{candidate} and C{stat} it, if it stays inside C{root}.

    @raise _NotFound: If it resolves outside the root or cannot be
        C{stat}ed (403 when for lack of permission).
    """
    real = os.path.realpath(candidate)
    if not _contained(root, real):
        raise _NotFound()
    try:
        return real, os.stat(real)
    except PermissionError:
        raise _NotFound(http.FORBIDDEN)
    except (OSError, ValueError):
        raise _NotFound()

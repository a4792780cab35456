# -*- test-case-name: tests.test_errorpages -*-
"""
Error pages: the body of every error the proxy itself answers.

All generated errors (no rule, bad request, backend down, file not found, and
backend errors replaced under C{vserver_errors}) go through one L{ErrorPages}
so they look the same, keep their status code, and never leak anything: the
built-in pages name only the status, and an operator's C{NNN.html} page is
sent as written.  Twisted's own error resources echo parts of the request
(CVE-2022-39348 and CVE-2024-41810 came from that), so none are used.
"""

from __future__ import annotations

import os
import stat
from html import escape
from typing import ClassVar

import attrs
from twisted.logger import Logger
from twisted.web.http import RESPONSES
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

__all__ = [
    "ErrorPages",
    "MAX_PAGE_SIZE",
    "reason_phrase",
]

MAX_PAGE_SIZE = 1024 * 1024
"""
The largest operator page sent; a larger one is treated as unreadable.  It
bounds the memory and time one error response can cost.
"""

# Headers describing some other representation (a file or a backend answer
# that is being replaced); left on an error page they would lie about it.
_STALE_HEADERS = (
    b"content-encoding",
    b"content-range",
    b"content-disposition",
    b"content-language",
    b"content-location",
    b"etag",
    b"last-modified",
    b"transfer-encoding",
)


# Phrases newer than Twisted's table (RFC 6585, RFC 7725, RFC 9110).
_MORE_PHRASES = {
    308: b"Permanent Redirect",
    421: b"Misdirected Request",
    422: b"Unprocessable Content",
    428: b"Precondition Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    451: b"Unavailable For Legal Reasons",
    511: b"Network Authentication Required",
}


def reason_phrase(code: int) -> bytes:
    """
    The standard reason phrase of a status code, or nothing for one
    no standard names (empty).
    """
    return RESPONSES.get(code) or _MORE_PHRASES.get(code, b"")


def _checkCode(code: int) -> None:
    """
    Refuse a status that cannot carry an error page.

    @raise ValueError: Unless C{code} is an integer from 300 to 599 other
        than 304 (which has no body).
    """
    if isinstance(code, bool) or not isinstance(code, int):
        raise ValueError(f"status code must be an int, not {code!r}")
    if not 300 <= code <= 599 or code == 304:
        raise ValueError(f"no error page for status {code}")


def _optionalPath(value: str | os.PathLike[str] | None) -> str | None:
    """
    Accept any path-like directory, stored as text.
    """
    if value is None:
        return None
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"error_pages directory must be text, not {path!r}")
    return path


def _builtinPage(code: int) -> bytes:
    """
    The small built-in page for C{code}.

    It names the status code and its standard reason phrase and nothing else,
    so it can never reflect request data or reveal internals.

    @param code: An HTTP status code (300-599).
    @return: A UTF-8 HTML document.
    """
    _checkCode(code)
    reason = reason_phrase(code).decode("ascii", "replace")
    title = escape(f"{code} {reason}".strip())
    return (
        "<!DOCTYPE html>\n"
        "<html>\n"
        f"<head><meta charset=\"utf-8\"><title>{title}</title></head>\n"
        f"<body>\n<h1>{title}</h1>\n</body>\n"
        "</html>\n"
    ).encode("utf-8")


@attrs.frozen
class ErrorPages:
    """
    The error pages of one vserver.

    An operator page is read from disk each time it is needed, not cached:
    error responses are rare next to successful ones, the operating system
    caches the file, and an edited page takes effect at once without a
    reload.

    @ivar directory: A directory of C{NNN.html} pages (UTF-8 HTML), or
        L{None} for the built-in pages only.  A page that is missing falls
        back silently to the built-in one; one that exists but cannot be
        used (unreadable, not a regular file, larger than L{MAX_PAGE_SIZE})
        falls back too, with one warning per status code.
    """

    directory: str | None = attrs.field(default=None, converter=_optionalPath)
    _warned: set[int] = attrs.field(
        factory=set, init=False, eq=False, repr=False
    )

    _log: ClassVar[Logger] = Logger()

    def _warnOnce(self, code: int, path: str, why: str) -> None:
        """
        Log, once per status code, that an operator page was not usable.
        """
        if code in self._warned:
            return
        self._warned.add(code)
        self._log.warn(
            "Error page {path} not used ({why}); sending the built-in page "
            "for status {code} instead",
            path=path,
            why=why,
            code=code,
        )

    def _readPage(self, code: int) -> bytes | None:
        """
        Read the operator's page for C{code}, or L{None} to use the built-in.
        Never raises for a problem with the file.
        """
        assert self.directory is not None
        path = os.path.join(self.directory, f"{code:03d}.html")
        try:
            # O_NONBLOCK: a FIFO put in place of a page must not hang the
            # reactor; it makes no difference to a regular file.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as e:
            self._warnOnce(code, path, e.strerror or str(e))
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self._warnOnce(code, path, "not a regular file")
                return None
            chunks = []
            remaining = MAX_PAGE_SIZE + 1
            while remaining > 0:
                chunk = os.read(fd, remaining)
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            if remaining <= 0:
                self._warnOnce(code, path, f"larger than {MAX_PAGE_SIZE} bytes")
                return None
            return b"".join(chunks)
        except OSError as e:
            self._warnOnce(code, path, e.strerror or str(e))
            return None
        finally:
            os.close(fd)

    def body(self, code: int) -> bytes:
        """
        The page for C{code}: C{DIRECTORY/NNN.html} when it exists and is a
        readable regular file, else the built-in page.

        @param code: An HTTP status code from 300 to 599, other than 304.
        @return: The page as bytes.
        @raise ValueError: If C{code} is not such a status (a programming
            error, never a problem with the page).
        """
        _checkCode(code)
        if self.directory is not None:
            page = self._readPage(code)
            if page is not None:
                return page
        return _builtinPage(code)

    def render(self, request: IRequest, code: int) -> bytes:
        """
        Make C{request}'s response the error page for C{code}.

        Sets the status code, C{Content-Type} and C{Content-Length}, and drops
        headers that described some other representation (C{ETag},
        C{Content-Range}, ...).  Headers the caller set for the error itself,
        such as C{Allow} or C{Location}, are kept.

        @param request: The request being answered.
        @param code: The status to send (300-599 other than 304).
        @return: The body, empty for a C{HEAD} request (whose
            C{Content-Length} still gives the page's length), so a resource
            can C{return pages.render(request, 404)}.
        """
        page = self.body(code)
        request.setResponseCode(code)
        for name in _STALE_HEADERS:
            request.responseHeaders.removeHeader(name)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % (len(page),))
        if request.method == b"HEAD":
            return b""
        return page

    def resource(self, code: int) -> IResource:
        """
        A leaf resource answering every request with the error C{code}.

        @raise ValueError: If C{code} cannot carry an error page.
        """
        _checkCode(code)
        return _ErrorResource(self, code)


class _ErrorResource(Resource):
    """
    A leaf resource that renders one status from an L{ErrorPages}, whatever
    the method or the path below it.
    """

    isLeaf = True

    def __init__(self, pages: ErrorPages, code: int) -> None:
        super().__init__()
        self._pages = pages
        self._code = code

    def render(self, request: IRequest) -> bytes:
        return self._pages.render(request, self._code)

# -*- test-case-name: tests.test_internal -*-
"""
The C{redirect} handler: answer with a fixed status and a C{Location}
built from a template.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource

from ._config import Redirect

__all__ = ["RedirectResource"]


class RedirectResource(Resource):
    """
    Answers every request with C{redirect = STATUS URL}, where C{$path},
    C{$query} and C{$host} in the URL are the request's raw path, raw query
    (with its C{?}, or nothing) and C{Host} value.
    """

    isLeaf = True

    def __init__(self, redirect: Redirect) -> None:
        super().__init__()
        self._status = redirect.status
        self._template = redirect.url.encode("utf-8")

    def location(self, request: Any) -> bytes:
        """
        The C{Location} for this request.
        """
        path, question, query = request.uri.partition(b"?")
        host = request.getHeader(b"host") or b""
        # A '$' inside an expanded value is percent-encoded, so a client
        # cannot smuggle a '$host' into the path and have it expanded.
        out = self._template
        for name, value in ((b"$query", question + query), (b"$path", path), (b"$host", host)):
            out = out.replace(name, value.replace(b"$", b"%24"))
        return out

    def render(self, request: Any) -> bytes:
        location = self.location(request)
        request.setResponseCode(self._status)
        request.setHeader(b"location", location)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        body = b"Redirecting to " + location + b"\n"
        request.setHeader(b"content-length", b"%d" % len(body))
        return b"" if request.method == b"HEAD" else body

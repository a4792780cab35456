# -*- test-case-name: tests.test_files -*-
"""
Conditional requests for the C{file} handler: C{If-Match},
C{If-Unmodified-Since}, C{If-None-Match}, C{If-Modified-Since} and
C{If-Range}, evaluated in the order RFC 9110 §13.2.2 gives.

L{twisted.web.static.File} has its own, partial take on these (it ignores
C{If-Range} and answers a 304 with C{Content-Length: 0}); the handler asks
L{preconditions} first and leaves the request so that L{static.File} only
ever serves the whole file or its ranges.
"""

from __future__ import annotations

import re

from twisted.web import http
from twisted.web.iweb import IRequest

__all__ = ["preconditions"]

_ENTITY_TAG = re.compile(rb'\s*(\*|(W/)?"[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


def _tags(request: IRequest, name: bytes) -> list[bytes] | None:
    """
    The entity-tags of a C{If-Match}/C{If-None-Match} request header.

    @return: L{None} without the header; C{[b"*"]} for C{*}; otherwise the
        tags as sent (C{W/"x"} or C{"x"}).  An unparsable header gives an
        empty list, which matches nothing.
    """
    values = request.requestHeaders.getRawHeaders(name)
    if values is None:
        return None
    text = b",".join(values).strip()
    tags: list[bytes] = []
    pos = 0
    while pos < len(text):
        match = _ENTITY_TAG.match(text, pos)
        if match is None:
            return []
        tags.append(match.group(1))
        pos = match.end()
    return tags


def _date(request: IRequest, name: bytes) -> int | None:
    """
    The HTTP-date in request header C{name} as a POSIX time, or L{None} if it
    is absent or invalid (an invalid date is ignored, RFC 9110 13.1.3).
    """
    value = request.getHeader(name)
    if value is None:
        return None
    try:
        return http.stringToDatetime(value.split(b";", 1)[0].strip())
    except (ValueError, IndexError, OverflowError):
        return None


def preconditions(request: IRequest, etag: bytes, modified: int) -> int | None:
    """
    Evaluate the conditional headers of a C{GET}/C{HEAD} in RFC 9110 13.2.2
    order.

    C{If-Modified-Since} is evaluated here and then removed from the request,
    so L{static.File} never answers a 304 itself (it would send
    C{Content-Length: 0}), and it is ignored when C{If-None-Match} is present.
    A failed C{If-Range} removes C{Range}, so L{static.File} (which ignores
    C{If-Range}) sends the whole file.

    @param etag: The file's (strong) entity-tag.
    @param modified: Its modification time, in whole seconds as sent in
        C{Last-Modified}.
    @return: 412, 304, or L{None} to serve the file.
    """
    headers = request.requestHeaders
    ifMatch = _tags(request, b"if-match")
    if ifMatch is not None:
        if b"*" not in ifMatch and etag not in ifMatch:
            return http.PRECONDITION_FAILED
    else:
        since = _date(request, b"if-unmodified-since")
        if since is not None and modified > since:
            return http.PRECONDITION_FAILED
    ifNoneMatch = _tags(request, b"if-none-match")
    if ifNoneMatch is not None:
        headers.removeHeader(b"if-modified-since")
        weak = [tag[2:] if tag.startswith(b"W/") else tag for tag in ifNoneMatch]
        if b"*" in weak or etag in weak:
            return http.NOT_MODIFIED
    else:
        since = _date(request, b"if-modified-since")
        headers.removeHeader(b"if-modified-since")
        if since is not None and since >= modified:
            return http.NOT_MODIFIED
    ifRange = request.getHeader(b"if-range")
    if ifRange is not None and headers.hasHeader(b"range"):
        ifRange = ifRange.strip()
        if ifRange.startswith((b'"', b"W/")):
            holds = ifRange == etag
        else:
            holds = _date(request, b"if-range") == modified
        if not holds:
            headers.removeHeader(b"range")
    return None

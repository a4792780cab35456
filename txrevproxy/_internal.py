# -*- test-case-name: tests.test_internal -*-
"""
Internal redirects: a backend answers with C{X-Accel-Redirect} or
C{X-Sendfile}, and the proxy serves that path instead, through the same
vserver's rules, as if a client had asked for it with GET.

Both headers work the same way (the seed's promise), and the target can be
any rule: a C{file} rule for static files, or another C{proxy} rule for
generated content.  What Cherokee left out is added (cherokee.md §3,
security.md §3.3): the value must be a clean absolute path, rules can be
made reachable only this way (C{internal = yes}), redirects are counted, and
only a few of the backend's headers survive, as nginx keeps them.
"""

from __future__ import annotations

from io import BytesIO
from collections.abc import Iterable
from typing import Any, Optional
from urllib.parse import parse_qs, unquote_to_bytes

from twisted.python.failure import Failure

__all__ = [
    "KEPT_HEADERS",
    "MAX_REDIRECTS",
    "BadRedirect",
    "TooManyRedirects",
    "dispatch",
    "redirect_value",
    "validate_target",
]

# What nginx keeps of the redirecting response: how to present the content,
# not what the content is.
KEPT_HEADERS = (
    b"content-type",
    b"content-disposition",
    b"set-cookie",
    b"cache-control",
    b"expires",
    b"accept-ranges",
)

MAX_REDIRECTS = 10

_FORBIDDEN = (b"\x00", b"\r", b"\n")


class BadRedirect(ValueError):
    """
    A backend asked for an internal redirect to something that is not a
    clean absolute path.
    """


class TooManyRedirects(Exception):
    """
    One request was redirected internally more than L{MAX_REDIRECTS} times.
    """


def redirect_value(fields: Iterable[tuple[bytes, bytes]]) -> Optional[bytes]:
    """
    The internal redirect a backend response asks for: the first non-empty
    C{X-Accel-Redirect}, else the first non-empty C{X-Sendfile}.
    """
    found: dict[bytes, bytes] = {}
    for name, value in fields:
        if name[:2] in (b"X-", b"x-") and value.strip():
            lower = name.lower()
            if lower in (b"x-accel-redirect", b"x-sendfile"):
                found.setdefault(lower, value.strip())
    return found.get(b"x-accel-redirect") or found.get(b"x-sendfile")


def validate_target(value: bytes) -> bytes:
    """
    Check an internal redirect target and return it.

    @raise BadRedirect: Not an absolute path (C{/...}, not C{//host}), or it
        holds a C{..} segment, a NUL, CR or LF, in the raw or the
        percent-decoded form.
    """
    path = value.partition(b"?")[0]
    if not path.startswith(b"/") or path.startswith(b"//"):
        raise BadRedirect("not an absolute path")
    decoded = unquote_to_bytes(value)
    for form in (value, decoded):
        if any(c in form for c in _FORBIDDEN):
            raise BadRedirect("NUL, CR or LF in the target")
    for segment in unquote_to_bytes(path).replace(b"\\", b"/").split(b"/"):
        if segment == b"..":
            raise BadRedirect("a '..' segment in the target")
    return value


def dispatch(request: Any, target: bytes, kept: list[tuple[bytes, list[bytes]]]) -> None:
    """
    Serve C{target} for C{request}, from the site's root, as a GET (a HEAD
    stays a HEAD) without a body.  The C{kept} headers will replace the
    target's own when the response starts.

    @raise TooManyRedirects: This would be one redirect too many.
    """
    count = getattr(request, "internal_redirects", 0) + 1
    if count > MAX_REDIRECTS:
        raise TooManyRedirects(f"more than {MAX_REDIRECTS} internal redirects")
    request.internal_redirects = count
    if count == 1:
        # The access log tells what the client asked for, not the target.
        request.received = (request.method, request.uri)
    if request.method != b"HEAD":
        request.method = b"GET"
    path, _, query = target.partition(b"?")
    request.uri = target
    request.path = path
    request.args = parse_qs(query, keep_blank_values=True)
    request.content = BytesIO()
    for name in (b"content-length", b"transfer-encoding", b"content-type", b"expect"):
        request.requestHeaders.removeHeader(name)
    request.header_overrides = kept
    request.prepath = []
    request.postpath = [unquote_to_bytes(segment) for segment in path[1:].split(b"/")]
    try:
        request.render(request.site.getResourceFor(request))
    except Exception:
        request.processingFailed(Failure())

# -*- test-case-name: tests.test_validation -*-
"""
The proxy's own check of every request head before anything reaches a backend.

Twisted's HTTP server already refuses much malformed input, but it is not a
hardened front end: it accepts a missing, repeated or nonsensical C{Host},
C{Transfer-Encoding: identity}, chunked bodies on HTTP/1.0, DEL and bytes
0x80-0xB0 in the request target, C{CONNECT}, and C{*} with any method.  A
backend behind us may be more lenient still, so each of those could let two
parsers disagree about where a request ends or whom it is for.
L{validate_head} decides, from the parsed head alone, whether the request may
go on and, if so, what the proxy routes it on.  It is pure: the caller
answers a L{Rejection} with its status and closes the client connection.

Obs-fold (header continuation lines) cannot be seen here, because Twisted
joins folded lines before the head is handed over; refusing them is the
channel's job.  Limits on the size of the request line and the header
section (414, 431) are the channel's job too.
"""

from __future__ import annotations

import functools

import ipaddress
import string
from collections.abc import Iterable, Sequence
from typing import Union

import attrs

__all__ = ["Rejection", "Target", "validate_head"]


def _bytes_of(chars: str) -> bytes:
    return chars.encode("ascii")


# RFC 9110 section 5.6.2: the characters a method or a field name may use.
_TCHAR = _bytes_of(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")

# Request-target bytes: visible ASCII (RFC 9112 section 3.2) except "#",
# since a fragment is never sent and a backend may cut the path there.  The
# stricter URI grammar is not enforced, because real clients send "|", "{",
# '"' and the like unencoded, and nginx and HAProxy let them through.
_TARGET_CHARS = bytes(b for b in range(0x21, 0x7F) if b != ord("#"))

# Field-value bytes refused by RFC 9110 section 5.5: every control byte but
# HTAB, and DEL.  obs-text (0x80 and up) is allowed and kept byte-exact.
_VALUE_FORBIDDEN = bytes([*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F])

# RFC 3986 reg-name (unreserved, sub-delims, "%"), without ",": a comma in
# Host is what two Host values joined into a list look like, no DNS name
# has one, and a backend that splits lists would see another host.
_REG_NAME_CHARS = _bytes_of(string.ascii_letters + string.digits + "-._~!$&'()*+;=%")
_HEXDIGITS = _bytes_of(string.hexdigits)
_IPV6_CHARS = _HEXDIGITS + b":."

_VERSIONS = frozenset({b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2"})
_MAX_CONTENT_LENGTH_DIGITS = 18
_OWS = b" \t"


def _only(data: bytes, allowed: bytes) -> bool:
    """
    Whether every byte of C{data} is in C{allowed}.
    """
    return not data.translate(None, allowed)


def _is_token(data: bytes) -> bool:
    """
    Whether C{data} is a non-empty RFC 9110 token.
    """
    return bool(data) and _only(data, _TCHAR)


def _check_status(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 400 <= value <= 499:
        raise ValueError(f"{attribute.name} must be a 4xx status, not {value!r}")


def _check_host(instance: object, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if value != value.lower():
        raise ValueError(f"{attribute.name} must be lower-case: {value!r}")


def _check_path(instance: object, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if not (value.startswith(b"/") or value == b"*"):
        raise ValueError(f"{attribute.name} must start with '/' or be '*': {value!r}")


@attrs.frozen
class Rejection:
    """
    A request head the proxy refuses; the caller answers C{status} and closes
    the client connection.

    @ivar status: The 4xx status to answer with.
    @ivar reason: Short text for the log, never sent to the client.
    """

    status: int = attrs.field(
        validator=attrs.validators.and_(attrs.validators.instance_of(int), _check_status)
    )
    reason: str = attrs.field(
        validator=attrs.validators.and_(
            attrs.validators.instance_of(str), attrs.validators.min_len(1)
        )
    )


def _names(names: Iterable[bytes]) -> tuple[bytes, ...]:
    return tuple(names)


@attrs.frozen
class Target:
    """
    What the proxy routes on, after validation.

    @ivar host: The effective host, lower-cased, without port or trailing
        dot, from the absolute-form authority if any, else from C{Host}; an
        IPv6 literal keeps its brackets.  C{b""} for HTTP/1.0 without Host.
    @ivar authority: C{host[:port]} as sent (absolute-form authority, else the
        Host header value); C{b""} for HTTP/1.0 without Host.
    @ivar path: The origin-form path as sent, without query; C{b"*"} for
        C{OPTIONS *} (and for an absolute-form C{OPTIONS} with an empty path,
        as RFC 9112 section 3.2.4 asks).
    @ivar query: The raw query without C{?}, or L{None} when there was no C{?}.
    @ivar absolute: Whether the request used absolute-form.
    @ivar dropped: Lower-cased names of the headers that must not be
        forwarded (names containing C{_}, which CGI-style backends cannot tell
        from the C{-} form), each once, in arrival order.
    """

    host: bytes = attrs.field(validator=[attrs.validators.instance_of(bytes), _check_host])
    authority: bytes = attrs.field(validator=attrs.validators.instance_of(bytes))
    path: bytes = attrs.field(validator=[attrs.validators.instance_of(bytes), _check_path])
    query: bytes | None = attrs.field(
        validator=attrs.validators.optional(attrs.validators.instance_of(bytes))
    )
    absolute: bool = attrs.field(validator=attrs.validators.instance_of(bool))
    dropped: tuple[bytes, ...] = attrs.field(
        default=(),
        converter=_names,
        validator=attrs.validators.deep_iterable(attrs.validators.instance_of(bytes)),
    )


def _valid_port(port: bytes) -> bool:
    """
    Whether C{port} is a TCP port number written in 1 to 5 ASCII digits.
    """
    return len(port) <= 5 and port.isdigit() and int(port) <= 0xFFFF


def _valid_reg_name(name: bytes) -> bool:
    """
    Whether C{name} is a non-empty reg-name (see L{_REG_NAME_CHARS}) whose
    every C{%} starts a two-hex-digit escape.
    """
    if not name or not _only(name, _REG_NAME_CHARS):
        return False
    parts = name.split(b"%")
    return all(len(part) >= 2 and _only(part[:2], _HEXDIGITS) for part in parts[1:])


def _valid_ipv6(literal: bytes) -> bool:
    """
    Whether C{literal} (between the brackets) is an IPv6 address.  Zone
    identifiers and IPvFuture mean nothing to a server and are refused.
    """
    if not literal or not _only(literal, _IPV6_CHARS):
        return False
    try:
        ipaddress.IPv6Address(literal.decode("ascii"))
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _authority_host(authority: bytes) -> bytes | None:
    """
    Parse C{host[:port]} as Host and the absolute-form authority must be.
    (Memoised: a site sees few distinct Host values, each on every request.)

    @return: The routing host (lower-cased, no port, no trailing dot), or
        L{None} when C{authority} is not valid, which includes userinfo, an
        empty host and an empty port.
    """
    if authority.startswith(b"["):
        end = authority.find(b"]")
        if end == -1 or not _valid_ipv6(authority[1:end]):
            return None
        host, rest = authority[: end + 1], authority[end + 1 :]
    else:
        host, colon, port = authority.partition(b":")
        rest = colon + port
        if not _valid_reg_name(host):
            return None
        if host.endswith(b"."):
            host = host[:-1]
            if not host:
                return None
    if rest and not (rest.startswith(b":") and _valid_port(rest[1:])):
        return None
    return host.lower()


# (authority, host, path, query); authority and host are None unless the
# target is in absolute-form.
_Parsed = tuple[Union[bytes, None], Union[bytes, None], bytes, Union[bytes, None]]


def _parse_target(method: bytes, target: bytes) -> _Parsed | Rejection:
    """
    Classify and split the request target.

    @return: C{(authority, host, path, query)}, where C{authority} and the
        routing C{host} are L{None} unless the target is in absolute-form; or
        a L{Rejection}.
    """
    if not target:
        return Rejection(400, "empty request target")
    if not _only(target, _TARGET_CHARS):
        return Rejection(400, "forbidden byte in request target")
    if target == b"*":
        if method != b"OPTIONS":
            return Rejection(400, "asterisk-form target without OPTIONS")
        return None, None, b"*", None
    if target.startswith(b"/"):
        path, question, query = target.partition(b"?")
        return None, None, path, (query if question else None)
    scheme, separator, rest = target.partition(b"://")
    if not separator or scheme.lower() not in (b"http", b"https"):
        return Rejection(400, "authority-form or unsupported request target")
    ends = [i for i in (rest.find(b"/"), rest.find(b"?")) if i != -1]
    end = min(ends, default=len(rest))
    authority, remainder = rest[:end], rest[end:]
    host = _authority_host(authority)
    if host is None:
        return Rejection(400, "invalid authority in absolute-form target")
    path, question, query = remainder.partition(b"?")
    if not path:
        path = b"*" if method == b"OPTIONS" and not question else b"/"
    return authority, host, path, (query if question else None)


def _check_framing(
    version: bytes,
    lengths: Sequence[bytes],
    codings: Sequence[bytes],
    max_body_size: int,
) -> Rejection | None:
    """
    Refuse any body framing two parsers could read differently (RFC 9112
    section 6), and a declared body larger than C{max_body_size}.

    Repeated Content-Length lines are refused even when they agree, as RFC
    9110 section 8.6 allows and Twisted does too: no honest client sends them.
    """
    if codings:
        if lengths:
            return Rejection(400, "both Content-Length and Transfer-Encoding")
        if version != b"HTTP/1.1":
            return Rejection(400, "Transfer-Encoding on " + version.decode("ascii"))
        if len(codings) > 1:
            return Rejection(400, "more than one Transfer-Encoding")
        if codings[0].strip(_OWS).lower() != b"chunked":
            return Rejection(400, "Transfer-Encoding other than chunked")
    if len(lengths) > 1:
        return Rejection(400, "more than one Content-Length")
    if lengths:
        length = lengths[0].strip(_OWS)
        if not (0 < len(length) <= _MAX_CONTENT_LENGTH_DIGITS and length.isdigit()):
            return Rejection(400, "malformed Content-Length")
        if max_body_size > 0 and int(length) > max_body_size:
            return Rejection(413, "Content-Length exceeds max_body_size")
    return None


def validate_head(
    method: bytes,
    target: bytes,
    version: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    max_body_size: int = 0,
) -> Target | Rejection:
    """
    Check a parsed request head and find what it is addressed to.

    @param method: The request method as received.
    @param target: The request target as received.
    @param version: C{b"HTTP/1.0"}, C{b"HTTP/1.1"}, or C{b"HTTP/2"} (what
        Twisted's HTTP/2 layer reports); anything else is refused.
    @param headers: Raw C{(name, value)} pairs in arrival order, values
        stripped of surrounding whitespace.  Over HTTP/2, Twisted turns
        C{:authority} into a Host header, so identical repeated Host values
        are accepted there (the h2 library has checked they agree).
    @param max_body_size: The largest Content-Length accepted, or 0 for no
        limit.  A chunked body's size is not known here; the caller must
        count it as it arrives.
    @return: A L{Target} to route on, or a L{Rejection} (400; 405 for
        C{CONNECT}; 413 for a declared body over C{max_body_size}).
    """
    if version not in _VERSIONS:
        return Rejection(400, "unsupported HTTP version")
    if not _is_token(method):
        return Rejection(400, "method is not a token")
    if method == b"CONNECT":
        return Rejection(405, "CONNECT is not supported")
    parsed = _parse_target(method, target)
    if isinstance(parsed, Rejection):
        return parsed
    absolute_authority, absolute_host, path, query = parsed

    hosts: list[bytes] = []
    lengths: list[bytes] = []
    codings: list[bytes] = []
    dropped: dict[bytes, None] = {}
    for name, value in headers:
        if not _is_token(name):
            return Rejection(400, "invalid header name")
        if value.translate(None, _VALUE_FORBIDDEN) != value:
            return Rejection(400, "control byte in header value")
        lowered = name.lower()
        if b"_" in lowered:
            dropped[lowered] = None
        elif lowered == b"host":
            hosts.append(value)
        elif lowered == b"content-length":
            lengths.append(value)
        elif lowered == b"transfer-encoding":
            codings.append(value)

    if version == b"HTTP/2" and len(set(hosts)) == 1:
        hosts = hosts[:1]
    if len(hosts) > 1:
        return Rejection(400, "more than one Host header")
    header_authority = hosts[0] if hosts else b""
    header_host = b""
    if header_authority or version != b"HTTP/1.0":
        if not hosts:
            return Rejection(400, "missing Host header")
        checked = _authority_host(header_authority)
        if checked is None:
            return Rejection(400, "invalid Host header")
        header_host = checked

    rejection = _check_framing(version, lengths, codings, max_body_size)
    if rejection is not None:
        return rejection

    if absolute_authority is None or absolute_host is None:
        return Target(header_host, header_authority, path, query, False, list(dropped))
    return Target(absolute_host, absolute_authority, path, query, True, list(dropped))

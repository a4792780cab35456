# -*- test-case-name: tests.test_framing -*-
"""
Reading a backend's response strictly: its head, and how its body is framed.

A proxy must refuse what a lenient client would guess at (security §1.5):
both C{Content-Length} and C{Transfer-Encoding}, codings other than
C{chunked}, a repeated or malformed length, control bytes in a field, an
unsolicited C{101}, a head without end.  Any of these is a L{BadResponse}:
the proxy answers 502 and drops the connection, never reusing it.

The connection and framing fields are taken out of the head here, together
with the fields C{Connection} names, so nothing hop-by-hop can reach the
client by mistake.
"""

from __future__ import annotations

import functools
import re
from typing import Optional

import attrs

from ._headers import connection_tokens

__all__ = [
    "BadResponse",
    "ChunkedDecoder",
    "Head",
    "MAX_RESPONSE_HEAD",
    "head_end",
    "keepalive_timeout",
    "parse_head",
]

MAX_RESPONSE_HEAD = 65536
_MEMO_LIMIT = 2048
_MEMO_SIZE = 256
_MAX_CHUNK_LINE = 4096

_STATUS = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?\Z")
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# Control bytes but HTAB, CR and LF, and DEL: never in a head (RFC 9110
# §5.5).
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FRAMING_NAMES = rb"(?i:content-length|transfer-encoding|connection|keep-alive)"
_VALUE = rb"[ \t]*((?:[^\r\n]*[^ \t\r\n])?)[ \t]*\r?$"
# The lines of a field section that are "name: value" (a CR only where it
# ends a line), in one pass each: the end-to-end fields, and the framing
# and connection fields.  A line neither finds is malformed.
_END_TO_END = re.compile(rb"(?m)^(?!" + _FRAMING_NAMES + rb":)(" + _TOKEN + rb"):" + _VALUE)
_FRAMING = re.compile(rb"(?m)^(" + _FRAMING_NAMES + rb"):" + _VALUE)
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,16})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?\Z")
_FOLD = re.compile(rb"\r?\n[ \t]+")

# Taken out of every head: the framing and connection fields.
_CONNECTION_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})

# Connection options that name no field.
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive"})

Pairs = list[tuple[bytes, bytes]]


class BadResponse(Exception):
    """
    A backend response whose framing or head is ambiguous or not allowed.
    """


@attrs.frozen
class Head:
    """
    A backend response's head, as the proxy relays it.

    @ivar minor: The HTTP/1 minor version (0 or 1).
    @ivar fields: The end-to-end fields in the order received, names as
        sent; the framing and connection fields are gone.
    @ivar length: The C{Content-Length}, if one was given.
    @ivar chunked: Whether the body is C{chunked}.
    @ivar keep_alive: Whether the backend lets the connection be reused
        after this response, as far as its version and C{Connection} say.
    @ivar idle_limit: The C{timeout=N} of a C{Keep-Alive} field.
    """

    minor: int
    code: int
    phrase: bytes
    fields: tuple[tuple[bytes, bytes], ...]
    length: Optional[int]
    chunked: bool
    keep_alive: bool
    idle_limit: Optional[float]


def head_end(data: bytes | bytearray) -> int:
    """
    Where the head in C{data} ends (the index just past its empty line), or
    -1 when it is not complete yet.  A bare LF ends lines as CRLF does.
    """
    crlf = data.find(b"\n\r\n")
    lf = data.find(b"\n\n", 0, None if crlf < 0 else crlf + 1)
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


def parse_head(block: bytes) -> Head:
    """
    Parse one complete response head (status line, fields, empty line).

    A backend under load sends the same head many times a second (its
    C{Date} changes once a second), and parsing one costs more than
    relaying a small body: heads of up to L{_MEMO_LIMIT} bytes are
    remembered, the last L{_MEMO_SIZE} of them.  A L{Head} is immutable,
    so sharing one is safe; a head that fails is never remembered.

    @raise BadResponse: The head is malformed or its framing ambiguous.
    """
    if len(block) <= _MEMO_LIMIT:
        return _parse_remembered(block)
    return _parse(block)


def _parse(block: bytes) -> Head:
    control = _CONTROL.search(block)
    if control is not None:
        raise BadResponse(f"control byte {control.group()!r} in the response head")
    status_end = block.find(b"\n") + 1
    status = _STATUS.match(block[:status_end].rstrip(b"\r\n"))
    if status is None:
        raise BadResponse(f"bad status line {block[:min(status_end, 100)]!r}")
    minor, code = int(status.group(1)), int(status.group(2))
    section = block[status_end:]
    fields: Pairs = _END_TO_END.findall(section)
    found = _FRAMING.findall(section)
    if len(fields) + len(found) != section.count(b"\n") - 1:
        # Some line is not "name: value".  obs-fold is replaced by a space
        # (RFC 9112 §5.2); anything else is refused.
        if section[:1] in (b" ", b"\t"):
            raise BadResponse("folded line before the first field")
        section = _FOLD.sub(b" ", section)
        fields = _END_TO_END.findall(section)
        found = _FRAMING.findall(section)
        if len(fields) + len(found) != section.count(b"\n") - 1:
            raise BadResponse(f"malformed field section {section[:100]!r}")
    if code == 101:
        # The proxy never asks for an upgrade (Upgrade is stripped).
        raise BadResponse("unsolicited 101 Switching Protocols")
    framing: dict[bytes, list[bytes]] = {}
    for name, value in found:
        framing.setdefault(name.lower(), []).append(value)
    lengths = framing.get(b"content-length", [])
    codings = framing.get(b"transfer-encoding", [])
    if lengths and codings:
        raise BadResponse("both Content-Length and Transfer-Encoding")
    if len(codings) > 1 or (codings and codings[0].lower() != b"chunked"):
        raise BadResponse(f"Transfer-Encoding other than chunked: {codings!r}")
    if len(lengths) > 1 or (lengths and not (lengths[0].isdigit() and lengths[0].isascii())):
        raise BadResponse(f"invalid or repeated Content-Length: {lengths!r}")
    tokens = connection_tokens(framing.get(b"connection", ()))
    named = tokens - _CONNECTION_OPTIONS
    if named:
        fields = [(n, v) for n, v in fields if n.lower() not in named]
    keep_alive = b"close" not in tokens and (minor == 1 or b"keep-alive" in tokens)
    return Head(
        minor,
        code,
        status.group(3) or b"",
        tuple(fields),
        int(lengths[0]) if lengths else None,
        bool(codings),
        keep_alive,
        keepalive_timeout(framing.get(b"keep-alive", ())),
    )


_parse_remembered = functools.lru_cache(maxsize=_MEMO_SIZE)(_parse)


def keepalive_timeout(values: list[bytes] | tuple[bytes, ...]) -> Optional[float]:
    """
    The C{timeout=N} of a backend's C{Keep-Alive} header: how long it keeps
    an idle connection open.
    """
    for value in values:
        for parameter in value.split(b","):
            name, _, number = parameter.strip().partition(b"=")
            if name.strip().lower() == b"timeout" and number.strip().isdigit():
                return float(number.strip())
    return None


class ChunkedDecoder:
    """
    Takes a C{chunked} body apart as it arrives (RFC 9112 §7.1); chunk
    extensions and trailer fields are read and dropped.

    @ivar done: Whether the last chunk and the trailer section are through.
    """

    def __init__(self) -> None:
        self._line = b""
        self._left = 0
        self._state = "size"
        self._trailer = 0
        self.done = False

    def feed(self, data: bytes) -> tuple[list[bytes], bytes]:
        """
        Decode C{data}: the body bytes in it, and what follows the body's
        end in it (empty until L{done}).

        @raise BadResponse: The framing is malformed.
        """
        out: list[bytes] = []
        at, end = 0, len(data)
        while at < end and not self.done:
            state = self._state
            if state == "data":
                take = min(self._left, end - at)
                out.append(data[at : at + take])
                at += take
                self._left -= take
                if not self._left:
                    self._state = "crlf"
                continue
            if state == "crlf":
                # Exactly CRLF ends a chunk's data; anything else is refused
                # as soon as it shows.
                piece = data[at : at + 2 - len(self._line)]
                self._line += piece
                at += len(piece)
                if not b"\r\n".startswith(self._line):
                    raise BadResponse("chunk data not followed by CRLF")
                if len(self._line) == 2:
                    self._line = b""
                    self._state = "size"
                continue
            newline = data.find(b"\n", at)
            stop = end if newline < 0 else newline + 1
            self._line += data[at:stop]
            at = stop
            limit = MAX_RESPONSE_HEAD - self._trailer if state == "trailer" else _MAX_CHUNK_LINE
            if len(self._line) > limit:
                raise BadResponse("chunk size or trailer line too long")
            if newline < 0:
                continue
            line, self._line = self._line, b""
            self._line_received(state, line)
        return out, data[at:] if self.done else b""

    def _line_received(self, state: str, line: bytes) -> None:
        if state == "size":
            size = _CHUNK_SIZE.match(line.rstrip(b"\r\n"))
            if size is None or not line.endswith(b"\r\n"):
                raise BadResponse(f"bad chunk size line {line[:40]!r}")
            self._left = int(size.group(1), 16)
            self._state = "data" if self._left else "trailer"
        else:
            self._trailer += len(line)
            if self._trailer > MAX_RESPONSE_HEAD:
                raise BadResponse("trailer section too large")
            if line in (b"\r\n", b"\n"):
                self.done = True

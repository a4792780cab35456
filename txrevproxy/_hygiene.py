# -*- test-case-name: tests.test_hygiene -*-
"""
Backend response hygiene: a keep-alive pool whose connections refuse
responses a proxy must not relay.

Twisted's client parser is lenient where a proxy must be strict (security
§1.5): with both C{Content-Length} and C{Transfer-Encoding} it silently
picks one; it swallows an unsolicited C{101} and waits for more; it hides
a backend's C{Connection} header, so the fields that header names would
reach the client; and it only sees C{Connection: close} spelt exactly so.
The connections of L{StrictPool} parse with L{StrictParser}, which fails
such a response (the proxy answers 502 and the connection is dropped,
never reused), removes the fields C{Connection} names, and hands the pool
a C{close} it will understand.

This leans on three private names of C{twisted.web} (the pool's
C{_factory}, its factory class, and the protocol's C{_parser}), all in
this one module and covered by its tests, so a Twisted change that moves
them fails loudly here rather than quietly elsewhere.
"""

from __future__ import annotations

import re
from typing import Any, cast

from twisted.web._newclient import HTTP11ClientProtocol, HTTPClientParser
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

from ._headers import connection_tokens

__all__ = ["BadResponse", "StrictParser", "StrictPool", "MAX_RESPONSE_HEAD"]

MAX_RESPONSE_HEAD = 65536

# Control bytes but HTAB, and DEL: never in a field value (RFC 9110 §5.5).
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class BadResponse(Exception):
    """
    A backend response whose framing or head is ambiguous or not allowed.
    """


class StrictParser(HTTPClientParser):
    """
    L{HTTPClientParser}, refusing what a proxy must not pass on.
    """

    _head_size = 0
    protocol: Any = None  # the connection, told about Keep-Alive: timeout

    def lineReceived(self, line: bytes) -> None:
        self._head_size += len(line) + 2
        if self._head_size > MAX_RESPONSE_HEAD:
            raise BadResponse(f"response head larger than {MAX_RESPONSE_HEAD} bytes")
        super().lineReceived(line)

    def headerReceived(self, name: bytes, value: bytes) -> None:
        if _CONTROL.search(value) is not None:
            raise BadResponse(f"control byte in the {name!r} header")
        super().headerReceived(name, value)

    def allHeadersReceived(self) -> None:
        code = self.response.code
        if code == 101:
            # The proxy never asks for an upgrade (Upgrade is stripped).
            raise BadResponse("unsolicited 101 Switching Protocols")
        if 100 <= code < 200:
            self._head_size = 0
            super().allHeadersReceived()  # ignored; the real answer follows
            return
        connection = self.connHeaders
        lengths = connection.getRawHeaders(b"content-length", [])
        codings = connection.getRawHeaders(b"transfer-encoding", [])
        if lengths and codings:
            raise BadResponse("both Content-Length and Transfer-Encoding")
        if len(codings) > 1 or (codings and codings[0].strip().lower() != b"chunked"):
            raise BadResponse(f"Transfer-Encoding other than chunked: {codings!r}")
        if len(lengths) > 1 or (lengths and not lengths[0].strip().isdigit()):
            raise BadResponse(f"invalid or repeated Content-Length: {lengths!r}")
        tokens = connection_tokens(connection.getRawHeaders(b"connection", []))
        for token in tokens - self.CONNECTION_CONTROL_HEADERS:
            self.headers.removeHeader(token)
        if b"close" in tokens:
            # Twisted compares the raw value with b"close" exactly.
            connection.setRawHeaders(b"connection", [b"close"])
        protocol = getattr(self, "protocol", None)
        if protocol is not None:
            protocol.idle_limit = _keepalive_timeout(connection.getRawHeaders(b"keep-alive", []))
        super().allHeadersReceived()


def _keepalive_timeout(values: list[bytes]) -> float | None:
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


class _StrictProtocol(HTTP11ClientProtocol):
    """
    An L{HTTP11ClientProtocol} whose responses are parsed by L{StrictParser}.

    @ivar idle_limit: How long the backend said (C{Keep-Alive: timeout=N})
        it keeps this connection open when idle, if it said.
    @ivar requests_made: How many requests this connection has carried; a
        failure on one that carried some already may just be a stale
        keep-alive connection.
    """

    idle_limit: float | None = None
    requests_made = 0

    def request(self, request: Any) -> Any:
        self.requests_made += 1
        result = super().request(request)
        parser = getattr(self, "_parser", None)
        if type(parser) is HTTPClientParser:
            # The parser is created inside request() and has seen no byte
            # yet; giving it our subclass changes nothing else about it.
            parser.__class__ = StrictParser
            cast(StrictParser, parser).protocol = self
        return result


class _StrictFactory(_HTTP11ClientFactory):
    noisy = False

    def buildProtocol(self, addr: Any) -> HTTP11ClientProtocol:
        return _StrictProtocol(self._quiescentCallback)


class StrictPool(HTTPConnectionPool):
    """
    An L{HTTPConnectionPool} whose connections parse strictly, and which
    lets an idle connection go a second before the backend's advertised
    C{Keep-Alive} timeout, so that the backend's close never races a new
    request on it.
    """

    _factory = _StrictFactory

    def _putConnection(self, key: Any, connection: Any) -> None:
        if self.maxPersistentPerHost == 0:
            # reuse_connections = 0: nothing is kept (Twisted's pool would
            # fail to evict from an empty list).
            connection.transport.loseConnection()
            return
        super()._putConnection(key, connection)
        limit = getattr(connection, "idle_limit", None)
        timer = self._timeouts.get(connection)
        if limit is not None and timer is not None and limit - 1 < self.cachedConnectionTimeout:
            timer.reset(max(limit - 1, limit / 2))

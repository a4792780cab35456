# -*- test-case-name: tests.test_headers -*-
"""
Header processing for both phases of a proxied exchange.

Phase 1 turns the client's headers into the backend request's: hop-by-hop
fields (and those the client's C{Connection} names) go first, then the
proxy's own C{Host} and forwarding fields are set, then the rule's hide and
add lists apply.  Removing before adding is what makes C{Connection:
X-Forwarded-For} unable to delete a field the proxy itself sets.

Phase 2 cleans the backend's response headers the same way.

Everything a rule configures is folded into a L{HeaderPolicy} once, so the
per-request work is a single pass over the headers.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from twisted.web.http_headers import Headers

from ._rules import IPAddress
from ._values import Network, Rewrite, apply_rewrites

__all__ = [
    "HOP_BY_HOP",
    "address_text",
    "HeaderPolicy",
    "Peer",
    "client_address",
    "connection_tokens",
    "headers_of",
    "request_peer",
]

Pairs = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"expect",
        b"http2-settings",
    }
)

_FORWARDED = (b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-ssl")
_FORWARDED_NAMES = tuple(zip(_FORWARDED, (b"X-Forwarded-Host", b"X-Forwarded-Proto", b"X-Forwarded-SSL")))

# Never forwarded from a client: the proxy computes these itself, framing is
# Agent's job, and the X-Sendfile companions are a backend's business only
# (Rack trusted them from clients: rails#41148).
_REQUEST_DROP = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"x-forwarded-for",
    b"x-real-ip",
    b"x-sendfile-type",
    b"x-accel-mapping",
} | set(_FORWARDED)

# Never relayed to a client: framing and the internal-redirect family.
_REPLY_DROP = HOP_BY_HOP | {b"content-length", b"server", b"date"}


def connection_tokens(values: Iterable[bytes]) -> set[bytes]:
    """
    The field names a C{Connection} header lists, lower-cased; the header is
    a comma list (Twisted's own parsing splits on spaces only).
    """
    tokens = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


@attrs.frozen
class Peer:
    """
    Who sent a request, as the forwarding headers need it.

    @ivar address: The immediate peer's IP address, or L{None} when the
        connection is not over IP (a Unix socket).
    @ivar trusted: Whether that peer is one of C{trusted_proxies}.
    @ivar client: The client's address as L{client_address} computes it.
    @ivar tls: Whether the request arrived over TLS.
    @ivar address_text: C{address} as forwarding headers write it.
    @ivar client_text: C{client} as forwarding headers write it.
    """

    address: IPAddress | None
    trusted: bool
    client: IPAddress | None
    tls: bool
    address_text: str = attrs.field(
        default=attrs.Factory(lambda self: address_text(self.address), takes_self=True)
    )
    client_text: str = attrs.field(
        default=attrs.Factory(lambda self: address_text(self.client), takes_self=True)
    )


@functools.lru_cache(maxsize=4096)
def _peer_address(host: str) -> tuple[IPAddress | None, str]:
    # (Memoised by the text the transport gives: parsing an address costs
    # more than relaying a small response's head, and a connection's peer
    # is asked for again on every request.)
    try:
        address = ipaddress.ip_address(host) if host else None
    except ValueError:
        address = None
    return address, address_text(address)


def address_text(address: IPAddress | None) -> str:
    """
    An address as forwarding headers and balancers write it; a client on a
    Unix socket is C{unix:}, as nginx's C{$remote_addr}.
    """
    return "unix:" if address is None else str(address)


def _parse_ip(text: bytes) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip().decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None


def client_address(
    peer: IPAddress | None, forwarded_for: Sequence[bytes], trusted: Sequence[Network]
) -> IPAddress | None:
    """
    The client's address: walking the X-Forwarded-For chain from the right,
    the first address that is not a trusted proxy.  Only a trusted peer's
    chain is believed at all.
    """
    if peer is None or not any(peer in net for net in trusted):
        return peer
    chain = [a for value in forwarded_for for a in value.split(b",") if a.strip()]
    for text in reversed(chain):
        address = _parse_ip(text)
        if address is None:
            return peer
        if not any(address in net for net in trusted):
            return address
    return peer


def request_peer(request: Any, trusted: Sequence[Network]) -> Peer:
    """
    The immediate peer, whether it is trusted, and the client address the
    forwarding headers and C{from} conditions use; worked out once per
    request.
    """
    peer = getattr(request, "_txrevproxy_peer", None)
    if peer is None:
        peer = request._txrevproxy_peer = _peer(request, trusted)
    return peer


def _peer(request: Any, trusted: Sequence[Network]) -> Peer:
    address, text = _peer_address(getattr(request.getClientAddress(), "host", None) or "")
    trusted_peer = address is not None and any(address in net for net in trusted)
    if not trusted_peer:
        return Peer(address, False, address, request.isSecure(), text, text)
    chain = request.requestHeaders.getRawHeaders(b"x-forwarded-for", ())
    client = client_address(address, chain, trusted)
    return Peer(address, True, client, request.isSecure(), text)


def _lower_names(names: Iterable[bytes]) -> frozenset[bytes]:
    return frozenset(name.lower() for name in names)


def headers_of(pairs: Iterable[tuple[bytes, bytes]]) -> Headers:
    """
    A L{Headers} holding C{pairs}, repeated names kept in order.
    """
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name, value)
    return headers


@attrs.frozen
class HeaderPolicy:
    """
    A rule's header settings, prepared for the per-request passes.
    """

    request_hide: frozenset[bytes] = attrs.field(default=frozenset(), converter=_lower_names)
    request_add: tuple[tuple[bytes, bytes], ...] = ()
    reply_hide: frozenset[bytes] = attrs.field(default=frozenset(), converter=_lower_names)
    reply_add: tuple[tuple[bytes, bytes], ...] = ()
    reply_rewrite: tuple[Rewrite, ...] = ()
    preserve_server: bool = False
    _request_drop: frozenset[bytes] = attrs.field(init=False)
    _reply_drop: frozenset[bytes] = attrs.field(init=False)
    _request_replaced: frozenset[bytes] = attrs.field(init=False)
    _own_server: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        added = frozenset(name.lower() for name, _ in self.request_add)
        object.__setattr__(self, "_request_replaced", self.request_hide | added)
        object.__setattr__(self, "_request_drop", _REQUEST_DROP | self.request_hide | added)
        reply_added = {name.lower() for name, _ in self.reply_add}
        object.__setattr__(self, "_own_server", b"server" not in self.reply_hide | reply_added)
        drop = _REPLY_DROP | self.reply_hide | reply_added
        if self.preserve_server and b"server" not in self.reply_hide | reply_added:
            drop = drop - {b"server"}
        object.__setattr__(self, "_reply_drop", drop)

    def request_headers(
        self,
        raw: Iterable[tuple[bytes, Sequence[bytes]]],
        host: bytes,
        client_host: bytes,
        peer: Peer,
    ) -> Pairs:
        """
        Build the backend request's headers.

        @param raw: The client's headers as Twisted groups them: each name
            (any case) with all its values in order.
        @param host: The C{Host} to send.
        @param client_host: The client's own C{Host} (or absolute-form
            authority), for X-Forwarded-Host.
        @param peer: The immediate peer.
        """
        grouped = [(name, name.lower(), values) for name, values in raw]
        drop = self._request_drop
        for _, lower, values in grouped:
            if lower == b"connection":
                drop = drop | connection_tokens(values)
                break
        out: Pairs = [(b"Host", host)]
        chain: list[bytes] = []
        kept: dict[bytes, Sequence[bytes]] = {}
        for name, lower, values in grouped:
            if lower in drop:
                if peer.trusted:
                    if lower == b"x-forwarded-for":
                        chain.extend(values)
                    elif lower in _FORWARDED:
                        kept[lower] = values
                continue
            for value in values:
                out.append((name, value))
        address = peer.address_text.encode("ascii")
        out.append((b"X-Forwarded-For", b", ".join(chain + [address]) if chain else address))
        out.append((b"X-Real-IP", peer.client_text.encode("ascii")))
        defaults = (client_host, b"https" if peer.tls else b"http", b"on" if peer.tls else b"off")
        for (lower, name), default in zip(_FORWARDED_NAMES, defaults):
            # (An HTTP/1.0 request may have no Host: nothing to forward.)
            for value in kept.get(lower, (default,)):
                if value:
                    out.append((name, value))
        if self._request_replaced:
            # Hide and add apply last: they can remove or replace the
            # proxy's own Host and forwarding headers too.
            out = [(n, v) for n, v in out if n.lower() not in self._request_replaced]
        out.extend(self.request_add)
        return out

    def reply_headers(self, raw: Iterable[tuple[bytes, bytes]], server_tokens: bytes) -> Pairs:
        """
        Build the client response's headers from the backend's.

        @param raw: The backend's fields in order; the framing and
            connection fields were taken out when its head was read.
        @param server_tokens: Our C{Server} value, used unless the rule
            preserves the backend's.
        """
        drop = self._reply_drop
        out: Pairs = []
        has_server = False
        rewrite = self.reply_rewrite
        for name, value in raw:
            lower = name.lower()
            if lower in drop or lower.startswith((b"x-accel-", b"x-sendfile")):
                continue
            has_server = has_server or lower == b"server"
            if rewrite and lower in (b"location", b"content-location"):
                value = apply_rewrites(rewrite, value)
            out.append((name, value))
        if not has_server and self._own_server:
            out.append((b"Server", server_tokens))
        out.extend(self.reply_add)
        return out

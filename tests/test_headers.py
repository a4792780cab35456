# -*- test-case-name: tests.test_headers -*-
"""
Tests for L{txrevproxy._headers}: the header passes of both phases, as pure
functions over lists of headers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from twisted.trial.unittest import SynchronousTestCase

from txrevproxy._headers import (
    HOP_BY_HOP,
    HeaderPolicy,
    Peer,
    client_address,
    connection_tokens,
)
from txrevproxy._values import parse_header_pairs, parse_networks, parse_rewrites

TRUSTED = parse_networks("127.0.0.0/8 10.0.0.0/8 ::1")


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def peer(
    address: str = "192.0.2.10", chain: Sequence[bytes] = (), tls: bool = False
) -> Peer:
    """
    The L{Peer} the proxy computes for a connection from C{address} that
    sent the C{X-Forwarded-For} values C{chain}.
    """
    addr = ip(address)
    trusted = any(addr in net for net in TRUSTED)
    return Peer(addr, trusted, client_address(addr, chain, TRUSTED), tls)


def grouped(*pairs: tuple[bytes, bytes]) -> list[tuple[bytes, list[bytes]]]:
    """
    Headers as Twisted's L{Headers.getAllRawHeaders} gives them: each name
    once, in order of first appearance, with its values in order.
    """
    out: dict[bytes, list[bytes]] = {}
    for name, value in pairs:
        out.setdefault(name, []).append(value)
    return list(out.items())


def values(pairs: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in pairs if n.lower() == name.lower()]


def names(pairs: Sequence[tuple[bytes, bytes]]) -> set[bytes]:
    return {n.lower() for n, _ in pairs}


class ConnectionTokensTests(SynchronousTestCase):
    """
    L{connection_tokens} reads the comma list of C{Connection}.
    """

    def test_commaList(self) -> None:
        self.assertEqual(
            connection_tokens([b"Keep-Alive, X-One ,x-TWO", b"close", b" , "]),
            {b"keep-alive", b"x-one", b"x-two", b"close"},
        )

    def test_empty(self) -> None:
        self.assertEqual(connection_tokens([]), set())


class RequestHeadersTests(SynchronousTestCase):
    """
    L{HeaderPolicy.request_headers}: Phase 1.
    """

    def build(
        self,
        *pairs: tuple[bytes, bytes],
        policy: HeaderPolicy | None = None,
        who: Peer | None = None,
        host: bytes = b"backend:8080",
        client_host: bytes = b"client.example",
    ) -> list[tuple[bytes, bytes]]:
        policy = policy or HeaderPolicy()
        return policy.request_headers(grouped(*pairs), host, client_host, who or peer())

    def test_hostFirstAndOnly(self) -> None:
        """
        The given C{Host} is sent once, first; the client's is dropped.
        """
        out = self.build((b"Host", b"client.example"), (b"Accept", b"*/*"))
        self.assertEqual(out[0], (b"Host", b"backend:8080"))
        self.assertEqual(values(out, b"host"), [b"backend:8080"])

    def test_hopByHopRemoved(self) -> None:
        """
        Every hop-by-hop header and every header C{Connection} names goes.
        """
        out = self.build(
            (b"Connection", b"keep-alive, X-Hop"),
            (b"Connection", b"x-other"),
            (b"Keep-Alive", b"300"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"TE", b"trailers"),
            (b"Trailer", b"X-Sum"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Upgrade", b"websocket"),
            (b"Proxy-Authorization", b"Basic eA=="),
            (b"Expect", b"100-continue"),
            (b"HTTP2-Settings", b"AAA"),
            (b"X-Hop", b"1"),
            (b"X-Other", b"2"),
            (b"Content-Length", b"5"),
            (b"X-End", b"kept"),
        )
        self.assertEqual(
            names(out) & (HOP_BY_HOP | {b"x-hop", b"x-other", b"content-length"}), set()
        )
        self.assertEqual(values(out, b"x-end"), [b"kept"])

    def test_connectionCannotRemoveForwarding(self) -> None:
        """
        C{Connection} tokens never remove a header the proxy sets.
        """
        out = self.build(
            (
                b"Connection",
                (
                    b"X-Forwarded-For, X-Real-IP, X-Forwarded-Host, Host, "
                    b"X-Forwarded-Proto, X-Forwarded-SSL"
                ),
            ),
        )
        self.assertEqual(values(out, b"x-forwarded-for"), [b"192.0.2.10"])
        self.assertEqual(values(out, b"x-real-ip"), [b"192.0.2.10"])
        self.assertEqual(values(out, b"x-forwarded-host"), [b"client.example"])
        self.assertEqual(values(out, b"x-forwarded-proto"), [b"http"])
        self.assertEqual(values(out, b"x-forwarded-ssl"), [b"off"])
        self.assertEqual(values(out, b"host"), [b"backend:8080"])

    def test_untrustedReplaced(self) -> None:
        """
        From an untrusted peer, client-sent forwarding headers are replaced.
        """
        out = self.build(
            (b"X-Forwarded-For", b"1.1.1.1"),
            (b"X-Forwarded-For", b"2.2.2.2"),
            (b"X-Real-IP", b"1.1.1.1"),
            (b"X-Forwarded-Host", b"evil"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-SSL", b"on"),
            who=peer("192.0.2.10", [b"1.1.1.1", b"2.2.2.2"]),
        )
        self.assertEqual(values(out, b"x-forwarded-for"), [b"192.0.2.10"])
        self.assertEqual(values(out, b"x-real-ip"), [b"192.0.2.10"])
        self.assertEqual(values(out, b"x-forwarded-host"), [b"client.example"])
        self.assertEqual(values(out, b"x-forwarded-proto"), [b"http"])
        self.assertEqual(values(out, b"x-forwarded-ssl"), [b"off"])

    def test_trustedAppended(self) -> None:
        """
        From a trusted peer the chain is kept, the peer appended, and the
        forwarded host, proto and SSL kept.
        """
        chain = [b"203.0.113.5, 10.1.1.1", b"10.2.2.2"]
        out = self.build(
            (b"X-Forwarded-For", chain[0]),
            (b"X-Forwarded-For", chain[1]),
            (b"X-Forwarded-Host", b"public.example"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-SSL", b"on"),
            who=peer("127.0.0.1", chain),
        )
        self.assertEqual(
            b", ".join(values(out, b"x-forwarded-for")),
            b"203.0.113.5, 10.1.1.1, 10.2.2.2, 127.0.0.1",
        )
        self.assertEqual(values(out, b"x-real-ip"), [b"203.0.113.5"])
        self.assertEqual(values(out, b"x-forwarded-host"), [b"public.example"])
        self.assertEqual(values(out, b"x-forwarded-proto"), [b"https"])
        self.assertEqual(values(out, b"x-forwarded-ssl"), [b"on"])

    def test_tls(self) -> None:
        """
        Over TLS the proto is C{https} and SSL C{on}.
        """
        out = self.build(who=peer(tls=True))
        self.assertEqual(values(out, b"x-forwarded-proto"), [b"https"])
        self.assertEqual(values(out, b"x-forwarded-ssl"), [b"on"])

    def test_repeatedKeptInOrder(self) -> None:
        out = self.build((b"Cookie", b"a=1"), (b"Accept", b"*/*"), (b"Cookie", b"b=2"))
        self.assertEqual(values(out, b"cookie"), [b"a=1", b"b=2"])

    def test_sendfileCompanionsDropped(self) -> None:
        out = self.build(
            (b"X-Sendfile-Type", b"X-Sendfile"), (b"X-Accel-Mapping", b"/=/")
        )
        self.assertEqual(names(out) & {b"x-sendfile-type", b"x-accel-mapping"}, set())

    def test_hide(self) -> None:
        """
        C{request_hide_headers} removes client headers, every copy.
        """
        policy = HeaderPolicy(request_hide=frozenset({b"cookie", b"x-secret"}))
        out = self.build(
            (b"Cookie", b"a"),
            (b"X-Secret", b"1"),
            (b"X-Secret", b"2"),
            (b"X-Ok", b"1"),
            policy=policy,
        )
        self.assertEqual(names(out) & {b"cookie", b"x-secret"}, set())
        self.assertEqual(values(out, b"x-ok"), [b"1"])

    def test_hideForwarding(self) -> None:
        """
        C{request_hide_headers} applies after the forwarding headers are
        set: every one of them can be hidden.
        """
        hidden = frozenset(
            {b"x-forwarded-for", b"x-real-ip", b"x-forwarded-host", b"x-forwarded-ssl"}
        )
        out = self.build(policy=HeaderPolicy(request_hide=hidden))
        self.assertEqual(names(out) & hidden, set())
        self.assertEqual(values(out, b"x-forwarded-proto"), [b"http"])

    def test_addReplaces(self) -> None:
        """
        C{request_add_headers} sets a header, replacing the client's copies.
        """
        policy = HeaderPolicy(request_add=parse_header_pairs("X-Env: prod\nX-New: 1"))
        out = self.build((b"X-Env", b"dev"), (b"x-env", b"test"), policy=policy)
        self.assertEqual(values(out, b"x-env"), [b"prod"])
        self.assertEqual(values(out, b"x-new"), [b"1"])

    def test_addReplacesForwarding(self) -> None:
        """
        C{request_add_headers} replaces a forwarding header the proxy set.
        """
        policy = HeaderPolicy(
            request_add=parse_header_pairs(
                "X-Forwarded-Proto: https\nX-Real-IP: 192.0.2.1\nX-Forwarded-For: 192.0.2.1"
            )
        )
        out = self.build(policy=policy)
        self.assertEqual(values(out, b"x-forwarded-proto"), [b"https"])
        self.assertEqual(values(out, b"x-real-ip"), [b"192.0.2.1"])
        self.assertEqual(values(out, b"x-forwarded-for"), [b"192.0.2.1"])


class ReplyHeadersTests(SynchronousTestCase):
    """
    L{HeaderPolicy.reply_headers}: Phase 2.
    """

    def build(
        self, *pairs: tuple[bytes, bytes], policy: HeaderPolicy | None = None
    ) -> list[tuple[bytes, bytes]]:
        return (policy or HeaderPolicy()).reply_headers(list(pairs), b"txrevproxy")

    def test_hopByHopAndInternalRemoved(self) -> None:
        out = self.build(
            (b"Connection", b"close"),
            (b"Keep-Alive", b"5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Proxy-Authenticate", b"Basic"),
            (b"Trailer", b"X"),
            (b"Upgrade", b"h2c"),
            (b"X-Sendfile", b"/etc/passwd"),
            (b"X-Accel-Redirect", b"/in"),
            (b"X-Accel-Buffering", b"no"),
            (b"X-Sendfile-Type", b"X"),
            (b"X-End", b"kept"),
        )
        self.assertEqual(
            names(out),
            {b"x-end", b"server"},
        )

    def test_serverReplaced(self) -> None:
        out = self.build((b"Server", b"Backend/1"))
        self.assertEqual(values(out, b"server"), [b"txrevproxy"])

    def test_serverAddedWhenMissing(self) -> None:
        self.assertEqual(values(self.build(), b"server"), [b"txrevproxy"])

    def test_preserveServer(self) -> None:
        out = self.build(
            (b"Server", b"Backend/1"), policy=HeaderPolicy(preserve_server=True)
        )
        self.assertEqual(values(out, b"server"), [b"Backend/1"])

    def test_preserveServerWithoutOne(self) -> None:
        """
        With C{preserve_server} and no backend C{Server}, ours is sent.
        """
        out = self.build(policy=HeaderPolicy(preserve_server=True))
        self.assertEqual(values(out, b"server"), [b"txrevproxy"])

    def test_hideServer(self) -> None:
        out = self.build(
            (b"Server", b"B"), policy=HeaderPolicy(reply_hide=frozenset({b"server"}))
        )
        self.assertEqual(values(out, b"server"), [])

    def test_rewrite(self) -> None:
        """
        C{reply_rewrite} changes C{Location} and C{Content-Location} only.
        """
        policy = HeaderPolicy(
            reply_rewrite=parse_rewrites("^http://in:81/(.*) https://out/$1")
        )
        out = self.build(
            (b"Location", b"http://in:81/a?b"),
            (b"Content-Location", b"http://in:81/c"),
            (b"Link", b"http://in:81/d"),
            (b"Refresh", b"0; url=http://in:81/e"),
            policy=policy,
        )
        self.assertEqual(values(out, b"location"), [b"https://out/a?b"])
        self.assertEqual(values(out, b"content-location"), [b"https://out/c"])
        self.assertEqual(values(out, b"link"), [b"http://in:81/d"])
        self.assertEqual(values(out, b"refresh"), [b"0; url=http://in:81/e"])

    def test_rewriteNoMatch(self) -> None:
        policy = HeaderPolicy(reply_rewrite=parse_rewrites("^http://in/ /"))
        out = self.build((b"Location", b"https://elsewhere/"), policy=policy)
        self.assertEqual(values(out, b"location"), [b"https://elsewhere/"])

    def test_hideAndAdd(self) -> None:
        """
        C{reply_hide_headers} removes; C{reply_add_headers} sets, replacing
        the backend's copies.
        """
        policy = HeaderPolicy(
            reply_hide=frozenset({b"x-powered-by"}),
            reply_add=parse_header_pairs("X-Frame-Options: DENY"),
        )
        out = self.build(
            (b"X-Powered-By", b"PHP"),
            (b"X-Frame-Options", b"ALLOW"),
            (b"x-frame-options", b"SAMEORIGIN"),
            policy=policy,
        )
        self.assertEqual(values(out, b"x-powered-by"), [])
        self.assertEqual(values(out, b"x-frame-options"), [b"DENY"])

    def test_setCookieOrder(self) -> None:
        cookies = [b"a=1", b"b=2; Expires=Wed, 21 Oct 2026 07:28:00 GMT", b"c=3"]
        out = self.build(*[(b"Set-Cookie", c) for c in cookies])
        self.assertEqual(values(out, b"set-cookie"), cookies)

    def test_framingAndDateLeftToTheServer(self) -> None:
        """
        C{Content-Length} and C{Date} are the client connection's business,
        not copied from the backend.
        """
        out = self.build((b"Content-Length", b"5"), (b"Date", b"yesterday"))
        self.assertEqual(names(out) & {b"content-length", b"date"}, set())


class ClientAddressTests(SynchronousTestCase):
    """
    L{client_address}: the right-most address of the chain that is not a
    trusted proxy, believed only from a trusted peer.
    """

    def test_untrustedPeer(self) -> None:
        self.assertEqual(
            client_address(ip("192.0.2.1"), [b"1.2.3.4"], TRUSTED), ip("192.0.2.1")
        )

    def test_trustedPeerNoChain(self) -> None:
        self.assertEqual(client_address(ip("127.0.0.1"), [], TRUSTED), ip("127.0.0.1"))

    def test_rightMostUntrusted(self) -> None:
        self.assertEqual(
            client_address(
                ip("127.0.0.1"), [b"198.51.100.1, 203.0.113.9", b"10.0.0.5 "], TRUSTED
            ),
            ip("203.0.113.9"),
        )

    def test_spoofedLeftIgnored(self) -> None:
        """
        What a client puts at the left of the chain does not matter once an
        untrusted address is found to its right.
        """
        self.assertEqual(
            client_address(ip("127.0.0.1"), [b"10.9.9.9, 203.0.113.9"], TRUSTED),
            ip("203.0.113.9"),
        )

    def test_garbageStopsTheWalk(self) -> None:
        """
        An entry that is not an address is not walked past.
        """
        self.assertEqual(
            client_address(ip("127.0.0.1"), [b"203.0.113.9, garbage"], TRUSTED),
            ip("127.0.0.1"),
        )
        self.assertEqual(
            client_address(ip("127.0.0.1"), [b"garbage, 203.0.113.9"], TRUSTED),
            ip("203.0.113.9"),
        )

    def test_ipv6(self) -> None:
        self.assertEqual(
            client_address(ip("::1"), [b" 2001:db8::7 "], TRUSTED), ip("2001:db8::7")
        )

    def test_noPeer(self) -> None:
        """
        A Unix-socket peer has no address, and none is made up.
        """
        self.assertIsNone(client_address(None, [b"1.2.3.4"], TRUSTED))

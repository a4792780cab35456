# -*- test-case-name: tests.test_proxy_wire -*-
"""
The proxy's behaviour on the wire (SPEC §3), with real sockets.

A proxy runs in-process on 127.0.0.1 in front of a L{CaptureBackend}, which
records the exact bytes it receives; clients send raw bytes and parse the
exact framing they get back.  Phase 1 is checked at the backend, Phase 2 at
the client; then streaming with backpressure, the keep-alive pool and the
errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from tests.helpers import (
    CapturedRequest,
    Reply,
    Response,
    connectClient,
    exchange,
    freePort,
    parseResponses,
    poll,
    proxyConfig,
    socketExchange,
    startBackend,
    startProxy,
    streamBody,
    wait,
)
from txrevproxy import ProxySettings, SourceConfig


def get(
    target: bytes, *headers: bytes, version: bytes = b"HTTP/1.1", method: bytes = b"GET"
) -> bytes:
    """
    A request head with C{Host: client.example} and the given header lines.
    """
    lines = [method + b" " + target + b" " + version, b"Host: client.example", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@implementer(IAgentEndpointFactory)
class _OneEndpoint:
    """
    Sends every URI to one endpoint, whatever host it names.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self.endpoint = endpoint

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return self.endpoint


class _WireCase(TestCase):
    """
    A proxy in front of one capture backend, started per test.
    """

    timeout = 10

    async def proxied(
        self,
        request: bytes,
        reply: Any = None,
        rule: Mapping[str, str] = {},
        server: Mapping[str, str] = {},
        head: bool = False,
    ) -> tuple[CapturedRequest, Response]:
        """
        Send one request through a fresh proxy; return what the backend
        received and what the client got.
        """
        backend = startBackend(self, Reply(body=b"ok") if reply is None else reply)
        proxy = await startProxy(self, proxyConfig([backend.port], rule, server))
        [response] = await exchange(self, proxy.port, request, head=head)
        self.assertTrue(backend.requests, "nothing reached the backend")
        return backend.requests[0], response


class RequestLineTests(_WireCase):
    """
    Phase 1: method, path and query are forwarded byte-exact, as HTTP/1.1.
    """

    async def test_targetByteExact(self) -> None:
        """
        Odd but valid targets reach the backend unchanged: encoded slashes,
        path parameters, double slashes, plus signs, encoded query bytes.
        """
        targets = [
            b"/a%2Fb/c",
            b"/a;p=1/b;q",
            b"//double//slash/",
            b"/x+y?q=a+b&r=%2F&s=%20",
            b"/%7Euser/%E2%82%AC?x=%00y",
            b"/p?a=1&a=2&b",
            b"/search?q=a/b?c",
            b"/",
        ]
        backend = startBackend(self)
        proxy = await startProxy(self, proxyConfig([backend.port]))
        client = await connectClient(self, proxy.port)
        client.send(b"".join(get(t) for t in targets), len(targets))
        responses = await client.responses(len(targets))
        self.assertEqual([r.status for r in responses], [200] * len(targets))
        self.assertEqual([r.target for r in backend.requests], targets)

    async def test_emptyQueryKept(self) -> None:
        """
        A target ending in a bare C{?} keeps it: byte-exact means the
        backend may tell C{/p?} from C{/p}.
        """
        received, _ = await self.proxied(get(b"/p?"))
        self.assertEqual(received.target, b"/p?")

    async def test_methodByteExact(self) -> None:
        """
        Any method token is forwarded as sent.
        """
        for method in (b"PATCH", b"OPTIONS", b"PURGE", b"DELETE"):
            received, response = await self.proxied(get(b"/m", method=method))
            self.assertEqual(received.method, method)
            self.assertEqual(response.status, 200)

    async def test_http10ClientGetsHTTP11Backend(self) -> None:
        """
        An HTTP/1.0 client's request is sent to the backend as HTTP/1.1.
        """
        received, response = await self.proxied(
            b"GET /old HTTP/1.0\r\nHost: client.example\r\n\r\n"
        )
        self.assertEqual(received.head.split(b"\r\n")[0], b"GET /old HTTP/1.1")
        self.assertEqual(response.version, b"HTTP/1.0")
        self.assertEqual(response.body, b"ok")

    async def test_http10ClientWithoutHost(self) -> None:
        """
        An HTTP/1.0 request without C{Host} still reaches the backend, with
        the source's C{Host}.
        """
        backend = startBackend(self)
        proxy = await startProxy(self, proxyConfig([backend.port]))
        [response] = await exchange(self, proxy.port, b"GET /h HTTP/1.0\r\n\r\n")
        self.assertEqual(response.status, 200)
        self.assertEqual(
            backend.requests[0].header(b"host"), [b"127.0.0.1:%d" % backend.port]
        )

    async def test_absoluteForm(self) -> None:
        """
        An absolute-form target is forwarded in origin form; its authority
        is the client's host.
        """
        received, response = await self.proxied(
            b"GET http://abs.example/p/q?x=1 HTTP/1.1\r\nHost: abs.example\r\n\r\n"
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(received.target, b"/p/q?x=1")
        self.assertEqual(received.header(b"x-forwarded-host"), [b"abs.example"])

    async def test_requestRewrite(self) -> None:
        """
        C{request_rewrite} rewrites the path plus query with C{$1} groups;
        the first matching line wins, a target no line matches is kept.
        """
        backend = startBackend(self)
        rule = {
            "request_rewrite": "^/old/(.*)$ /new/$1\n^/old /never\n^/v1/([a-z]+) /api/$1/v1"
        }
        proxy = await startProxy(self, proxyConfig([backend.port], rule))
        client = await connectClient(self, proxy.port)
        client.send(get(b"/old/a%2Fb?x=1") + get(b"/v1/users?y") + get(b"/other"), 3)
        await client.responses(3)
        self.assertEqual(
            [r.target for r in backend.requests],
            [b"/new/a%2Fb?x=1", b"/api/users/v1?y", b"/other"],
        )

    async def test_stripDirectory(self) -> None:
        """
        With C{strip_directory = yes} a C{directory} rule's prefix is removed
        before forwarding.
        """
        backend = startBackend(self)
        rule = {"match": "directory /app", "strip_directory": "yes"}
        proxy = await startProxy(self, proxyConfig([backend.port], rule))
        client = await connectClient(self, proxy.port)
        targets = [b"/app/x", b"/app/x/y?q=1", b"/app", b"/app/", b"/app/a%2Fb;p"]
        client.send(b"".join(get(t) for t in targets), len(targets))
        await client.responses(len(targets))
        self.assertEqual(
            [r.target for r in backend.requests],
            [b"/x", b"/x/y?q=1", b"/", b"/", b"/a%2Fb;p"],
        )

    async def test_directoryKeptWithoutStrip(self) -> None:
        """
        Without C{strip_directory} the prefix is forwarded.
        """
        received, _ = await self.proxied(
            get(b"/app/x?q=1"), rule={"match": "directory /app"}
        )
        self.assertEqual(received.target, b"/app/x?q=1")


class RequestHeaderTests(_WireCase):
    """
    Phase 1: the headers the backend receives.
    """

    async def test_hopByHopRemoved(self) -> None:
        """
        Hop-by-hop headers and every header C{Connection} names (a comma
        list in any case, over several lines) do not reach the backend;
        end-to-end headers do.
        """
        received, _ = await self.proxied(
            get(
                b"/",
                b"Connection: keep-alive, X-Hop-One ,x-hop-TWO",
                b"Connection: X-Hop-Three",
                b"Keep-Alive: timeout=5",
                b"Proxy-Connection: keep-alive",
                b"TE: trailers",
                b"Trailer: X-Checksum",
                b"Upgrade: websocket",
                b"Proxy-Authorization: Basic Zm9vOmJhcg==",
                b"HTTP2-Settings: AAMAAABkAAQAAP__",
                b"X-Hop-One: 1",
                b"X-HOP-two: 2",
                b"X-Hop-Three: 3",
                b"X-End-To-End: kept",
            )
        )
        forbidden = {
            b"connection",
            b"keep-alive",
            b"proxy-connection",
            b"te",
            b"trailer",
            b"upgrade",
            b"proxy-authorization",
            b"http2-settings",
            b"x-hop-one",
            b"x-hop-two",
            b"x-hop-three",
            b"transfer-encoding",
            b"expect",
        }
        self.assertEqual(forbidden & set(received.names()), set())
        self.assertEqual(received.header(b"x-end-to-end"), [b"kept"])

    async def test_connectionCannotRemoveProxyHeaders(self) -> None:
        """
        A C{Connection} token naming a header the proxy sets does not remove
        it: C{Connection: X-Forwarded-For} cannot hide the client address.
        """
        received, _ = await self.proxied(
            get(
                b"/",
                b"Connection: X-Forwarded-For, X-Real-IP, Host, X-Forwarded-Host, "
                b"X-Forwarded-Proto, X-Forwarded-SSL",
            )
        )
        self.assertEqual(received.header(b"x-forwarded-for"), [b"127.0.0.1"])
        self.assertEqual(received.header(b"x-real-ip"), [b"127.0.0.1"])
        self.assertEqual(len(received.header(b"host")), 1)
        self.assertEqual(received.header(b"x-forwarded-host"), [b"client.example"])
        self.assertEqual(received.header(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(received.header(b"x-forwarded-ssl"), [b"off"])

    async def test_hostIsSource(self) -> None:
        """
        The backend gets one C{Host}: the source's C{host:port}.
        """
        backend = startBackend(self)
        proxy = await startProxy(self, proxyConfig([backend.port]))
        await exchange(self, proxy.port, get(b"/"))
        self.assertEqual(
            backend.requests[0].header(b"host"), [b"127.0.0.1:%d" % backend.port]
        )
        self.assertEqual(backend.requests[0].names()[0], b"host")

    async def test_hostDefaultPortOmitted(self) -> None:
        """
        A source on the scheme's default port gets C{Host} without the port.
        The agent is injected, so the source's name and port need not be
        where the capture backend really listens.
        """
        backend = startBackend(self)
        pools: list[HTTPConnectionPool] = []

        def agentFactory(source: SourceConfig, settings: ProxySettings) -> Agent:
            pool = HTTPConnectionPool(reactor, persistent=False)
            pools.append(pool)
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", backend.port)
            return Agent.usingEndpointFactory(
                reactor, _OneEndpoint(endpoint), pool=pool
            )

        config = proxyConfig({"b0": "http://backend.example"})
        proxy = await startProxy(self, config, agentFactory)
        [response] = await exchange(self, proxy.port, get(b"/"))
        self.assertEqual(response.status, 200)
        self.assertEqual(backend.requests[0].header(b"host"), [b"backend.example"])

    async def test_preserveHost(self) -> None:
        """
        C{preserve_host = yes} sends the client's C{Host} as sent.
        """
        received, _ = await self.proxied(
            b"GET / HTTP/1.1\r\nHost: Client.Example:8080\r\n\r\n",
            rule={"preserve_host": "yes"},
        )
        self.assertEqual(received.header(b"host"), [b"Client.Example:8080"])

    async def test_forwardingFromUntrustedPeer(self) -> None:
        """
        From a peer not in C{trusted_proxies}, every client-sent forwarding
        header is replaced by the proxy's own.
        """
        received, _ = await self.proxied(
            get(
                b"/",
                b"X-Forwarded-For: 203.0.113.9",
                b"X-Forwarded-For: 198.51.100.1",
                b"X-Real-IP: 203.0.113.9",
                b"X-Forwarded-Host: evil.example",
                b"X-Forwarded-Proto: https",
                b"X-Forwarded-Proto: https",
                b"X-Forwarded-SSL: on",
            ),
            server={"trusted_proxies": "10.0.0.0/8"},
        )
        self.assertEqual(received.header(b"x-forwarded-for"), [b"127.0.0.1"])
        self.assertEqual(received.header(b"x-real-ip"), [b"127.0.0.1"])
        self.assertEqual(received.header(b"x-forwarded-host"), [b"client.example"])
        self.assertEqual(received.header(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(received.header(b"x-forwarded-ssl"), [b"off"])

    async def test_forwardingFromTrustedPeer(self) -> None:
        """
        From a trusted peer the chain is kept and the peer appended; the
        client is the right-most untrusted address; the forwarded host,
        proto and SSL are kept as sent.
        """
        received, _ = await self.proxied(
            get(
                b"/",
                b"X-Forwarded-For: 198.51.100.1, 203.0.113.9, 127.0.0.7",
                b"X-Real-IP: 6.6.6.6",
                b"X-Forwarded-Host: public.example",
                b"X-Forwarded-Proto: https",
                b"X-Forwarded-SSL: on",
            ),
            server={"trusted_proxies": "127.0.0.0/8"},
        )
        self.assertEqual(
            received.header(b"x-forwarded-for"),
            [b"198.51.100.1, 203.0.113.9, 127.0.0.7, 127.0.0.1"],
        )
        self.assertEqual(received.header(b"x-real-ip"), [b"203.0.113.9"])
        self.assertEqual(received.header(b"x-forwarded-host"), [b"public.example"])
        self.assertEqual(received.header(b"x-forwarded-proto"), [b"https"])
        self.assertEqual(received.header(b"x-forwarded-ssl"), [b"on"])

    async def test_trustedRepeatedForwardedFor(self) -> None:
        """
        Several C{X-Forwarded-For} lines from a trusted peer are kept in
        order (as lines or joined, the list is the same).
        """
        received, _ = await self.proxied(
            get(
                b"/", b"X-Forwarded-For: 198.51.100.1", b"X-Forwarded-For: 203.0.113.9"
            ),
            server={"trusted_proxies": "127.0.0.0/8"},
        )
        chain = b", ".join(received.header(b"x-forwarded-for"))
        self.assertEqual(chain, b"198.51.100.1, 203.0.113.9, 127.0.0.1")
        self.assertEqual(received.header(b"x-real-ip"), [b"203.0.113.9"])

    async def test_trustedPeerWithoutHeaders(self) -> None:
        """
        A trusted peer that sends no forwarding headers gets them set.
        """
        received, _ = await self.proxied(
            get(b"/"), server={"trusted_proxies": "127.0.0.0/8"}
        )
        self.assertEqual(received.header(b"x-forwarded-for"), [b"127.0.0.1"])
        self.assertEqual(received.header(b"x-real-ip"), [b"127.0.0.1"])
        self.assertEqual(received.header(b"x-forwarded-host"), [b"client.example"])
        self.assertEqual(received.header(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(received.header(b"x-forwarded-ssl"), [b"off"])

    async def test_requestHideHeaders(self) -> None:
        """
        C{request_hide_headers} removes headers (any case, every copy).
        """
        received, _ = await self.proxied(
            get(b"/", b"Cookie: a=1", b"X-Secret: 1", b"x-secret: 2", b"X-Other: kept"),
            rule={"request_hide_headers": "cookie X-SECRET"},
        )
        self.assertEqual(received.header(b"cookie"), [])
        self.assertEqual(received.header(b"x-secret"), [])
        self.assertEqual(received.header(b"x-other"), [b"kept"])

    async def test_requestHideForwardingHeaders(self) -> None:
        """
        C{request_hide_headers} applies after the forwarding headers are
        set, so it can remove them too.
        """
        received, _ = await self.proxied(
            get(b"/"),
            rule={"request_hide_headers": "X-Real-IP X-Forwarded-SSL X-Forwarded-For"},
        )
        self.assertEqual(received.header(b"x-real-ip"), [])
        self.assertEqual(received.header(b"x-forwarded-ssl"), [])
        self.assertEqual(received.header(b"x-forwarded-for"), [])
        self.assertEqual(received.header(b"x-forwarded-proto"), [b"http"])

    async def test_requestAddHeadersReplace(self) -> None:
        """
        C{request_add_headers} sets a header, replacing every copy the
        client sent.
        """
        received, _ = await self.proxied(
            get(b"/", b"X-Env: dev", b"X-Env: test", b"X-Keep: 1"),
            rule={"request_add_headers": "X-Env: prod\nX-Added: yes, really"},
        )
        self.assertEqual(received.header(b"x-env"), [b"prod"])
        self.assertEqual(received.header(b"x-added"), [b"yes, really"])
        self.assertEqual(received.header(b"x-keep"), [b"1"])

    async def test_requestAddReplacesForwardingHeader(self) -> None:
        """
        C{request_add_headers} replaces a forwarding header the proxy set:
        C{X-Forwarded-Proto: https} behind a TLS terminator is sent once.
        """
        received, _ = await self.proxied(
            get(b"/"),
            rule={
                "request_add_headers": "X-Forwarded-Proto: https\nX-Real-IP: 192.0.2.1"
            },
        )
        self.assertEqual(received.header(b"x-forwarded-proto"), [b"https"])
        self.assertEqual(received.header(b"x-real-ip"), [b"192.0.2.1"])

    async def test_repeatedHeadersInOrder(self) -> None:
        """
        Repeated headers reach the backend as separate values, in order.
        """
        received, _ = await self.proxied(
            get(
                b"/",
                b"Cookie: a=1",
                b"Accept: text/html",
                b"Cookie: b=2",
                b"Cookie: c=3",
            )
        )
        self.assertEqual(received.header(b"cookie"), [b"a=1", b"b=2", b"c=3"])
        self.assertEqual(received.header(b"accept"), [b"text/html"])

    async def test_sendfileCompanionsDropped(self) -> None:
        """
        A client's C{X-Sendfile-Type} and C{X-Accel-Mapping} never reach the
        backend.
        """
        received, _ = await self.proxied(
            get(b"/", b"X-Sendfile-Type: X-Accel-Redirect", b"X-Accel-Mapping: /=/etc/")
        )
        self.assertEqual(received.header(b"x-sendfile-type"), [])
        self.assertEqual(received.header(b"x-accel-mapping"), [])

    async def test_expectContinue(self) -> None:
        """
        The proxy answers C{Expect: 100-continue} itself; the backend gets
        neither the C{Expect} nor a different body.
        """
        backend = startBackend(self)
        proxy = await startProxy(self, proxyConfig([backend.port]))
        client = await connectClient(self, proxy.port)
        client.send(
            b"POST /up HTTP/1.1\r\nHost: client.example\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\n\r\n"
        )
        self.assertTrue(await poll(lambda: b"100 Continue" in client.data, 3))
        client.transport.write(b"hello")
        [response] = await client.responses()
        self.assertEqual(response.status, 200)
        self.assertEqual(backend.requests[0].body, b"hello")
        self.assertEqual(backend.requests[0].header(b"expect"), [])


class ResponseTests(_WireCase):
    """
    Phase 2: what the client receives.
    """

    async def test_statusAndReasonRelayed(self) -> None:
        """
        Status codes and reason phrases, including ones Twisted does not
        know, are relayed unchanged.
        """
        statuses = [
            (299, b"Whatever"),
            (308, b"Permanent Redirect"),
            (429, b"Slow Down Please"),
            (451, b"Unavailable For Legal Reasons"),
            (503, b"Back Soon"),
            (200, b"Fine Thanks"),
        ]

        def reply(request: CapturedRequest) -> Reply:
            status, reason = statuses[int(request.target[1:])]
            return Reply(status, reason, body=b"x")

        backend = startBackend(self, reply)
        proxy = await startProxy(self, proxyConfig([backend.port]))
        client = await connectClient(self, proxy.port)
        client.send(
            b"".join(get(b"/%d" % n) for n in range(len(statuses))), len(statuses)
        )
        responses = await client.responses(len(statuses))
        self.assertEqual([(r.status, r.reason) for r in responses], statuses)

    async def test_contentLengthKept(self) -> None:
        """
        A backend's C{Content-Length} is relayed, and the body with it.
        """
        _, response = await self.proxied(get(b"/"), Reply(body=b"0123456789"))
        self.assertEqual(response.framing, "length")
        self.assertEqual(response.header(b"content-length"), [b"10"])
        self.assertEqual(response.body, b"0123456789")

    async def test_chunkedWhenNoLength(self) -> None:
        """
        A body without a length (chunked or close-delimited at the backend)
        goes to an HTTP/1.1 client chunked, intact.
        """
        for framing in ("chunked", "close"):
            _, response = await self.proxied(
                get(b"/"), Reply(body=b"abcdefghij" * 10, framing=framing)
            )
            self.assertEqual(response.framing, "chunked", framing)
            self.assertEqual(response.header(b"content-length"), [])
            self.assertEqual(response.body, b"abcdefghij" * 10)
            self.assertTrue(response.complete)

    async def test_closeDelimitedToHTTP10Client(self) -> None:
        """
        An HTTP/1.0 client gets a body without a length close-delimited.
        """
        _, response = await self.proxied(
            b"GET / HTTP/1.0\r\nHost: client.example\r\n\r\n",
            Reply(body=b"streamed", framing="chunked"),
        )
        self.assertEqual(response.framing, "close")
        self.assertEqual(response.header(b"transfer-encoding"), [])
        self.assertEqual(response.body, b"streamed")

    async def test_hopByHopResponseHeadersRemoved(self) -> None:
        """
        The backend's hop-by-hop headers are not relayed.
        """
        _, response = await self.proxied(
            get(b"/"),
            Reply(
                headers=[
                    (b"Keep-Alive", b"timeout=5"),
                    (b"Proxy-Connection", b"keep-alive"),
                    (b"Trailer", b"X-Checksum"),
                    (b"Proxy-Authenticate", b"Basic"),
                    (b"Upgrade", b"h2c"),
                    (b"X-Kept", b"yes"),
                ],
                body=b"ok",
            ),
        )
        for name in (
            b"keep-alive",
            b"proxy-connection",
            b"trailer",
            b"proxy-authenticate",
            b"upgrade",
        ):
            self.assertEqual(response.header(name), [], name)
        self.assertEqual(response.header(b"x-kept"), [b"yes"])

    async def test_responseConnectionTokensRemoved(self) -> None:
        """
        Headers the backend's C{Connection} names are hop-by-hop too.
        """
        _, response = await self.proxied(
            get(b"/"),
            Reply(
                headers=[
                    (b"Connection", b"X-Private, x-hop"),
                    (b"X-Private", b"s"),
                    (b"X-Hop", b"h"),
                ],
                body=b"ok",
            ),
        )
        self.assertEqual(response.header(b"x-private"), [])
        self.assertEqual(response.header(b"x-hop"), [])
        self.assertEqual(response.body, b"ok")

    async def test_sendfileHeadersNeverReachClient(self) -> None:
        """
        C{X-Sendfile} and C{X-Accel-*} are never relayed (here with
        C{x_sendfile = no}, so the backend's body is the answer).
        """
        _, response = await self.proxied(
            get(b"/"),
            Reply(
                headers=[
                    (b"X-Sendfile", b"/etc/passwd"),
                    (b"X-Accel-Redirect", b"/internal/file"),
                    (b"X-Accel-Buffering", b"no"),
                    (b"X-Accel-Expires", b"0"),
                    (b"X-Sendfile-Type", b"X-Sendfile"),
                ],
                body=b"backend body",
            ),
            rule={"x_sendfile": "no"},
        )
        self.assertEqual(
            [n for n in response.names() if n.startswith((b"x-accel", b"x-sendfile"))],
            [],
        )
        self.assertEqual(response.body, b"backend body")

    async def test_serverReplaced(self) -> None:
        """
        The backend's C{Server} is replaced by C{server_tokens}.
        """
        _, response = await self.proxied(
            get(b"/"),
            Reply(headers=[(b"Server", b"Backend/1.0")]),
            server={"server_tokens": "Front"},
        )
        self.assertEqual(response.header(b"server"), [b"Front"])

    async def test_preserveServer(self) -> None:
        """
        C{preserve_server = yes} keeps the backend's C{Server}.
        """
        _, response = await self.proxied(
            get(b"/"),
            Reply(headers=[(b"Server", b"Backend/1.0")]),
            rule={"preserve_server": "yes"},
        )
        self.assertEqual(response.header(b"server"), [b"Backend/1.0"])

    async def test_replyRewrite(self) -> None:
        """
        C{reply_rewrite} applies to C{Location} and C{Content-Location}
        only.
        """
        _, response = await self.proxied(
            get(b"/"),
            Reply(
                302,
                b"Found",
                headers=[
                    (b"Location", b"http://inside:8000/next?a=1"),
                    (b"Content-Location", b"http://inside:8000/doc"),
                    (b"Link", b"<http://inside:8000/style>"),
                ],
            ),
            rule={
                "reply_rewrite": "^http://inside:8000/(.*)$ https://public.example/$1"
            },
        )
        self.assertEqual(response.status, 302)
        self.assertEqual(
            response.header(b"location"), [b"https://public.example/next?a=1"]
        )
        self.assertEqual(
            response.header(b"content-location"), [b"https://public.example/doc"]
        )
        self.assertEqual(response.header(b"link"), [b"<http://inside:8000/style>"])

    async def test_replyHideAndAdd(self) -> None:
        """
        C{reply_hide_headers} removes, C{reply_add_headers} sets (replacing
        the backend's).
        """
        _, response = await self.proxied(
            get(b"/"),
            Reply(
                headers=[
                    (b"X-Powered-By", b"PHP"),
                    (b"X-Frame-Options", b"ALLOWALL"),
                    (b"X-Frame-Options", b"SAMEORIGIN"),
                    (b"X-Kept", b"1"),
                ]
            ),
            rule={
                "reply_hide_headers": "x-powered-by",
                "reply_add_headers": "X-Frame-Options: DENY\nStrict-Transport-Security: max-age=60",
            },
        )
        self.assertEqual(response.header(b"x-powered-by"), [])
        self.assertEqual(response.header(b"x-frame-options"), [b"DENY"])
        self.assertEqual(response.header(b"strict-transport-security"), [b"max-age=60"])
        self.assertEqual(response.header(b"x-kept"), [b"1"])

    async def test_setCookieOrder(self) -> None:
        """
        Repeated C{Set-Cookie} lines are relayed separately, in order.
        """
        cookies = [b"a=1; Path=/", b"b=2, with comma; HttpOnly", b"c=3"]
        _, response = await self.proxied(
            get(b"/"), Reply(headers=[(b"Set-Cookie", c) for c in cookies], body=b"x")
        )
        self.assertEqual(response.header(b"set-cookie"), cookies)

    async def test_noContentTypeInvented(self) -> None:
        """
        A response without C{Content-Type} gets none from the proxy.
        """
        _, response = await self.proxied(get(b"/"), Reply(body=b"raw"))
        self.assertEqual(response.header(b"content-type"), [])

    async def test_contentTypeRelayed(self) -> None:
        """
        A backend's C{Content-Type} is relayed as sent.
        """
        _, response = await self.proxied(
            get(b"/"),
            Reply(headers=[(b"Content-Type", b"application/x-odd; charset=latin-1")]),
        )
        self.assertEqual(
            response.header(b"content-type"), [b"application/x-odd; charset=latin-1"]
        )

    async def test_head(self) -> None:
        """
        HEAD is forwarded as HEAD; the backend's C{Content-Length} comes back
        without a body, and the connection carries the next request.
        """
        backend = startBackend(self, Reply(body=b"0123456789"))
        proxy = await startProxy(self, proxyConfig([backend.port]))
        client = await connectClient(self, proxy.port)
        client.send(get(b"/", method=b"HEAD"), head=True)
        [head] = await client.responses(1)
        client.send(get(b"/next"))
        responses = await client.responses(2)
        self.assertEqual(backend.requests[0].method, b"HEAD")
        self.assertEqual(head.status, 200)
        self.assertEqual(head.header(b"content-length"), [b"10"])
        self.assertEqual(head.raw_body, b"")
        self.assertEqual(len(responses), 2)
        self.assertEqual(responses[1].body, b"0123456789")

    async def test_noBodyStatuses(self) -> None:
        """
        204 and 304 answers go out without a body or chunked framing, and
        the connection carries the next request.
        """

        def reply(request: CapturedRequest) -> Reply:
            if request.target == b"/204":
                return Reply(204, b"No Content", framing="none")
            if request.target == b"/304":
                return Reply(
                    304, b"Not Modified", headers=[(b"ETag", b'"x"')], framing="none"
                )
            return Reply(body=b"after")

        backend = startBackend(self, reply)
        proxy = await startProxy(self, proxyConfig([backend.port]))
        client = await connectClient(self, proxy.port)
        client.send(get(b"/204") + get(b"/304") + get(b"/"), 3)
        responses = await client.responses(3)
        self.assertEqual([r.status for r in responses], [204, 304, 200])
        for response in responses[:2]:
            self.assertEqual(response.header(b"transfer-encoding"), [])
            self.assertEqual(response.raw_body, b"")
        self.assertEqual(responses[1].header(b"etag"), [b'"x"'])
        self.assertEqual(responses[2].body, b"after")

    async def test_notModifiedLength(self) -> None:
        """
        A 304's C{Content-Length} describes the stored representation: it
        is relayed as the backend sent it, or left out, never changed.
        """
        _, response = await self.proxied(
            get(b"/"),
            Reply(
                304,
                b"Not Modified",
                headers=[(b"Content-Length", b"1234"), (b"ETag", b'"e"')],
                framing="none",
            ),
        )
        self.assertEqual(response.status, 304)
        self.assertIn(response.header(b"content-length"), ([], [b"1234"]))


class StreamingTests(_WireCase):
    """
    Bodies stream in both directions, with backpressure.
    """

    async def test_requestBodyContentLength(self) -> None:
        """
        A body with C{Content-Length} reaches the backend intact, with the
        same length.
        """
        body = bytes(range(256)) * 400
        received, response = await self.proxied(
            b"POST /up HTTP/1.1\r\nHost: client.example\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(received.header(b"content-length"), [b"%d" % len(body)])
        self.assertFalse(received.chunked)
        self.assertEqual(received.body, body)

    async def test_requestBodyChunked(self) -> None:
        """
        A chunked body, whose length is unknown, is forwarded chunked and
        intact.
        """
        parts = [b"first part ", b"x" * 70000, b" last"]
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        received, response = await self.proxied(
            b"POST /up HTTP/1.1\r\nHost: client.example\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked
        )
        self.assertEqual(response.status, 200)
        self.assertTrue(received.chunked)
        self.assertEqual(received.header(b"content-length"), [])
        self.assertEqual(received.body, b"".join(parts))

    async def test_requestBodyStreams(self) -> None:
        """
        The first bytes of a body reach the backend before the client has
        sent the rest.
        """
        backend = startBackend(self)
        proxy = await startProxy(self, proxyConfig([backend.port]))
        client = await connectClient(self, proxy.port)
        client.send(
            b"POST /up HTTP/1.1\r\nHost: client.example\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nearly\r\n"
        )
        arrived = await poll(
            lambda: any(c.partial == b"early" for c in backend.connections), 3
        )
        self.assertTrue(arrived, "the body's first chunk did not reach the backend")
        self.assertEqual(backend.requests, [])
        client.transport.write(b"4\r\nlate\r\n0\r\n\r\n")
        [response] = await client.responses()
        self.assertEqual(response.status, 200)
        self.assertEqual(backend.requests[0].body, b"earlylate")

    async def test_requestBodyBackpressure(self) -> None:
        """
        A client uploading faster than the backend reads: the proxy stops
        reading the client (so the upload stalls instead of filling the
        proxy's memory), and resumes when the backend reads again; the body
        arrives intact.
        """
        size = 32 * 1024 * 1024
        backend = startBackend(self)
        backend.reading = False
        proxy = await startProxy(self, proxyConfig([backend.port]))
        sent = [0]
        uploading = socketExchange(
            proxy.port,
            b"POST /up HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
            % size,
            timeout=8,
            upload=size,
            sent=sent,
        )
        await wait(1.0)
        stalled_at = sent[0]
        transports = proxy.transports()
        self.assertEqual(len(transports), 1)
        self.assertNotIn(
            transports[0], reactor.getReaders(), "the client is still being read"
        )
        self.assertLess(stalled_at, size // 2, "the upload did not stall")
        backend.resume()
        [response] = parseResponses(await uploading)
        self.assertEqual(response.status, 200)
        self.assertEqual(len(backend.requests[0].body), size)
        self.assertTrue(
            backend.requests[0].body == streamBody(size), "the body arrived changed"
        )

    async def test_largeResponseBackpressure(self) -> None:
        """
        A 20 MiB response to a client that does not read for a while: the
        backend is paused, the proxy's buffers stay small, and the body
        arrives intact.
        """
        size = 20 * 1024 * 1024
        backend = startBackend(self, Reply(stream=size), sndbuf=65536)
        proxy = await startProxy(self, proxyConfig([backend.port]))
        progress = [0]
        reading = socketExchange(
            proxy.port,
            get(b"/big", b"Connection: close"),
            timeout=8,
            rcvbuf=65536,
            stall=1.0,
            progress=progress,
        )
        samples: list[int] = []

        async def sample() -> None:
            while not reading.called:
                samples.append(proxy.buffered())
                await wait(0.02)

        sampling = Deferred.fromCoroutine(sample())
        await wait(0.8)
        self.assertEqual(progress[0], 0, "the client read too early for this test")
        written_when_stalled = backend.connections[0].written
        data = await reading
        await sampling
        [response] = parseResponses(data)
        self.assertEqual(response.header(b"content-length"), [b"%d" % size])
        self.assertTrue(response.complete)
        self.assertTrue(response.body == streamBody(size), "the body arrived changed")
        self.assertLess(written_when_stalled, size // 2, "the backend was not paused")
        self.assertGreater(backend.connections[0].pauses, 0)
        self.assertLess(max(samples), 1024 * 1024, "the proxy buffered too much")

    async def test_clientGoneMidResponse(self) -> None:
        """
        A client that goes away during the body makes the proxy close that
        backend connection, which is not reused.
        """

        def reply(request: CapturedRequest) -> Reply:
            return (
                Reply(stream=20 * 1024 * 1024)
                if request.target == b"/big"
                else Reply(body=b"small")
            )

        backend = startBackend(self, reply, sndbuf=65536)
        proxy = await startProxy(self, proxyConfig([backend.port]))
        client = await connectClient(self, proxy.port)
        client.send(get(b"/big"))
        self.assertTrue(await poll(lambda: len(client.data) > 0, 3))
        client.transport.pauseProducing()
        await wait(0.2)
        await client.abort()
        self.assertTrue(
            await poll(lambda: backend.connections[0].closed, 3),
            "backend connection kept open",
        )
        self.assertLess(backend.connections[0].written, 20 * 1024 * 1024)
        [response] = await exchange(self, proxy.port, get(b"/small"))
        self.assertEqual(response.body, b"small")
        self.assertEqual(backend.accepted, 2)

    async def test_clientGoneBeforeResponse(self) -> None:
        """
        A client that goes away before the response cancels the backend
        request: its connection is closed.
        """
        backend = startBackend(self, Reply(hang=True))
        proxy = await startProxy(self, proxyConfig([backend.port]))
        client = await connectClient(self, proxy.port)
        client.send(get(b"/slow"))
        await backend.request(1)
        await client.abort()
        self.assertTrue(
            await poll(lambda: backend.connections[0].closed, 3),
            "backend request not cancelled",
        )


class PoolTests(_WireCase):
    """
    Keep-alive connections to the backends are pooled.
    """

    async def test_sequentialRequestsShareOneConnection(self) -> None:
        """
        Requests one after another over one client connection use one
        backend connection.
        """
        backend = startBackend(self)
        proxy = await startProxy(self, proxyConfig([backend.port]))
        client = await connectClient(self, proxy.port)
        for n in range(5):
            client.send(get(b"/%d" % n))
            await client.responses(n + 1)
        self.assertEqual(len(backend.requests), 5)
        self.assertEqual(backend.accepted, 1)

    async def test_pooledForHTTP10AndCloseClients(self) -> None:
        """
        HTTP/1.0 and C{Connection: close} clients, one connection each,
        still share one pooled backend connection.
        """
        backend = startBackend(self)
        proxy = await startProxy(self, proxyConfig([backend.port]))
        for n in range(3):
            [response] = await exchange(
                self, proxy.port, b"GET /%d HTTP/1.0\r\nHost: h\r\n\r\n" % n
            )
            self.assertEqual(response.status, 200)
        for n in range(3):
            client = await connectClient(self, proxy.port)
            client.send(get(b"/c%d" % n, b"Connection: close"))
            [response] = await client.responses()
            self.assertEqual(response.status, 200)
            self.assertTrue(await client.waitClosed(2), "client connection not closed")
        self.assertEqual(len(backend.requests), 6)
        self.assertEqual([r.header(b"connection") for r in backend.requests], [[]] * 6)
        self.assertEqual(backend.accepted, 1)

    async def test_reuseConnectionsLimit(self) -> None:
        """
        With C{reuse_connections = 2}, five concurrent requests open five
        backend connections, of which at most two stay idle afterwards, and
        the next request reuses one of them.
        """
        backend = startBackend(self, Reply(body=b"slow", delay=0.3))
        proxy = await startProxy(
            self, proxyConfig([backend.port], {"reuse_connections": "2"})
        )
        clients = [await connectClient(self, proxy.port) for _ in range(5)]
        for client in clients:
            client.send(get(b"/"))
        for client in clients:
            [response] = await client.responses()
            self.assertEqual(response.body, b"slow")
        self.assertEqual(backend.accepted, 5)
        self.assertTrue(
            await poll(lambda: len(backend.open) <= 2, 2),
            f"{len(backend.open)} left open",
        )
        await wait(0.1)
        self.assertEqual(len(backend.open), 2)
        backend.reply = Reply(body=b"fast")
        [response] = await exchange(self, proxy.port, get(b"/"))
        self.assertEqual(response.body, b"fast")
        self.assertEqual(backend.accepted, 5)

    async def test_noKeepalive(self) -> None:
        """
        C{allow_keepalive = no}: one backend connection per request, each
        request saying C{Connection: close}.
        """
        backend = startBackend(self)
        proxy = await startProxy(
            self, proxyConfig([backend.port], {"allow_keepalive": "no"})
        )
        client = await connectClient(self, proxy.port)
        for n in range(3):
            client.send(get(b"/%d" % n))
            await client.responses(n + 1)
        self.assertEqual(backend.accepted, 3)
        self.assertEqual(
            [r.header(b"connection") for r in backend.requests], [[b"close"]] * 3
        )

    async def test_backendCloseNotReused(self) -> None:
        """
        A backend answering C{Connection: close} closes that connection; the
        next request opens another, and the client's connection stays open.
        """
        backend = startBackend(
            self, Reply(headers=[(b"Connection", b"close")], body=b"bye")
        )
        proxy = await startProxy(self, proxyConfig([backend.port]))
        client = await connectClient(self, proxy.port)
        for n in range(2):
            client.send(get(b"/%d" % n))
            responses = await client.responses(n + 1)
            self.assertEqual(responses[n].body, b"bye")
            self.assertEqual(responses[n].header(b"connection"), [])
        self.assertFalse(client.closed)
        self.assertEqual(backend.accepted, 2)

    async def test_idleConnectionClosedByBackend(self) -> None:
        """
        A pooled connection the backend closed while idle is not used: a
        POST after it goes out on a new connection.
        """
        backend = startBackend(self)
        proxy = await startProxy(self, proxyConfig([backend.port]))
        await exchange(self, proxy.port, get(b"/"))
        backend.connections[0].transport.loseConnection()
        await wait(0.2)
        [response] = await exchange(
            self,
            proxy.port,
            b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(backend.requests[-1].body, b"hi")
        self.assertEqual(backend.accepted, 2)

    async def test_keepaliveTimeout(self) -> None:
        """
        An idle pooled connection is closed after C{keepalive_timeout}.
        """
        backend = startBackend(self)
        proxy = await startProxy(
            self, proxyConfig([backend.port], {"keepalive_timeout": "0.3"})
        )
        await exchange(self, proxy.port, get(b"/"))
        await wait(0.1)
        self.assertFalse(backend.connections[0].closed, "closed before the timeout")
        self.assertTrue(
            await poll(lambda: backend.connections[0].closed, 2), "idle connection kept"
        )


class ErrorTests(_WireCase):
    """
    Backend failures as the client sees them.
    """

    async def test_connectionRefused(self) -> None:
        """
        A refused connection is a 502 whose body does not name the address.
        """
        port = freePort()
        proxy = await startProxy(self, proxyConfig([port]))
        [response] = await exchange(self, proxy.port, get(b"/"))
        self.assertEqual(response.status, 502)
        self.assertNotIn(b"127.0.0.1", response.body)
        self.assertNotIn(b"%d" % port, response.body)
        self.assertNotIn(b"refused", response.body.lower())

    async def test_readTimeoutBeforeHead(self) -> None:
        """
        A backend silent for C{read_timeout} before the response head gives
        a 504.
        """
        backend = startBackend(self, Reply(hang=True))
        proxy = await startProxy(
            self, proxyConfig([backend.port], {"read_timeout": "0.3"})
        )
        [response] = await exchange(self, proxy.port, get(b"/"), timeout=3)
        self.assertEqual(response.status, 504)
        self.assertTrue(await poll(lambda: backend.connections[0].closed, 2))

    async def _truncated(self, reply: Reply, rule: Mapping[str, str] = {}) -> Response:
        backend = startBackend(self, reply)
        proxy = await startProxy(self, proxyConfig([backend.port], rule))
        client = await connectClient(self, proxy.port)
        client.send(get(b"/"))
        self.assertTrue(await client.waitClosed(3), "client connection left open")
        self.assertTrue(
            client.parser.responses,
            "the client got no response at all: the head and the body bytes "
            "already relayed were dropped instead of the response being cut",
        )
        [response] = client.parser.responses
        self.assertEqual(response.status, 200)
        return response

    async def test_backendClosesMidBodyLength(self) -> None:
        """
        A backend that drops the connection inside a C{Content-Length} body:
        the client's connection is closed with the body short.
        """
        response = await self._truncated(Reply(body=b"x" * 1000, cut=100))
        self.assertEqual(response.header(b"content-length"), [b"1000"])
        self.assertFalse(response.complete)
        self.assertLess(len(response.body), 1000)

    async def test_backendClosesMidBodyChunked(self) -> None:
        """
        A backend that drops the connection inside a chunked body: the
        client's chunked body never gets its last chunk.
        """
        response = await self._truncated(
            Reply(body=b"y" * 3000, framing="chunked", cut=1500)
        )
        self.assertEqual(response.framing, "chunked")
        self.assertFalse(response.complete)

    async def test_backendStallsMidBody(self) -> None:
        """
        A backend silent for C{read_timeout} inside the body: the client's
        connection is closed, the response incomplete.
        """
        response = await self._truncated(
            Reply(body=b"z" * 1000, cut=10, stall=True), {"read_timeout": "0.3"}
        )
        self.assertFalse(response.complete)

    async def test_backendClosesAfterHeaders(self) -> None:
        """
        A backend that closes right after its head, before any body byte
        reached the client, gives a clean 502.
        """
        backend = startBackend(self, Reply(body=b"x" * 1000, cut=0))
        proxy = await startProxy(self, proxyConfig([backend.port]))
        [response] = await exchange(self, proxy.port, get(b"/"))
        self.assertEqual(response.status, 502)
        self.assertTrue(response.complete)

    async def assertBadGateway(self, raw: bytes) -> None:
        """
        A backend answering C{raw} (and then keeping its connection open)
        gives a 502, and the proxy closes that connection.
        """
        backend = startBackend(self, Reply(raw=raw, stall=True))
        proxy = await startProxy(self, proxyConfig([backend.port]))
        [response] = await exchange(self, proxy.port, get(b"/"))
        self.assertEqual(response.status, 502, response.body)
        self.assertTrue(
            await poll(lambda: backend.connections[0].closed, 2),
            "backend connection kept",
        )

    async def test_lengthAndChunked(self) -> None:
        """
        A backend response with both C{Content-Length} and
        C{Transfer-Encoding} has ambiguous framing: 502.
        """
        await self.assertBadGateway(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        )

    async def test_differingLengths(self) -> None:
        await self.assertBadGateway(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
        )

    async def test_unknownTransferCoding(self) -> None:
        await self.assertBadGateway(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )

    async def test_invalidResponseHead(self) -> None:
        """
        A response head that is not HTTP, or is cut short, is a 502.
        """
        for raw in (
            b"HTTP/1.1 abc Nope\r\nContent-Length: 0\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Le",
        ):
            backend = startBackend(self, Reply(raw=raw))
            proxy = await startProxy(self, proxyConfig([backend.port]))
            [response] = await exchange(self, proxy.port, get(b"/"))
            self.assertEqual(response.status, 502, raw)

    async def test_informationalResponseSkipped(self) -> None:
        """
        A C{1xx} before the final response does not stop the final one from
        being relayed.
        """
        raw = (
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
        )
        _, response = await self.proxied(get(b"/"), Reply(raw=raw))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"final")

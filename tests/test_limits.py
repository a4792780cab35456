# -*- test-case-name: tests.test_limits -*-
"""
The client-side limits on real sockets (SPEC §2 [server], §3 "Errors" and
"Bad input"; security.md §5): the header deadline, the idle timeout during
a body, C{max_body_size}, the head size limits and C{max_connections}.

Each test runs a proxy in-process on 127.0.0.1 in front of a
L{CaptureBackend}; the times are short (one-second limits) and every wait is
bounded.  A refused request must never reach the backend complete.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.helpers import (
    CaptureBackend,
    RawClient,
    RunningProxy,
    connectClient,
    poll,
    proxyConfig,
    startBackend,
    startProxy,
    wait,
)
from txrevproxy import ProxySite

GET = b"GET / HTTP/1.1\r\nHost: front.example\r\n\r\n"


def head(*fields: bytes, method: bytes = b"GET", target: bytes = b"/") -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: front.example", *fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def trickle(client: RawClient, data: bytes, interval: float) -> None:
    """
    Send C{data} one byte every C{interval} seconds until it is all sent or
    the connection ends.
    """
    for byte in data:
        if client.closed:
            return
        client.transport.write(bytes([byte]))
        await wait(interval)


class _LimitCase(TestCase):
    timeout = 15

    async def proxy(self, server: Mapping[str, str] = {}) -> tuple[CaptureBackend, RunningProxy]:
        backend = startBackend(self)
        proxy = await startProxy(self, proxyConfig([backend.port], server=server))
        return backend, proxy

    async def refused(self, port: int, data: bytes, status: int) -> RawClient:
        """
        Send C{data}; the answer must be C{status} and the connection closed.
        """
        client = await connectClient(self, port)
        client.send(data)
        [response] = await client.responses(1, timeout=5)
        self.assertEqual(response.status, status)
        self.assertEqual(response.header(b"connection"), [b"close"])
        self.assertTrue(await client.waitClosed(3), "connection left open")
        return client


class HeaderTimeoutTests(_LimitCase):
    """
    C{header_timeout}: a deadline for the whole head, not reset by each byte.
    """

    async def test_slowHeaders(self) -> None:
        """
        A client trickling its head one byte every 0.2 s gets 408 and is
        disconnected about C{header_timeout} after connecting, while a
        client in parallel is served at once.
        """
        backend, proxy = await self.proxy({"header_timeout": "1"})
        slow = await connectClient(self, proxy.port)
        started = time.monotonic()
        Deferred.fromCoroutine(trickle(slow, head(b"X-Slow: " + b"s" * 40), 0.2))
        await wait(0.3)
        fast = await connectClient(self, proxy.port)
        fast.send(GET)
        [served] = await fast.responses(1, timeout=1)
        self.assertEqual(served.status, 200)
        self.assertLess(time.monotonic() - started, 1.0, "the parallel client waited")
        self.assertTrue(await slow.waitClosed(3))
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLessEqual(elapsed, 1.6)
        self.assertEqual([r.status for r in slow.parser.responses], [408])
        self.assertEqual(len(backend.requests), 1)

    async def test_silentClient(self) -> None:
        """
        A client that connects and sends nothing is disconnected after
        C{header_timeout}.
        """
        backend, proxy = await self.proxy({"header_timeout": "1"})
        client = await connectClient(self, proxy.port)
        started = time.monotonic()
        self.assertTrue(await client.waitClosed(3))
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLessEqual(elapsed, 1.6)
        self.assertTrue(client.data == b"" or client.data.startswith(b"HTTP/1.1 408 "), client.data)
        self.assertEqual(backend.accepted, 0)

    async def test_slowSecondHead(self) -> None:
        """
        On a kept-alive connection the next head has the same deadline,
        counted from its first byte.
        """
        backend, proxy = await self.proxy({"header_timeout": "1"})
        client = await connectClient(self, proxy.port)
        client.send(GET)
        await client.responses(1)
        await wait(0.5)
        started = time.monotonic()
        Deferred.fromCoroutine(trickle(client, head(b"X-Slow: " + b"s" * 40), 0.2))
        self.assertTrue(await client.waitClosed(3))
        self.assertLessEqual(time.monotonic() - started, 1.6)
        self.assertEqual([r.status for r in client.parser.responses], [200, 408])
        self.assertEqual(len(backend.requests), 1)


class BodyTimeoutTests(_LimitCase):
    """
    The idle C{timeout} while a body streams.
    """

    async def test_stalledBody(self) -> None:
        """
        A client that stops sending its body for longer than C{timeout} is
        disconnected, and the backend request is aborted: the backend sees
        its connection drop and never a complete request.
        """
        backend, proxy = await self.proxy({"timeout": "1"})
        client = await connectClient(self, proxy.port)
        started = time.monotonic()
        client.send(head(b"Content-Length: 100", method=b"POST") + b"x" * 10)
        self.assertTrue(await poll(lambda: backend.accepted == 1 and backend.connections[0].received > 10, 2))
        self.assertTrue(await client.waitClosed(4), "a stalled body kept the connection")
        self.assertLessEqual(time.monotonic() - started, 2.5)
        self.assertTrue(await poll(lambda: not backend.open, 3), "backend request not aborted")
        self.assertEqual(backend.requests, [])
        self.assertEqual(backend.connections[0].partial, b"x" * 10)


class BodySizeTests(_LimitCase):
    """
    C{max_body_size}: 413, declared or while streaming.
    """

    async def test_declaredTooLarge(self) -> None:
        """
        A Content-Length over the limit is a 413 before any backend
        connection is made, with no C{100 Continue} inviting the body.
        """
        backend, proxy = await self.proxy({"max_body_size": "1k"})
        client = await self.refused(
            proxy.port,
            head(b"Content-Length: 1025", b"Expect: 100-continue", method=b"POST"),
            413,
        )
        self.assertEqual(client.parser.responses[0].interim, [])
        await wait(0.1)
        self.assertEqual(backend.accepted, 0)

    async def test_atTheLimit(self) -> None:
        backend, proxy = await self.proxy({"max_body_size": "1k"})
        client = await connectClient(self, proxy.port)
        client.send(head(b"Content-Length: 1024", method=b"POST") + b"y" * 1024)
        [response] = await client.responses(1)
        self.assertEqual(response.status, 200)
        self.assertEqual(backend.requests[0].body, b"y" * 1024)

    async def test_chunkedGrowsPastLimit(self) -> None:
        """
        A chunked body that grows past the limit after streaming began is a
        413 and a close; the backend request is aborted, never completed.
        """
        backend, proxy = await self.proxy({"max_body_size": "1k"})
        client = await connectClient(self, proxy.port)
        client.send(head(b"Transfer-Encoding: chunked", method=b"POST") + b"258\r\n" + b"a" * 600 + b"\r\n")
        self.assertTrue(await poll(lambda: backend.accepted == 1 and backend.connections[0].received > 600, 2))
        client.transport.write(b"258\r\n" + b"b" * 600 + b"\r\n0\r\n\r\n")
        [response] = await client.responses(1)
        self.assertEqual(response.status, 413)
        self.assertTrue(await client.waitClosed(3))
        self.assertTrue(await poll(lambda: not backend.open, 3), "backend request not aborted")
        self.assertEqual(backend.requests, [])
        self.assertNotIn(b"b" * 600, backend.connections[0].partial)


    async def test_chunkedPastLimitAtOnce(self) -> None:
        """
        A chunked body already past the limit in the first segment, before
        the backend connection is up: 413 and a close, and the backend never
        gets a complete request.
        """
        backend, proxy = await self.proxy({"max_body_size": "1k"})
        body = b"4b0\r\n" + b"c" * 1200 + b"\r\n0\r\n\r\n"
        await self.refused(proxy.port, head(b"Transfer-Encoding: chunked", method=b"POST") + body, 413)
        await wait(0.2)
        self.assertEqual(backend.requests, [])
        self.assertEqual(backend.open, [])


class HeadSizeTests(_LimitCase):
    """
    The head limits: 8 KiB lines (414 for the request line, 431 for a
    field), 32 KiB in all and 100 fields (431).
    """

    async def test_requestLineTooLong(self) -> None:
        backend, proxy = await self.proxy()
        await self.refused(proxy.port, head(target=b"/" + b"a" * 8200), 414)
        self.assertEqual(backend.accepted, 0)

    async def test_requestLineBelowLimit(self) -> None:
        backend, proxy = await self.proxy()
        client = await connectClient(self, proxy.port)
        client.send(head(target=b"/" + b"a" * 8000))
        [response] = await client.responses(1)
        self.assertEqual(response.status, 200)
        self.assertEqual(len(backend.requests[0].target), 8001)

    async def test_fieldLineTooLong(self) -> None:
        backend, proxy = await self.proxy()
        await self.refused(proxy.port, head(b"X-Big: " + b"b" * 8200), 431)
        self.assertEqual(backend.accepted, 0)

    async def test_headTooLarge(self) -> None:
        """
        Five 7 KB fields: each line is allowed, the 35 KB head is not.
        """
        backend, proxy = await self.proxy()
        fields = [b"X-Big-%d: " % n + b"c" * 7000 for n in range(5)]
        await self.refused(proxy.port, head(*fields), 431)
        self.assertEqual(backend.accepted, 0)

    async def test_tooManyFields(self) -> None:
        """
        100 fields (Host among them) are served; 101 are a 431.
        """
        backend, proxy = await self.proxy()
        client = await connectClient(self, proxy.port)
        client.send(head(*[b"X-F%d: v" % n for n in range(99)]))
        [response] = await client.responses(1)
        self.assertEqual(response.status, 200)
        await self.refused(proxy.port, head(*[b"X-F%d: v" % n for n in range(100)]), 431)
        self.assertEqual(len(backend.requests), 1)


class ConnectionLimitTests(_LimitCase):
    """
    C{max_connections}: connections past the limit are closed at once.
    """

    async def test_fourthClosed(self) -> None:
        backend, proxy = await self.proxy({"max_connections": "3"})
        site = proxy.runtime.site
        assert isinstance(site, ProxySite)
        clients = [await connectClient(self, proxy.port) for _ in range(3)]
        self.assertTrue(await poll(lambda: site.connections == 3, 2))
        fourth = await connectClient(self, proxy.port)
        started = time.monotonic()
        self.assertTrue(await fourth.waitClosed(2))
        self.assertLess(time.monotonic() - started, 0.5)
        self.assertEqual(fourth.data, b"")
        for client in clients:
            client.send(GET)
        for client in clients:
            [response] = await client.responses(1)
            self.assertEqual(response.status, 200)
        self.assertEqual(len(backend.requests), 3)
        # A slot freed is a slot again.
        await clients[0].abort()
        self.assertTrue(await poll(lambda: site.connections == 2, 2))
        again = await connectClient(self, proxy.port)
        again.send(GET)
        [response] = await again.responses(1)
        self.assertEqual(response.status, 200)


class ParserRefusalTests(_LimitCase):
    """
    What Twisted's own parser refuses gets the same answer as the proxy's
    own refusals: a page, C{Connection: close}, the connection closed.
    """

    async def test_refusedWithPage(self) -> None:
        """
        A request with both C{Content-Length} and C{Transfer-Encoding} is
        answered 400 with the built-in page naming the status.
        """
        backend, proxy = await self.proxy()
        client = await self.refused(
            proxy.port,
            head(b"Content-Length: 3", b"Transfer-Encoding: chunked", method=b"POST") + b"0\r\n\r\n",
            400,
        )
        [response] = client.parser.responses
        self.assertIn(b"400 Bad Request", response.body)
        self.assertEqual(response.header(b"server"), [b"txrevproxy"])
        self.assertEqual(backend.requests, [])

    async def test_badChunkWhileStreaming(self) -> None:
        """
        A malformed chunk in a body already streaming to a backend: the
        client gets a 400 and the backend request is abandoned (the backend
        never sees a complete request).
        """
        backend, proxy = await self.proxy()
        backend.reading = True
        client = await connectClient(self, proxy.port)
        client.send(head(b"Transfer-Encoding: chunked", method=b"POST") + b"5\r\nhello\r\n")
        self.assertTrue(await poll(lambda: backend.accepted > 0, 3), "the body never started streaming")
        client.send(b"zz\r\nbad\r\n")
        [response] = await client.responses(1, timeout=5)
        self.assertEqual(response.status, 400)
        self.assertTrue(await client.waitClosed(3), "connection left open")
        self.assertTrue(await poll(lambda: not backend.open, 3), "backend connection not dropped")
        self.assertEqual(backend.requests, [])

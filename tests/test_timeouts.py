"""
read_timeout in the places where a backend can fall silent: in the middle
of a response body that has no length, and while it should be taking the
request body; and the client is told when its connection will close.
"""

from __future__ import annotations

import select
import socket
import time

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.helpers import (
    Reply,
    connectClient,
    parseResponses,
    proxyConfig,
    socketExchange,
    startBackend,
    startProxy,
    wait,
)




class ReadTimeoutTests(TestCase):
    timeout = 15

    async def test_silentInCloseDelimitedBody(self) -> None:
        """
        A backend that stops in the middle of a body with no length (the
        end would be its close) is cut by read_timeout: the client's
        chunked response never gets its last chunk and the connection
        closes; the cut never passes for the body's end.
        """
        backend = startBackend(self, Reply(body=b"x" * 1000, framing="close", cut=10, stall=True))
        proxy = await startProxy(self, proxyConfig([backend.port], {"read_timeout": "0.3"}))
        client = await connectClient(self, proxy.port)
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(await client.waitClosed(3), "the client connection was left open")
        self.assertNotIn(b"\r\n0\r\n\r\n", client.data)
        self.assertIn(b"xxxxxxxxxx", client.data)

    async def test_backendNotReadingTheBody(self) -> None:
        """
        A backend that accepts the connection but never reads the request
        body: after read_timeout of it taking nothing the client gets a
        504 (the body will not be read: the connection closes).
        """
        backend = startBackend(self)
        backend.reading = False
        proxy = await startProxy(self, proxyConfig([backend.port], {"read_timeout": "0.5"}))
        started = time.monotonic()
        data = await deferToThread(_upload_until_answered, proxy.port, 50_000_000)
        [response] = parseResponses(data)
        self.assertEqual(response.status, 504)
        self.assertEqual(response.header(b"connection"), [b"close"])
        self.assertLess(time.monotonic() - started, 6)


    async def test_silentAfterLateBody(self) -> None:
        """
        The read_timeout for the response head starts when the request body
        is complete, also when the body arrives after the backend
        connection was made: a backend that never answers gives 504.
        """
        backend = startBackend(self, Reply(hang=True))
        proxy = await startProxy(self, proxyConfig([backend.port], {"read_timeout": "0.3"}))
        client = await connectClient(self, proxy.port)
        client.send(b"POST /late HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n")
        await wait(0.3)
        client.send(b"body")
        [response] = await client.responses(1, timeout=3)
        self.assertEqual(response.status, 504)


class ConnectionCloseTests(TestCase):
    timeout = 10

    async def test_closeAnnounced(self) -> None:
        """
        A client that asked for C{Connection: close} gets it back on the
        proxied response, whatever the backend's headers said.
        """
        backend = startBackend(self, Reply(body=b"ok", headers=[(b"Connection", b"keep-alive")]))
        proxy = await startProxy(self, proxyConfig([backend.port]))
        data = await Deferred.fromCoroutine(
            _coroutine(socketExchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
        )
        [response] = parseResponses(data)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"connection"), [b"close"])


async def _coroutine(d: Deferred[bytes]) -> bytes:
    return await d


def _upload_until_answered(port: int, size: int, limit: float = 8.0) -> bytes:
    """
    PUT a C{size}-byte body, sending while the proxy takes it and reading
    whatever it answers meanwhile; return what was read once the proxy
    closed the connection (or C{limit} seconds passed).
    """
    head = b"PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size
    pending = head + b"x" * 65536
    left = size
    received = b""
    deadline = time.monotonic() + limit
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setblocking(False)
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([s], [s] if left or pending else [], [], 0.1)
            if readable:
                try:
                    chunk = s.recv(65536)
                except ConnectionError:
                    return received
                if not chunk:
                    return received
                received += chunk
            if writable and (left or pending):
                try:
                    sent = s.send(pending)
                except (BlockingIOError, ConnectionError):
                    continue
                pending = pending[sent:]
                if not pending and left:
                    piece = min(left, 65536)
                    left -= piece
                    pending = b"x" * piece
    return received

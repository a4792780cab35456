"""
A backend that answers before it has read the whole request body: the
answer reaches the client at once, not after the body (Twisted's own client
holds a response until its request is written; txrevproxy's does not).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from tests.helpers import connectClient, proxyConfig, startProxy, wait


class _EarlyAnswer(Protocol):
    """
    Answers as soon as a request head is in, and keeps reading.
    """

    def __init__(self, factory: _EarlyBackend) -> None:
        self.factory = factory
        self.buffer = b""
        self.answered = False

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        self.factory.received = max(self.factory.received, len(self.buffer))
        if not self.answered and b"\r\n\r\n" in self.buffer:
            self.answered = True
            self.transport.write(self.factory.answer)


class _EarlyBackend(Factory):
    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.received = 0

    def buildProtocol(self, addr: Any) -> _EarlyAnswer:
        return _EarlyAnswer(self)


class EarlyAnswerTests(TestCase):
    timeout = 15

    async def early(self, answer: bytes) -> tuple[Any, _EarlyBackend]:
        backend = _EarlyBackend(answer)
        port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        proxy = await startProxy(self, proxyConfig([port.getHost().port]))
        client = await connectClient(self, proxy.port)
        client.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        return client, backend

    async def test_refusalRelayedAtOnce(self) -> None:
        """
        A 413 sent while the body streams is relayed without waiting for
        the rest of the body, and the client is told the connection closes
        (what it has not sent yet will never be read).
        """
        client, backend = await self.early(b"HTTP/1.1 413 Too Large\r\nContent-Length: 4\r\n\r\nbig!")
        [response] = await client.responses(1, timeout=5)
        self.assertEqual((response.status, response.body), (413, b"big!"))
        self.assertIn(b"close", b",".join(response.header(b"connection")).lower())
        self.assertTrue(await client.waitClosed(5))

    async def test_fullDuplex(self) -> None:
        """
        A backend streaming its answer while it reads (an "echo" server)
        gets its head and first bytes to the client while the upload is
        still going on.
        """
        client, backend = await self.early(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
        )
        for _ in range(100):
            if b"first" in client.data:
                break
            await wait(0.05)
        self.assertIn(b"HTTP/1.1 200 OK", bytes(client.data))
        self.assertIn(b"first", bytes(client.data))
        self.assertLess(backend.received, 1000000, "the body was complete before the answer")

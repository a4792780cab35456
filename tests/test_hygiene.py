"""
Backend response hygiene end to end: a raw backend sends responses a proxy
must not relay, and the client must get a 502 (or the cleaned response),
never the ambiguity.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.helpers import startProxy


DROP = b"<drop the connection without answering>"


class _Canned(Protocol):
    """
    Answers every request head with the factory's next canned response.
    """

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.factory.heads.append(head.split(b" ")[0])
            answer = self.factory.answers.pop(0)
            if answer is DROP:
                self.transport.abortConnection()
                return
            self.transport.write(answer)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.closed += 1


def _config(backend: int, extra: str = "") -> str:
    """
    One proxy rule in front of the backend on C{backend}.
    """
    return (
        "[server]\naccess_log = off\n"
        f"[source:b]\naddress = 127.0.0.1:{backend}\n"
        "[rule:all]\nmatch = default\nhandler = proxy\nsources = b\n" + extra
    )


def _exchange(port: int, count: int = 1, method: bytes = b"GET") -> list[bytes]:
    """
    Send C{count} requests on one connection, one after the other; return
    the raw response to each (until it is complete or the connection closes).
    """
    responses = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for _ in range(count):
            s.sendall(method + b" / HTTP/1.1\r\nHost: client\r\nContent-Length: 0\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
            want = int(length[0].split(b":")[1]) if length else 0
            while len(body) < want:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
            responses.append(head + b"\r\n\r\n" + body)
    return responses


class HygieneTests(TestCase):
    timeout = 15

    def setUp(self) -> Any:
        self.backend = Factory.forProtocol(_Canned)
        self.backend.connections = self.backend.closed = 0
        self.backend.answers = []
        self.backend.heads = []
        port = reactor.listenTCP(0, self.backend, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return Deferred.fromCoroutine(self._proxy(port.getHost().port))

    async def _proxy(self, backend: int) -> None:
        self.port = (await startProxy(self, _config(backend))).port

    def answer(self, *responses: bytes, count: int = 1) -> Any:
        self.backend.answers.extend(responses)
        return deferToThread(_exchange, self.port, count)

    @inlineCallbacks
    def assertRefused(self, raw: bytes) -> Any:
        [response] = yield self.answer(raw)
        self.assertTrue(response.startswith(b"HTTP/1.1 502 "), response[:80])
        self.assertNotIn(b"secret", response)
        # The client may hear the 502 before the backend hears the close.
        for _ in range(40):
            if self.backend.closed:
                break
            yield deferLater(reactor, 0.05)
        self.assertEqual(self.backend.closed, 1, "the backend connection must be dropped")

    def test_lengthAndChunked(self) -> Any:
        return self.assertRefused(
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\nsecret\r\n0\r\n\r\n"
        )

    def test_otherCoding(self) -> Any:
        return self.assertRefused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nsecret")

    def test_twoCodings(self) -> Any:
        return self.assertRefused(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\nsecret\r\n0\r\n\r\n"
        )

    def test_repeatedLength(self) -> Any:
        return self.assertRefused(
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nContent-Length: 6\r\n\r\nsecret"
        )

    def test_badLength(self) -> Any:
        return self.assertRefused(b"HTTP/1.1 200 OK\r\nContent-Length: +6\r\n\r\nsecret")

    def test_badChunk(self) -> Any:
        return self.assertRefused(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nsecret\r\n0\r\n\r\n"
        )

    def test_badStatusLine(self) -> Any:
        return self.assertRefused(b"HTTP/1.1 two hundred\r\nContent-Length: 6\r\n\r\nsecret")

    def test_unsolicitedSwitch(self) -> Any:
        return self.assertRefused(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nsecret"
        )

    def test_controlByte(self) -> Any:
        return self.assertRefused(b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 6\r\n\r\nsecret")

    def test_hugeHead(self) -> Any:
        headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 1000) for i in range(80))
        return self.assertRefused(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 6\r\n\r\nsecret")

    @inlineCallbacks
    def test_interimIgnored(self) -> Any:
        """
        A 100 or 103 before the answer is not relayed; the answer is.
        """
        [response] = yield self.answer(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK\r\n"), response)
        self.assertTrue(response.endswith(b"\r\n\r\nok"))
        self.assertNotIn(b"Early", response)

    @inlineCallbacks
    def test_staleConnectionRenewed(self) -> Any:
        """
        With a single source, a GET lost on a reused connection (the backend
        dropped it without an answer, as when its idle timeout races the
        request) is tried once more on a new connection; a POST is not
        (it may have been acted on): 502.
        """
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        first, second = yield self.answer(ok, DROP, ok, count=2)
        self.assertTrue(second.startswith(b"HTTP/1.1 200 OK"), second)
        self.assertEqual(self.backend.heads, [b"GET", b"GET", b"GET"])
        self.assertEqual(self.backend.connections, 2)
        self.backend.answers.extend([ok, DROP])
        self.backend.heads.clear()
        first, second = yield deferToThread(_exchange, self.port, 2, b"POST")
        self.assertTrue(second.startswith(b"HTTP/1.1 502 "), second)
        self.assertEqual(self.backend.heads, [b"POST", b"POST"])

    @inlineCallbacks
    def test_connectionTokens(self) -> Any:
        """
        The fields a backend's C{Connection} names never reach the client,
        and C{Close} in any case keeps the connection out of the pool.
        """
        ok = b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, X-Secret\r\nX-Secret: 1\r\nX-Kept: 2\r\nContent-Length: 2\r\n\r\nok"
        closing = b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 2\r\n\r\nok"
        first, second, third = yield self.answer(ok, closing, ok, count=3)
        self.assertNotIn(b"X-Secret", first)
        self.assertIn(b"X-Kept: 2", first)
        self.assertTrue(third.endswith(b"ok"))
        self.assertEqual(self.backend.connections, 2, "the closed connection must not be reused")


class KeepAliveTimeoutTests(TestCase):
    """
    The pool honours a backend's C{Keep-Alive: timeout=N}.
    """

    def test_parsed(self) -> None:
        from txrevproxy._framing import keepalive_timeout

        self.assertEqual(keepalive_timeout([b"timeout=5, max=100"]), 5.0)
        self.assertEqual(keepalive_timeout([b"max=100", b" Timeout = 2"]), 2.0)
        self.assertIsNone(keepalive_timeout([b"max=100"]))
        self.assertIsNone(keepalive_timeout([b"timeout=soon"]))

    @inlineCallbacks
    def test_evictedBeforeBackendTimeout(self) -> Any:
        """
        A connection whose backend said C{timeout=2} leaves the pool after
        one second idle, although keepalive_timeout is 4.
        """
        backend = Factory.forProtocol(_Canned)
        backend.connections = backend.closed = 0
        backend.heads = []
        backend.answers = [
            b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=2\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ]
        port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        proxy = yield Deferred.fromCoroutine(startProxy(self, _config(port.getHost().port)))
        [first] = yield deferToThread(_exchange, proxy.port)
        self.assertTrue(first.endswith(b"ok"))
        d: Deferred[None] = Deferred()
        reactor.callLater(1.3, d.callback, None)
        yield d
        self.assertEqual(backend.closed, 1, "the idle connection should be closed by now")
        [second] = yield deferToThread(_exchange, proxy.port)
        self.assertTrue(second.endswith(b"ok"))
        self.assertEqual(backend.connections, 2)

    @inlineCallbacks
    def test_reuseNone(self) -> Any:
        """
        C{reuse_connections = 0} keeps no idle connection, and says so
        without an error: each request gets a new backend connection.
        """
        backend = Factory.forProtocol(_Canned)
        backend.connections = backend.closed = 0
        backend.heads = []
        backend.answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"] * 2
        port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        proxy = yield Deferred.fromCoroutine(
            startProxy(self, _config(port.getHost().port, "reuse_connections = 0\n"))
        )
        responses = yield deferToThread(_exchange, proxy.port, 2)
        self.assertTrue(all(r.endswith(b"ok") for r in responses))
        self.assertEqual(backend.connections, 2)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

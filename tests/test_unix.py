# -*- test-case-name: tests.test_unix -*-
"""
Tests for Unix sockets on both sides of the proxy: C{unix:/path} sources and
C{unix:} listeners.

Sockets live in a fresh temporary directory per test; the backends are
Twisted L{Site}s in this process (see L{tests.test_tls} for the harness).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.trial.unittest import TestCase

from tests.test_tls import (
    Harness,
    echo_site,
    get,
    header,
    parse_response,
    raw_request,
    temporary_directory,
)


class UnixTests(TestCase):
    timeout = 10

    def setUp(self) -> None:
        # The directory goes after the listeners in it are closed.
        self.dir = temporary_directory(self)
        self.harness = Harness(self)
        self.seen: list[dict[str, Any]] = []
        self.socket = str(self.dir / "backend.sock")

    def config(self) -> str:
        return (
            "[server]\naccess_log = off\n"
            f"[source:sock]\naddress = unix:{self.socket}\n"
            "[rule:all]\nmatch = default\nhandler = proxy\nsources = sock\n"
            "connect_timeout = 2\nread_timeout = 5\n"
        )

    def backend(self) -> Deferred[int]:
        return self.harness.listen(UNIXServerEndpoint(reactor, self.socket), echo_site(self.seen))

    @inlineCallbacks
    def test_source(self) -> Generator[Deferred[Any], Any, None]:
        """
        A C{unix:} source gets the request with C{Host: localhost} (it has no
        host name; nginx sends the same), the client's host in
        C{X-Forwarded-Host}, and its body; the connection is kept for the
        next request.
        """
        yield self.backend()
        front = yield self.harness.listen_on("tcp:0:interface=127.0.0.1", self.harness.proxy(self.config()))
        before = self.harness.accepted
        request = (
            b"POST /up?x=1 HTTP/1.1\r\nHost: www.example\r\nConnection: close\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )
        _, received = yield raw_request(front, request)
        status, _, _ = parse_response(received)
        self.assertEqual(status, 200)
        _, received = yield raw_request(front, get("www.example"))
        self.assertEqual(parse_response(received)[0], 200)
        first, second = self.seen
        self.assertEqual(first["uri"], "/up?x=1")
        self.assertEqual(first["body"], "hello")
        self.assertEqual(header(first, "host"), ["localhost"])
        self.assertEqual(header(first, "x-forwarded-host"), ["www.example"])
        self.assertEqual(header(first, "x-forwarded-for"), ["127.0.0.1"])
        # Two client connections and one, reused, to the backend.
        self.assertEqual(self.harness.accepted - before, 3)

    @inlineCallbacks
    def test_missing(self) -> Generator[Deferred[Any], Any, None]:
        """
        A socket nobody listens on is a failure to connect: 502, logged.
        """
        front = yield self.harness.listen_on("tcp:0:interface=127.0.0.1", self.harness.proxy(self.config()))
        _, received = yield raw_request(front, get("x"))
        self.assertEqual(parse_response(received)[0], 502)
        [line] = [line for line in self.harness.logged if "502 for" in line]
        self.assertIn("sock:", line)

    @inlineCallbacks
    def test_listener(self) -> Generator[Deferred[Any], Any, None]:
        """
        The proxy serves on a C{unix:} listener too.
        """
        yield self.backend()
        front = str(self.dir / "front.sock")
        yield self.harness.listen_on(f"unix:{front}", self.harness.proxy(self.config()))
        _, received = yield raw_request(0, get("www.example"), path=front)
        self.assertEqual(parse_response(received)[0], 200)
        [record] = self.seen
        self.assertEqual(header(record, "x-forwarded-host"), ["www.example"])
        self.assertEqual(header(record, "x-forwarded-proto"), ["http"])
        self.assertEqual(header(record, "x-forwarded-ssl"), ["off"])

"""
The README's library example, run as a user would: the proxy resource
mounted under C{/api/} of a plain C{twisted.web} tree, in front of a real
backend, over real sockets.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

_EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "library_example.py")


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("library_example", _EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Echo(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"backend saw " + request.method + b" " + request.uri


def _get(port: int, target: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


class LibraryExampleTests(TestCase):
    timeout = 10

    @inlineCallbacks
    def test_mountedUnderApi(self) -> Any:
        """
        What is below C{/api} reaches the backend without the prefix; the
        application's own page is its own.
        """
        backend = reactor.listenTCP(0, Site(_Echo()), interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        root = _load_example().make_root(reactor, backend.getHost().port)
        api = root.children[b"api"]
        for backend_agent in [b.agent for b in api.backends]:
            self.addCleanup(backend_agent.pool.closeCachedConnections)
        front = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(front.stopListening)
        port = front.getHost().port
        own = yield deferToThread(_get, port, b"/")
        self.assertIn(b"the application's own page", own)
        proxied = yield deferToThread(_get, port, b"/api/users?page=2")
        self.assertTrue(proxied.startswith(b"HTTP/1.1 200 OK"), proxied[:60])
        self.assertTrue(proxied.endswith(b"backend saw GET /users?page=2"), proxied[-60:])
        bare = yield deferToThread(_get, port, b"/api")
        self.assertTrue(bare.endswith(b"backend saw GET /"), bare[-60:])

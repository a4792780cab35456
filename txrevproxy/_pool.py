# -*- test-case-name: tests.test_pool -*-
"""
The keep-alive pool of a rule's source: Twisted's L{HTTPConnectionPool},
holding connections of our own protocol.

The pool keeps what it does well (idle connections per key, the idle cap,
the idle timeout); the connections are L{BackendProtocol}s, which parse
strictly and cost little per request.  The pool's factory is the one
private name of C{twisted.web} leaned on here; tests/test_pool.py fails
loudly should it move.
"""

from __future__ import annotations

from typing import Any

from twisted.web.client import HTTPConnectionPool

from ._client import BackendFactory

__all__ = ["BackendPool"]


class BackendPool(HTTPConnectionPool):
    """
    An L{HTTPConnectionPool} of L{BackendProtocol} connections, which lets
    an idle connection go a second before the backend's advertised
    C{Keep-Alive} timeout, so that the backend's close never races a new
    request on it.
    """

    _factory = BackendFactory

    def _putConnection(self, key: Any, connection: Any) -> None:
        if self.maxPersistentPerHost == 0:
            # reuse_connections = 0: nothing is kept (Twisted's pool would
            # fail to evict from an empty list).
            connection.transport.loseConnection()
            return
        super()._putConnection(key, connection)
        limit = connection.idle_limit
        timer = self._timeouts.get(connection)
        if limit is not None and timer is not None and limit - 1 < self.cachedConnectionTimeout:
            timer.reset(max(limit - 1, limit / 2))

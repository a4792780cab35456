# -*- test-case-name: tests.test_pool -*-
"""
The keep-alive pool of a rule's source: Twisted's L{HTTPConnectionPool},
holding connections of our own protocol.

The pool keeps Twisted's terms (idle connections per key, the idle cap,
the idle timeout, C{closeCachedConnections}) with three changes made for a
proxy, which takes a connection from it for every request it relays:

  - L{BackendPool.take} hands over an idle connection at once, without a
    L{Deferred};
  - the most recently used connection is taken first, so that the ones
    left idle are the ones that time out (and the least likely to have
    been closed by the backend in the meantime);
  - a connection's idle timer is moved, not cancelled and made anew, each
    time it goes back to the pool;

and it lets an idle connection go a second before the backend's advertised
C{Keep-Alive} timeout, so that the backend's close never races a new
request on it.  It leans on the pool's private C{_factory},
C{_connections} and C{_timeouts}, all covered by tests/test_pool.py.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import HTTPConnectionPool

from ._client import BackendFactory, BackendProtocol

__all__ = ["BackendPool"]


class BackendPool(HTTPConnectionPool):
    """
    An L{HTTPConnectionPool} of L{BackendProtocol} connections.
    """

    _factory = BackendFactory  # type: ignore[assignment]
    retryAutomatically = False  # Retries are the exchange's decision.

    def take(self, key: Any) -> Optional[BackendProtocol]:
        """
        An idle connection for C{key} ready to carry a request, if the pool
        holds one.
        """
        connections = self._connections.get(key)
        while connections:
            connection = connections.pop()
            if connection.state == "QUIESCENT":
                return connection  # type: ignore[no-any-return]
            self._forget(connection)
        return None

    def getConnection(self, key: Any, endpoint: IStreamClientEndpoint) -> Deferred[Any]:
        connection = self.take(key)
        if connection is not None:
            return succeed(connection)
        return self._newConnection(key, endpoint)

    _closing = False

    def _putConnection(self, key: Any, connection: Any) -> None:
        if connection.state != "QUIESCENT":
            return  # (Closed under its last response: nothing to keep.)
        if self.maxPersistentPerHost == 0 or self._closing:
            # reuse_connections = 0, or the pool is being shut: nothing is
            # kept.
            connection.transport.loseConnection()
            return
        connections = self._connections.setdefault(key, [])
        if len(connections) >= self.maxPersistentPerHost:
            dropped = connections.pop(0)
            self._forget(dropped)
            dropped.transport.loseConnection()
        connections.append(connection)
        timeout = self.cachedConnectionTimeout
        limit = connection.idle_limit
        if limit is not None and limit - 1 < timeout:
            timeout = max(limit - 1, limit / 2)
        timer = self._timeouts.get(connection)
        if timer is not None and timer.active():
            timer.reset(timeout)
        else:
            self._timeouts[connection] = self._reactor.callLater(
                timeout, self._removeConnection, key, connection
            )

    def _removeConnection(self, key: Any, connection: Any) -> None:
        # The timer of a connection in use fires harmlessly: it is only
        # moved, not cancelled, when the connection is taken.
        del self._timeouts[connection]
        connections = self._connections.get(key, [])
        if connection in connections:
            connections.remove(connection)
            connection.transport.loseConnection()

    def closeCachedConnections(self) -> Deferred[None]:
        # Connections still carrying a request close when they are done,
        # instead of coming back to a pool that is shutting.
        self._closing = True
        return super().closeCachedConnections()  # type: ignore[no-any-return]

    def _forget(self, connection: Any) -> None:
        timer = self._timeouts.pop(connection, None)
        if timer is not None and timer.active():
            timer.cancel()

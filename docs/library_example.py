"""
Mount the txrevproxy proxy resource under C{/api/} of an existing
C{twisted.web} resource tree.

The application serves its own pages; everything below C{/api/} is
forwarded to a backend on 127.0.0.1 (C{/api/users?page=2} arrives there as
C{/users?page=2}).

Run it with a backend listening on 127.0.0.1:8081, for instance
C{twist web --listen tcp:8081:interface=127.0.0.1 --path .}, then::

    python docs/library_example.py 8081
    curl http://127.0.0.1:8080/          # the application's own page
    curl http://127.0.0.1:8080/api/      # the backend's /
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.web.resource import Resource
from twisted.web.static import Data

import txrevproxy
from txrevproxy import SourceConfig


def make_root(reactor: Any, backend_port: int) -> Resource:
    """
    Build the application's resource tree with the proxy mounted at
    C{/api/}.

    @param reactor: The reactor the proxy uses for its timers and its
        connections to the backend.
    @param backend_port: The TCP port of the backend on 127.0.0.1.
    @return: The root resource, to serve with a L{twisted.web.server.Site}.
    """
    root = Resource()
    root.putChild(b"", Data(b"the application's own page\n", "text/plain"))
    api = txrevproxy.proxy_resource(
        [SourceConfig("app", f"127.0.0.1:{backend_port}")], reactor
    )
    root.putChild(b"api", api)
    return root


if __name__ == "__main__":
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.python.log import startLogging
    from twisted.web.server import Site

    startLogging(sys.stdout)
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8081
    site = Site(make_root(reactor, port))
    serverFromString(reactor, "tcp:8080:interface=127.0.0.1").listen(site)
    reactor.run()

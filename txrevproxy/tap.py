# -*- test-case-name: tests.test_cli -*-
"""
The twistd plugin's options and service: C{twistd -n revproxy
--config=conf/site.ini} and C{twist revproxy --config=...}.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.python import usage

from ._config import Configuration
from ._loader import ConfigError, load_config
from ._site import build
from ._summary import summary
from ._workers import ParentWatch, parse_tcp, shared_listener, worker_supervisors

__all__ = ["Options", "makeService"]

_log = Logger()


class Options(usage.Options):
    """
    Command-line options of the C{revproxy} plugin.
    """

    synopsis = "[options]"
    longdesc = "An HTTP reverse proxy and load balancer configured by an INI file."
    optParameters = [["config", "c", "conf/site.ini", "The configuration file."]]
    optFlags = [["worker", None, "(internal) Run as a worker process of [server] workers."]]
    compData = usage.Completions(optActions={"config": usage.CompleteFiles("*.ini")})

    configuration: Optional[Configuration] = None

    def postOptions(self) -> None:
        # A configuration mistake is one line on stderr and a non-zero exit
        # before anything listens, not a usage screen or a traceback.
        try:
            self.configuration = load_config(self["config"])
        except ConfigError as e:
            print(e, file=sys.stderr)
            raise SystemExit(1)


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the proxy service: the site, its listeners and its sources.
    """
    if reactor is None:
        from twisted.internet import reactor as installed

        reactor = installed
    config = options.configuration or load_config(options["config"])
    worker = bool(options["worker"])
    # Interpreter sources belong to the first process; workers reach them.
    runtime = build(config, reactor, start_interpreters=not worker)
    service = MultiService()
    runtime.service.setServiceParent(service)
    if config.server.workers > 1:
        for description in config.server.listen:
            shared_listener(reactor, description, runtime.site).setServiceParent(service)
        if worker:
            ParentWatch(reactor).setServiceParent(service)
            return service
        probe = parse_tcp(config.server.listen[0])
        path = config.path or options["config"]
        worker_supervisors(reactor, path, config.server.workers - 1, probe, service)
        for line in summary(config):
            _log.info("{line}", line=line)
        return service
    for description in config.server.listen:
        try:
            listener = strports.service(description, runtime.site, reactor=reactor)
        except (ValueError, KeyError, TypeError, OSError) as e:
            print(
                ConfigError(f"bad endpoint {description!r}: {e}", config.path or "<config>", "server", "listen"),
                file=sys.stderr,
            )
            raise SystemExit(1)
        listener._raiseSynchronously = True
        listener.setServiceParent(service)
    for line in summary(config):
        _log.info("{line}", line=line)
    return service

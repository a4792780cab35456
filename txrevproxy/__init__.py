"""
txrevproxy: an HTTP reverse proxy and load balancer on Twisted.

The public API for programs that embed the proxy:

  - L{load_config} reads a configuration file into frozen attrs records
    (L{Configuration} and the section classes), which can also be built in
    code;
  - L{build} turns a configuration into a L{Site}, its root resource and the
    services that go with it;
  - L{ReverseProxyResource} is the proxy itself, to mount under any path of
    an existing C{twisted.web} tree (or a Klein route), with
    L{proxy_resource} as the short way to make one.
"""

from ._backend import Backend
from ._balancers import BALANCER_KINDS, IBalancer, make_balancer
from ._config import (
    Configuration,
    ProxySettings,
    Redirect,
    RuleConfig,
    ServerConfig,
    SourceAddress,
    SourceConfig,
    VServerConfig,
)
from ._errorpages import ErrorPages
from ._library import proxy_resource
from ._loader import ConfigError, load_config, parse_config
from ._proxy import ReverseProxyResource
from ._rules import parse_condition
from ._server import ProxySite
from ._site import Runtime, build

__all__ = [
    "BALANCER_KINDS",
    "Backend",
    "ConfigError",
    "Configuration",
    "ErrorPages",
    "IBalancer",
    "ProxySettings",
    "ProxySite",
    "Redirect",
    "ReverseProxyResource",
    "RuleConfig",
    "Runtime",
    "ServerConfig",
    "SourceAddress",
    "SourceConfig",
    "VServerConfig",
    "build",
    "load_config",
    "make_balancer",
    "parse_condition",
    "parse_config",
    "proxy_resource",
]

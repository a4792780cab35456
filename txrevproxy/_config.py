# -*- test-case-name: tests.test_loader -*-
"""
The configuration model: frozen attrs records for every section of the
configuration file.

The INI loader fills these, and a program that embeds the proxy can build
them in code; either way the validators run, so an inconsistent
configuration cannot exist as an object.  Field names are the configuration
keys, which lets the loader name the key a validator complained about.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import attrs

from ._balancers import BALANCER_KINDS
from ._rules import Condition, Directory
from ._values import Network, Rewrite

__all__ = [
    "FieldError",
    "SourceAddress",
    "ServerConfig",
    "SourceConfig",
    "VServerConfig",
    "ProxySettings",
    "Redirect",
    "RuleConfig",
    "Configuration",
    "HANDLERS",
]

HANDLERS = ("proxy", "file", "redirect")
_SCHEME_PORTS = {"http": 80, "https": 443}
_HOSTPORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-_]+))(?::(?P<port>\d{1,5}))?$")


class FieldError(ValueError):
    """
    A value is wrong for the field (configuration key) named C{field}.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _check(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise FieldError(field, message)


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    _check(value > 0, attribute.name, f"must be greater than 0, not {value}")


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    _check(value >= 0, attribute.name, f"must not be negative, not {value}")


def _one_of(*choices: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
        _check(value in choices, attribute.name, f"must be one of {', '.join(choices)}, not {value!r}")

    return check


def _directory(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        _check(os.path.isdir(value), attribute.name, f"{value!r} is not a directory")


@attrs.frozen
class SourceAddress:
    """
    Where a source listens: C{http://host:port}, C{https://host:port} or
    C{unix:/path}.
    """

    scheme: str = attrs.field(validator=_one_of("http", "https", "unix"))
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> SourceAddress:
        """
        Parse C{HOST:PORT}, C{[V6]:PORT}, C{http://HOST:PORT},
        C{https://HOST[:PORT]} or C{unix:/path}.
        """
        text = original = text.strip()
        if text.startswith("unix:"):
            path = text[5:]
            if not path.startswith("/"):
                raise ValueError(f"unix socket path must be absolute: {text!r}")
            return cls("unix", path=path)
        scheme = "http"
        for prefix in ("http://", "https://"):
            if text.lower().startswith(prefix):
                scheme, text = prefix[:-3], text[len(prefix) :].rstrip("/")
        match = _HOSTPORT.match(text)
        if match is None:
            raise ValueError(f"expected HOST:PORT, [V6]:PORT, http(s)://HOST:PORT or unix:/path, not {text!r}")
        port = match.group("port")
        if port is None:
            if scheme == "http" and original == text:
                raise ValueError(f"{text!r} has no port (write HOST:PORT)")
            port = str(_SCHEME_PORTS[scheme])
        if not 0 < int(port) < 65536:
            raise ValueError(f"port {port} is out of range")
        return cls(scheme, host=match.group("v6") or match.group("host"), port=int(port))

    @property
    def host_header(self) -> bytes:
        """
        The C{Host} a request to this source carries: C{host[:port]}, the
        port left out when it is the scheme's default.
        """
        if self.scheme == "unix":
            return b"localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != _SCHEME_PORTS[self.scheme]:
            host = f"{host}:{self.port}"
        return host.encode("ascii")

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _lower_set(names: Any) -> frozenset[bytes]:
    # Header names compare case-insensitively; code may spell them anyhow.
    return frozenset(name.lower() for name in names)


def _address(value: SourceAddress | str) -> SourceAddress:
    return value if isinstance(value, SourceAddress) else SourceAddress.parse(value)


@attrs.frozen
class ServerConfig:
    """
    The C{[server]} section.
    """

    listen: tuple[str, ...] = attrs.field(default=("tcp:8080",), converter=tuple)
    server_tokens: str = attrs.field(default="txrevproxy")
    access_log: str = "-"
    timeout: float = attrs.field(default=60.0, validator=_positive)
    header_timeout: float = attrs.field(default=10.0, validator=_positive)
    max_body_size: int = attrs.field(default=0, validator=_non_negative)
    trusted_proxies: tuple[Network, ...] = attrs.field(default=(), converter=tuple)
    workers: int = attrs.field(default=1, validator=_positive)
    max_connections: int = attrs.field(default=10000, validator=_positive)

    @listen.validator
    def _listen(self, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        _check(bool(value), "listen", "at least one endpoint is needed")

    @server_tokens.validator
    def _tokens(self, attribute: attrs.Attribute[Any], value: str) -> None:
        _check(
            value.isprintable() and value.isascii(),
            "server_tokens",
            "must be printable ASCII",
        )


@attrs.frozen
class SourceConfig:
    """
    A C{[source:NAME]} section: one backend.
    """

    name: str
    address: SourceAddress = attrs.field(converter=_address)
    type: str = attrs.field(default="host", validator=_one_of("host", "interpreter"))
    weight: int = attrs.field(default=1, validator=_positive)
    tls_ca: Optional[str] = attrs.field(default=None)
    tls_verify: bool = True
    interpreter: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    env: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=tuple)
    spawn_timeout: float = attrs.field(default=10.0, validator=_positive)

    @tls_ca.validator
    def _ca(self, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is not None:
            _check(os.path.isfile(value), "tls_ca", f"{value!r} is not a file")
            _check(self.address.scheme == "https", "tls_ca", "applies to https:// addresses only")
            # Imported here: the endpoints module needs this one first.
            from ._endpoints import load_ca_certificates

            try:
                load_ca_certificates(value)
            except (OSError, ValueError) as e:
                raise FieldError("tls_ca", str(e)) from None

    @interpreter.validator
    def _interpreter(self, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        if self.type == "interpreter":
            _check(bool(value), "interpreter", "required for type = interpreter")
        else:
            _check(not value, "interpreter", "applies to type = interpreter only")
            _check(not self.env, "env", "applies to type = interpreter only")


@attrs.frozen
class VServerConfig:
    """
    A C{[vserver:NAME]} section: a set of host names and their rules.
    """

    name: str
    hosts: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    document_root: Optional[str] = attrs.field(default=None, validator=_directory)
    error_pages: Optional[str] = attrs.field(default=None, validator=_directory)

    @hosts.validator
    def _hosts(self, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        for host in value:
            _check(
                re.match(r"^(\*\.)?[A-Za-z0-9.\-_]+$|^\*$", host) is not None,
                "hosts",
                f"{host!r} is not a host name or *.wildcard",
            )


@attrs.frozen
class ProxySettings:
    """
    The keys of a rule with C{handler = proxy}.
    """

    sources: tuple[str, ...] = attrs.field(converter=tuple)
    balancer: str = attrs.field(default="round_robin", validator=_one_of(*BALANCER_KINDS))
    reuse_connections: int = attrs.field(default=16, validator=_non_negative)
    allow_keepalive: bool = True
    keepalive_timeout: float = attrs.field(default=4.0, validator=_positive)
    preserve_host: bool = False
    preserve_server: bool = False
    vserver_errors: bool = False
    request_rewrite: tuple[Rewrite, ...] = attrs.field(default=(), converter=tuple)
    request_add_headers: tuple[tuple[bytes, bytes], ...] = attrs.field(default=(), converter=tuple)
    request_hide_headers: frozenset[bytes] = attrs.field(default=frozenset(), converter=_lower_set)
    reply_rewrite: tuple[Rewrite, ...] = attrs.field(default=(), converter=tuple)
    reply_add_headers: tuple[tuple[bytes, bytes], ...] = attrs.field(default=(), converter=tuple)
    reply_hide_headers: frozenset[bytes] = attrs.field(default=frozenset(), converter=_lower_set)
    x_sendfile: bool = True
    connect_timeout: float = attrs.field(default=5.0, validator=_positive)
    read_timeout: float = attrs.field(default=60.0, validator=_positive)
    max_fails: int = attrs.field(default=1, validator=_non_negative)
    fail_timeout: float = attrs.field(default=10.0, validator=_positive)
    health_check: Optional[str] = attrs.field(default=None)
    health_interval: float = attrs.field(default=5.0, validator=_positive)

    @sources.validator
    def _sources(self, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        _check(bool(value), "sources", "at least one source is needed")
        _check(len(set(value)) == len(value), "sources", "a source is listed twice")

    @health_check.validator
    def _health(self, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is not None:
            _check(value.startswith("/") and value.isprintable() and " " not in value,
                   "health_check", f"must be a path starting with /, not {value!r}")


@attrs.frozen
class Redirect:
    """
    C{redirect = STATUS URL}: C{$path}, C{$query} and C{$host} in the URL are
    replaced by the request's.
    """

    status: int = attrs.field(validator=lambda i, a, v: _check(v in (301, 302, 303, 307, 308), "redirect", f"status must be 301, 302, 303, 307 or 308, not {v}"))
    url: str = attrs.field(validator=lambda i, a, v: _check(bool(v) and v.isprintable() and " " not in v, "redirect", "needs a URL without spaces"))

    @classmethod
    def parse(cls, text: str) -> Redirect:
        words = text.split()
        if len(words) != 2 or not words[0].isdigit():
            raise ValueError(f"expected 'STATUS URL', not {text!r}")
        return cls(int(words[0]), words[1])


@attrs.frozen
class RuleConfig:
    """
    A C{[rule:NAME]} section: conditions and the handler of the requests
    that meet them.
    """

    name: str
    handler: str = attrs.field(validator=_one_of(*HANDLERS))
    match: tuple[Condition, ...] = attrs.field(converter=tuple)
    vserver: str = "default"
    priority: int = 0
    internal: bool = False
    strip_directory: bool = False
    document_root: Optional[str] = attrs.field(default=None, validator=_directory)
    redirect: Optional[Redirect] = None
    proxy: Optional[ProxySettings] = None

    def __attrs_post_init__(self) -> None:
        _check(bool(self.match), "match", "at least one condition is needed")
        _check((self.proxy is not None) == (self.handler == "proxy"), "handler",
               "proxy settings go with handler = proxy only")
        _check((self.redirect is not None) == (self.handler == "redirect"), "redirect",
               "required for handler = redirect, and only there")
        if self.handler != "file":
            _check(self.document_root is None, "document_root", "applies to handler = file only")
        if self.strip_directory:
            _check(self.strip_prefix is not None, "strip_directory",
                   "needs a 'directory' condition in match")

    @property
    def strip_prefix(self) -> str | None:
        """
        The directory removed from the path before forwarding or serving,
        when C{strip_directory = yes}.
        """
        for condition in self.match:
            if isinstance(condition, Directory):
                return condition.prefix
        return None


def _unique(kind: str, names: Sequence[str]) -> None:
    seen = set()
    for name in names:
        _check(name not in seen, kind, f"{name!r} is defined twice")
        seen.add(name)


@attrs.frozen
class Configuration:
    """
    A whole configuration: what one proxy process runs.

    @ivar rules: In match order: highest priority first, file order among
        equals.
    @ivar path: The file it was read from, for messages; L{None} when built
        in code.
    """

    server: ServerConfig = attrs.field(factory=ServerConfig)
    sources: tuple[SourceConfig, ...] = attrs.field(default=(), converter=tuple)
    vservers: tuple[VServerConfig, ...] = attrs.field(
        default=(VServerConfig("default"),), converter=tuple
    )
    rules: tuple[RuleConfig, ...] = attrs.field(
        default=(), converter=lambda rules: tuple(sorted(rules, key=lambda r: -r.priority))
    )
    path: Optional[str] = None

    def __attrs_post_init__(self) -> None:
        _unique("source", [s.name for s in self.sources])
        _unique("vserver", [v.name for v in self.vservers])
        _unique("rule", [r.name for r in self.rules])
        vservers = {v.name: v for v in self.vservers}
        _check("default" in vservers, "vserver", "a vserver named 'default' must exist")
        sources = self.source_map
        for rule in self.rules:
            _check(rule.vserver in vservers, "vserver",
                   f"rule {rule.name!r} names an undefined vserver {rule.vserver!r}")
            if rule.proxy is not None:
                for name in rule.proxy.sources:
                    _check(name in sources, "sources",
                           f"rule {rule.name!r} names an undefined source {name!r}")
            if rule.handler == "file":
                _check(rule.document_root is not None or vservers[rule.vserver].document_root is not None,
                       "document_root", f"rule {rule.name!r} needs a document_root (rule or vserver)")

    @property
    def source_map(self) -> Mapping[str, SourceConfig]:
        """
        The sources by name.
        """
        return {source.name: source for source in self.sources}

    def rules_of(self, vserver: str) -> tuple[RuleConfig, ...]:
        """
        The rules of one vserver, in match order.
        """
        return tuple(rule for rule in self.rules if rule.vserver == vserver)

# -*- test-case-name: tests.test_loader -*-
"""
Reading the INI configuration file into a L{Configuration}.

Every mistake becomes one L{ConfigError} whose text names the file, the line
where it can be had, the section and the key: the operator should be able to
fix a typo from the one line, without reading a traceback.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from ._config import (
    Configuration,
    FieldError,
    ProxySettings,
    Redirect,
    RuleConfig,
    ServerConfig,
    SourceAddress,
    SourceConfig,
    VServerConfig,
)
from ._rules import parse_condition
from ._workers import parse_tcp
from ._values import (
    parse_argv,
    parse_bool,
    parse_duration,
    parse_env,
    parse_header_names,
    parse_header_pairs,
    parse_int,
    parse_names,
    parse_networks,
    parse_rewrites,
    parse_size,
)

__all__ = ["ConfigError", "load_config", "parse_config"]

Parser = Callable[[str], Any]


class ConfigError(Exception):
    """
    A configuration file is wrong; C{str(error)} is the one-line report.
    """

    def __init__(
        self,
        message: str,
        path: str = "<config>",
        section: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        self.path = path
        self.section = section
        self.key = key
        self.line = line
        self.message = message
        where = path if line is None else f"{path}:{line}"
        if section is not None:
            where += f": [{section}]"
            if key is not None:
                where += f" {key}"
        super().__init__(f"{where}: {message}")


def _text(value: str) -> str:
    return value.strip()


def _optional_path(value: str) -> str:
    path = os.path.abspath(os.path.expanduser(value.strip()))
    return path


def _conditions(value: str) -> tuple[Any, ...]:
    return tuple(parse_condition(line) for line in value.splitlines() if line.strip())


_SERVER: Mapping[str, Parser] = {
    "listen": parse_names,
    "server_tokens": _text,
    "access_log": _text,
    "timeout": parse_duration,
    "header_timeout": parse_duration,
    "max_body_size": parse_size,
    "trusted_proxies": parse_networks,
    "workers": lambda v: parse_int(v, 1),
    "max_connections": lambda v: parse_int(v, 1),
}

_SOURCE: Mapping[str, Parser] = {
    "type": _text,
    "address": SourceAddress.parse,
    "weight": lambda v: parse_int(v, 1),
    "tls_ca": _optional_path,
    "tls_verify": parse_bool,
    "interpreter": parse_argv,
    "env": parse_env,
    "spawn_timeout": parse_duration,
}

_VSERVER: Mapping[str, Parser] = {
    "hosts": lambda v: tuple(h.lower() for h in parse_names(v)),
    "document_root": _optional_path,
    "error_pages": _optional_path,
}

_RULE: Mapping[str, Parser] = {
    "vserver": _text,
    "priority": parse_int,
    "match": _conditions,
    "internal": parse_bool,
    "handler": _text,
    "strip_directory": parse_bool,
    "document_root": _optional_path,
    "redirect": Redirect.parse,
}

_PROXY: Mapping[str, Parser] = {
    "sources": parse_names,
    "balancer": _text,
    "reuse_connections": lambda v: parse_int(v, 0),
    "allow_keepalive": parse_bool,
    "keepalive_timeout": parse_duration,
    "preserve_host": parse_bool,
    "preserve_server": parse_bool,
    "vserver_errors": parse_bool,
    "request_rewrite": parse_rewrites,
    "request_add_headers": parse_header_pairs,
    "request_hide_headers": parse_header_names,
    "reply_rewrite": parse_rewrites,
    "reply_add_headers": parse_header_pairs,
    "reply_hide_headers": parse_header_names,
    "x_sendfile": parse_bool,
    "connect_timeout": parse_duration,
    "read_timeout": parse_duration,
    "max_fails": lambda v: parse_int(v, 0),
    "fail_timeout": parse_duration,
    "health_check": _text,
    "health_interval": parse_duration,
}

_REQUIRED = {"source": ("address",), "rule": ("match", "handler")}


def _key_lines(text: str) -> dict[tuple[str, str], int]:
    """
    Find the line of each C{key} in each C{[section]}: configparser does not
    keep line numbers, and a report without one makes the reader search.
    """
    lines: dict[tuple[str, str], int] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"^\s*\[([^\]]+)\]", line)
        if header:
            section = header.group(1).strip()
            lines[(section, "")] = number
            continue
        key = re.match(r"^([^\s#;=:][^=:]*?)\s*[=:]", line)
        if key:
            lines.setdefault((section, key.group(1).strip().lower()), number)
    return lines


class _Reader:
    """
    One file being read: carries the path and line index that every error
    needs, so the conversion code below stays about values.
    """

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = _key_lines(text)

    def error(self, message: str, section: str | None = None, key: str | None = None) -> ConfigError:
        line = None
        if section is not None:
            line = self.lines.get((section, key or ""), self.lines.get((section, "")))
        return ConfigError(message, self.path, section, key, line)

    def convert(
        self, section: str, items: Mapping[str, str], schema: Mapping[str, Parser]
    ) -> dict[str, Any]:
        values = {}
        for key, raw in items.items():
            parser = schema.get(key)
            if parser is None:
                raise self.error("unknown key", section, key)
            try:
                values[key] = parser(raw)
            except ValueError as e:
                raise self.error(str(e), section, key) from None
        return values

    def build(self, section: str, cls: type, **values: Any) -> Any:
        try:
            return cls(**values)
        except FieldError as e:
            raise self.error(e.message, section, e.field) from None
        except (TypeError, ValueError) as e:
            raise self.error(str(e), section) from None


def _split_rule(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    proxy = {k: values.pop(k) for k in list(values) if k in _PROXY}
    return values, proxy


def parse_config(text: str, path: str = "<config>") -> Configuration:
    """
    Parse the text of a configuration file.

    @param path: The file name used in error messages and to resolve
        relative paths (relative to the current directory, as twistd and
        nginx -p do).
    @raise ConfigError: The text is not a valid configuration.
    """
    reader = _Reader(path, text)
    parser = configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=("#", ";"),
        comment_prefixes=("#", ";"),
        default_section="\0none",
        strict=True,
        empty_lines_in_values=False,
    )
    try:
        parser.read_string(text, source=path)
    except configparser.DuplicateOptionError as e:
        raise ConfigError("key given twice", path, e.section, e.option, e.lineno) from None
    except configparser.DuplicateSectionError as e:
        raise ConfigError("section given twice", path, e.section, None, e.lineno) from None
    except configparser.Error as e:
        raise ConfigError(str(e).splitlines()[0], path) from None

    server = ServerConfig()
    sources, vservers, rules = [], [], []
    for section in parser.sections():
        items = dict(parser.items(section))
        kind, colon, name = section.partition(":")
        kind, name = kind.strip(), name.strip()
        if section == "server":
            server = reader.build(section, ServerConfig, **reader.convert(section, items, _SERVER))
            continue
        if not colon or not name or kind not in ("source", "vserver", "rule"):
            raise reader.error(
                "unknown section (expected [server], [source:NAME], [vserver:NAME] or [rule:NAME])",
                section,
            )
        for key in _REQUIRED.get(kind, ()):
            if key not in items:
                raise reader.error("required key is missing", section, key)
        if kind == "source":
            values = reader.convert(section, items, _SOURCE)
            sources.append(reader.build(section, SourceConfig, name=name, **values))
        elif kind == "vserver":
            values = reader.convert(section, items, _VSERVER)
            vservers.append(reader.build(section, VServerConfig, name=name, **values))
        else:
            rules.append(_rule(reader, section, name, items))
    if not any(v.name == "default" for v in vservers):
        vservers.append(VServerConfig("default"))
    _check_references(reader, sources, vservers, rules)
    if server.workers > 1:
        for description in server.listen:
            try:
                parse_tcp(description)
            except ValueError as e:
                raise reader.error(str(e), "server", "workers") from None
    try:
        return Configuration(server=server, sources=sources, vservers=vservers, rules=rules, path=path)
    except FieldError as e:
        raise reader.error(e.message) from None


def _rule(reader: _Reader, section: str, name: str, items: Mapping[str, str]) -> RuleConfig:
    handler = items["handler"].strip()
    schema = dict(_RULE)
    if handler == "proxy":
        schema.update(_PROXY)
    for key in items:
        if key not in schema and key in _PROXY:
            raise reader.error("applies to handler = proxy only", section, key)
    values, proxy = _split_rule(reader.convert(section, items, schema))
    if handler == "proxy":
        if "sources" not in proxy:
            raise reader.error("required key is missing", section, "sources")
        values["proxy"] = reader.build(section, ProxySettings, **proxy)
    return reader.build(section, RuleConfig, name=name, **values)


def _check_references(
    reader: _Reader,
    sources: list[SourceConfig],
    vservers: list[VServerConfig],
    rules: list[RuleConfig],
) -> None:
    source_names = {s.name for s in sources}
    vserver_names = {v.name for v in vservers}
    for rule in rules:
        section = f"rule:{rule.name}"
        if rule.vserver not in vserver_names:
            raise reader.error(f"undefined vserver {rule.vserver!r}", section, "vserver")
        if rule.proxy is not None:
            for source in rule.proxy.sources:
                if source not in source_names:
                    raise reader.error(f"undefined source {source!r}", section, "sources")


def load_config(path: str) -> Configuration:
    """
    Read and validate a configuration file.

    @raise ConfigError: The file cannot be read or is not valid.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the file: {e}", path) from None
    return parse_config(text, path)


# -*- test-case-name: tests.test_rules -*-
"""
Rule conditions: what a rule's C{match} lines mean and how a request is
tested against them.

Conditions look at a L{RequestFacts}, built once per request, whose path is
percent-decoded and normalised (dot-segments resolved, repeated slashes
merged).  Matching the normalised path is what makes C{directory /admin}
also catch C{/%61dmin} and C{/x/../admin}: a backend decodes those to the
same place, so a rule must not be sidestepped by spelling.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Protocol, Union
from urllib.parse import unquote_to_bytes

import attrs
from twisted.web.http_headers import Headers

from ._values import Network, is_token, parse_networks

__all__ = [
    "Condition",
    "RequestFacts",
    "normalize_path",
    "parse_condition",
    "matches_all",
    "Default",
    "Directory",
    "Extensions",
    "Regex",
    "FullPath",
    "Method",
    "Header",
    "From",
    "TLS",
    "Not",
]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def normalize_path(raw: bytes) -> str:
    """
    Decode a request path for matching: percent-decoded (as UTF-8, undecodable
    bytes kept as surrogates), dot-segments removed as RFC 3986 §5.2.4 says,
    and runs of slashes merged, as nginx does before it matches locations.
    """
    text = unquote_to_bytes(raw).decode("utf-8", "surrogateescape")
    segments: list[str] = []
    for segment in text.split("/")[1:]:
        if segment == "..":
            if segments:
                segments.pop()
        elif segment != "." and segment != "":
            segments.append(segment)
    trailing = text.endswith(("/", "/.", "/..")) and bool(segments)
    return "/" + "/".join(segments) + ("/" if trailing else "")


@attrs.frozen
class RequestFacts:
    """
    What rules match against, computed once per request.

    @ivar method: The request method as sent.
    @ivar path: The normalised path (see L{normalize_path}).
    @ivar query: The raw query string without C{?}, or L{None} when the
        target had no C{?}.
    @ivar headers: The request headers.
    @ivar client: The client address (after C{trusted_proxies}), if known.
    @ivar tls: Whether the request arrived over TLS.
    """

    method: bytes
    path: str
    query: str | None
    headers: Headers
    client: IPAddress | None
    tls: bool


class Condition(Protocol):
    """
    One C{match} line.
    """

    def matches(self, facts: RequestFacts) -> bool:
        """
        Whether the request satisfies this condition.
        """


@attrs.frozen
class Default:
    """C{default}: always holds."""

    def matches(self, facts: RequestFacts) -> bool:
        return True


@attrs.frozen
class Directory:
    """C{directory /PATH}: the path is C{/PATH} or below it."""

    prefix: str

    def matches(self, facts: RequestFacts) -> bool:
        path = facts.path
        return self.prefix == "/" or path == self.prefix or path.startswith(self.prefix + "/")


@attrs.frozen
class Extensions:
    """C{extensions EXT...}: the last segment ends in C{.EXT} (any case)."""

    extensions: frozenset[str]

    def matches(self, facts: RequestFacts) -> bool:
        last = facts.path.rsplit("/", 1)[-1]
        dot = last.rfind(".")
        return dot > 0 and last[dot + 1 :].lower() in self.extensions


@attrs.frozen
class Regex:
    """C{regex PATTERN}: C{re.search} on the path plus C{?query}."""

    pattern: re.Pattern[str]

    def matches(self, facts: RequestFacts) -> bool:
        text = facts.path if facts.query is None else facts.path + "?" + facts.query
        return self.pattern.search(text) is not None


@attrs.frozen
class FullPath:
    """C{fullpath /P...}: the path is exactly one of these."""

    paths: frozenset[str]

    def matches(self, facts: RequestFacts) -> bool:
        return facts.path in self.paths


@attrs.frozen
class Method:
    """C{method M...}: the method is one of these (methods are case-sensitive)."""

    methods: frozenset[bytes]

    def matches(self, facts: RequestFacts) -> bool:
        return facts.method in self.methods


@attrs.frozen
class Header:
    """C{header NAME PATTERN}: some value of that header matches C{re.search}."""

    name: bytes
    pattern: re.Pattern[str]

    def matches(self, facts: RequestFacts) -> bool:
        return any(
            self.pattern.search(value.decode("latin-1"))
            for value in facts.headers.getRawHeaders(self.name, ())
        )


@attrs.frozen
class From:
    """C{from CIDR...}: the client address is in one of these networks."""

    networks: tuple[Network, ...]

    def matches(self, facts: RequestFacts) -> bool:
        client = facts.client
        return client is not None and any(client in net for net in self.networks)


@attrs.frozen
class TLS:
    """C{tls}: the request arrived over TLS."""

    def matches(self, facts: RequestFacts) -> bool:
        return facts.tls


@attrs.frozen
class Not:
    """C{not CONDITION}: the condition does not hold."""

    condition: Condition

    def matches(self, facts: RequestFacts) -> bool:
        return not self.condition.matches(facts)


def matches_all(conditions: Sequence[Condition], facts: RequestFacts) -> bool:
    """
    Whether every condition holds (a rule's C{match} lines are a conjunction).
    """
    for condition in conditions:
        if not condition.matches(facts):
            return False
    return True


def _path_argument(word: str) -> str:
    if not word.startswith("/"):
        raise ValueError(f"path {word!r} must start with /")
    return normalize_path(word.encode("utf-8")).rstrip("/") or "/"


def _compile(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as e:
        raise ValueError(f"bad regular expression {text!r}: {e}") from None


def parse_condition(line: str) -> Condition:
    """
    Parse one C{match} line, such as C{directory /app} or
    C{not from 10.0.0.0/8}.

    @raise ValueError: The line is not a condition.
    """
    words = line.split(None, 1)
    if not words:
        raise ValueError("empty condition")
    kind = words[0].lower()
    rest = words[1].strip() if len(words) > 1 else ""
    args = rest.split()
    if kind == "not":
        if not rest:
            raise ValueError("'not' needs a condition after it")
        return Not(parse_condition(rest))
    if kind in ("default", "tls"):
        if rest:
            raise ValueError(f"{kind!r} takes no arguments")
        return Default() if kind == "default" else TLS()
    if not args:
        raise ValueError(f"{kind!r} needs arguments")
    if kind == "directory":
        if len(args) != 1:
            raise ValueError("'directory' takes one path")
        return Directory(_path_argument(args[0]))
    if kind == "extensions":
        return Extensions(frozenset(a.lstrip(".").lower() for a in args))
    if kind == "regex":
        return Regex(_compile(rest))
    if kind == "fullpath":
        for a in args:
            if not a.startswith("/"):
                raise ValueError(f"path {a!r} must start with /")
        return FullPath(frozenset(normalize_path(a.encode("utf-8")) for a in args))
    if kind == "method":
        methods = frozenset(a.encode("ascii", "replace") for a in args)
        for m in methods:
            if not is_token(m):
                raise ValueError(f"{m.decode()!r} is not a method name")
        return Method(methods)
    if kind == "header":
        parts = rest.split(None, 1)
        name = parts[0].encode("ascii", "replace")
        if len(parts) != 2 or not is_token(name):
            raise ValueError("'header' takes a header name and a pattern")
        return Header(name.lower(), _compile(parts[1]))
    if kind == "from":
        return From(parse_networks(rest))
    raise ValueError(
        f"unknown condition {kind!r} (expected default, directory, extensions, "
        "regex, fullpath, method, header, from, tls, or not ...)"
    )

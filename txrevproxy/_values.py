# -*- test-case-name: tests.test_values -*-
"""
Parsers for the text values of the configuration file.

Each parser takes the text of one INI value and returns a typed value or
raises L{ValueError} with a message fit to follow "section key:" in a
one-line error.  The loader names the file, section and key; these functions
only say what is wrong with the value.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Sequence
from typing import Union

import attrs

__all__ = [
    "Network",
    "Rewrite",
    "apply_rewrites",
    "parse_argv",
    "parse_bool",
    "parse_duration",
    "parse_env",
    "parse_header_pairs",
    "parse_header_names",
    "parse_int",
    "parse_names",
    "parse_networks",
    "parse_rewrites",
    "parse_size",
    "is_token",
]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_TRUE = frozenset({"yes", "true", "on", "1"})
_FALSE = frozenset({"no", "false", "off", "0"})
_SIZE = re.compile(r"^(\d+)\s*([kmg]?)b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_GROUP = re.compile(r"\$(\d{1,2})|\$\{(\d{1,2})\}")


def is_token(name: bytes) -> bool:
    """
    Whether C{name} is an RFC 9110 token, the only shape a header name or a
    method may have.
    """
    return _TOKEN.fullmatch(name) is not None


def parse_bool(text: str) -> bool:
    """
    Parse yes/no, true/false, on/off or 1/0, in any case.
    """
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected yes or no, not {text!r}")


def parse_int(text: str, minimum: int | None = None) -> int:
    """
    Parse a whole number, optionally bounded below.
    """
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"expected a whole number, not {text!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"must be at least {minimum}, not {value}")
    return value


def parse_size(text: str) -> int:
    """
    Parse a size in bytes with an optional binary C{k}, C{m} or C{g} suffix,
    as nginx reads them (C{1m} is 1048576 bytes).
    """
    match = _SIZE.match(text.strip())
    if match is None:
        raise ValueError(f"expected a size such as 512, 64k, 10m or 1g, not {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def parse_duration(text: str) -> float:
    """
    Parse a non-negative number of seconds; fractions are allowed.
    """
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"expected a number of seconds, not {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"expected a finite number of seconds >= 0, not {text!r}")
    return value


def parse_names(text: str) -> tuple[str, ...]:
    """
    Split a list of names separated by whitespace or newlines.
    """
    return tuple(text.split())


def parse_header_names(text: str) -> frozenset[bytes]:
    """
    Parse a list of header names into a set of lower-case byte strings, the
    form header hiding compares against.
    """
    names = set()
    for name in text.split():
        raw = name.encode("ascii", "replace")
        if not is_token(raw):
            raise ValueError(f"{name!r} is not a valid header name")
        names.add(raw.lower())
    return frozenset(names)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_header_pairs(text: str) -> tuple[tuple[bytes, bytes], ...]:
    """
    Parse lines of C{Name: value} into header pairs, in order.
    """
    pairs = []
    for line in _lines(text):
        name, colon, value = line.partition(":")
        raw_name = name.strip().encode("ascii", "replace")
        if not colon or not is_token(raw_name):
            raise ValueError(f"expected 'Name: value', not {line!r}")
        pairs.append((raw_name, value.strip().encode("utf-8")))
    return tuple(pairs)


def parse_env(text: str) -> tuple[tuple[str, str], ...]:
    """
    Parse lines of C{NAME=value} for an interpreter's environment.
    """
    pairs = []
    for line in _lines(text):
        name, equals, value = line.partition("=")
        name = name.strip()
        if not equals or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise ValueError(f"expected NAME=value, not {line!r}")
        pairs.append((name, value.strip()))
    return tuple(pairs)


def parse_argv(text: str) -> tuple[str, ...]:
    """
    Split a command line as a POSIX shell would, without running a shell.
    """
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise ValueError(f"cannot split the command line: {e}") from None
    if not argv:
        raise ValueError("the command line is empty")
    return tuple(argv)


def parse_networks(text: str) -> tuple[Network, ...]:
    """
    Parse a list of CIDRs (or single addresses, taken as /32 or /128).
    """
    networks = []
    for word in text.split():
        try:
            networks.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            raise ValueError(f"{word!r} is not an IP network such as 10.0.0.0/8") from None
    return tuple(networks)


@attrs.frozen
class Rewrite:
    """
    One C{REGEX REPLACEMENT} line: the first rewrite whose pattern matches
    replaces the text (only the first occurrence).

    @ivar pattern: The compiled pattern, matched with C{re.search}.
    @ivar replacement: A C{re.sub} template; C{$1} in the configuration has
        been turned into C{\\1}.
    """

    pattern: re.Pattern[str]
    replacement: str

    def apply(self, text: str) -> str | None:
        """
        Return the rewritten text, or L{None} when the pattern does not match.
        """
        match = self.pattern.search(text)
        if match is None:
            return None
        return text[: match.start()] + match.expand(self.replacement) + text[match.end() :]


def _template(replacement: str) -> str:
    # $1 and ${1} are the Cherokee/nginx spellings; re wants \g<1>.
    return _GROUP.sub(lambda m: "\\g<" + (m.group(1) or m.group(2)) + ">", replacement)


def apply_rewrites(rewrites: Sequence[Rewrite], value: bytes) -> bytes:
    """
    Rewrite C{value} with the first of C{rewrites} whose pattern matches;
    unchanged when none does.  Bytes are read as Latin-1, so any byte
    survives the round trip.
    """
    if not rewrites:
        return value
    text = value.decode("latin-1")
    for rewrite in rewrites:
        result = rewrite.apply(text)
        if result is not None:
            return result.encode("latin-1", "replace")
    return value


def parse_rewrites(text: str) -> tuple[Rewrite, ...]:
    """
    Parse lines of C{REGEX REPLACEMENT}, each compiled and checked now so a
    bad pattern or a group the pattern lacks is a configuration error, not a
    500 at run time.
    """
    rewrites = []
    for line in _lines(text):
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise ValueError(f"expected 'REGEX REPLACEMENT', not {line!r}")
        try:
            pattern = re.compile(parts[0])
        except re.error as e:
            raise ValueError(f"bad regular expression {parts[0]!r}: {e}") from None
        replacement = _template(parts[1])
        try:
            _check_template(pattern, replacement)
        except (re.error, IndexError) as e:
            raise ValueError(f"bad replacement {parts[1]!r}: {e}") from None
        rewrites.append(Rewrite(pattern, replacement))
    return tuple(rewrites)


def _check_template(pattern: re.Pattern[str], replacement: str) -> None:
    """
    Expand C{replacement} once against an empty match of a pattern with the
    same groups, so a bad escape or a group the pattern lacks fails now.
    """
    names = {number: name for name, number in pattern.groupindex.items()}
    groups = "".join(
        f"(?P<{names[n]}>)" if n in names else "()" for n in range(1, pattern.groups + 1)
    )
    re.compile(groups).sub(replacement, "")

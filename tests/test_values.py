# -*- test-case-name: tests.test_values -*-
"""
Tests for L{txrevproxy._values}: the parsers of configuration values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txrevproxy._values import (
    Rewrite,
    is_token,
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


class _Case(SynchronousTestCase):
    def assertRejects(self, parser: Callable[[str], Any], *texts: str) -> None:
        """
        Each text raises L{ValueError} with a one-line message.
        """
        for text in texts:
            with self.assertRaises(ValueError, msg=repr(text)) as caught:
                parser(text)
            message = str(caught.exception)
            self.assertTrue(message)
            self.assertNotIn("\n", message)


class ScalarTests(_Case):
    def test_bool(self) -> None:
        for text in ("yes", "Yes", "TRUE", "on", "1", " yes "):
            self.assertIs(parse_bool(text), True, text)
        for text in ("no", "NO", "false", "Off", "0"):
            self.assertIs(parse_bool(text), False, text)
        self.assertRejects(parse_bool, "", "y", "2", "enabled", "yes no")

    def test_int(self) -> None:
        self.assertEqual(parse_int(" 42 "), 42)
        self.assertEqual(parse_int("-3"), -3)
        self.assertEqual(parse_int("0", 0), 0)
        self.assertRejects(parse_int, "", "1.5", "ten", "0x10", "1k")
        with self.assertRaises(ValueError):
            parse_int("0", 1)

    def test_size(self) -> None:
        self.assertEqual(parse_size("0"), 0)
        self.assertEqual(parse_size("512"), 512)
        self.assertEqual(parse_size("64k"), 64 * 1024)
        self.assertEqual(parse_size("64K"), 64 * 1024)
        self.assertEqual(parse_size("10m"), 10 * 1024**2)
        self.assertEqual(parse_size("1g"), 1024**3)
        self.assertEqual(parse_size(" 2M "), 2 * 1024**2)
        self.assertRejects(parse_size, "", "-1", "1.5m", "10t", "m", "ten")

    def test_duration(self) -> None:
        self.assertEqual(parse_duration("60"), 60.0)
        self.assertEqual(parse_duration("0.25"), 0.25)
        self.assertEqual(parse_duration(" 4 "), 4.0)
        self.assertEqual(parse_duration("0"), 0.0)
        self.assertRejects(parse_duration, "", "-1", "inf", "nan", "5s", "1m")


class ListTests(_Case):
    def test_names(self) -> None:
        self.assertEqual(parse_names("a b\n  c\td"), ("a", "b", "c", "d"))
        self.assertEqual(parse_names(""), ())

    def test_headerNames(self) -> None:
        self.assertEqual(
            parse_header_names("Cookie\nX-Secret  server"),
            frozenset({b"cookie", b"x-secret", b"server"}),
        )
        self.assertRejects(parse_header_names, "Bad:Name", "X(y)", "caf\u00e9")

    def test_headerPairs(self) -> None:
        """
        One C{Name: value} per line, in order; the value may hold colons
        and commas.
        """
        self.assertEqual(
            parse_header_pairs(
                "X-One: 1\n  Link: <http://x:80/a>; rel=next, <b>\nX-Empty:"
            ),
            (
                (b"X-One", b"1"),
                (b"Link", b"<http://x:80/a>; rel=next, <b>"),
                (b"X-Empty", b""),
            ),
        )
        self.assertRejects(parse_header_pairs, "no colon", "Bad Name: x", ": value")

    def test_env(self) -> None:
        self.assertEqual(
            parse_env("A=1\nPATH_X = /a:/b\nEMPTY=\nEQ=a=b"),
            (("A", "1"), ("PATH_X", "/a:/b"), ("EMPTY", ""), ("EQ", "a=b")),
        )
        self.assertRejects(parse_env, "NOEQUALS", "1A=x", "A-B=x", "=x")

    def test_argv(self) -> None:
        """
        A command line is split as a shell would, without running one.
        """
        self.assertEqual(
            parse_argv("twist web --path 'my dir' --x=\"a b\" $HOME;ls"),
            ("twist", "web", "--path", "my dir", "--x=a b", "$HOME;ls"),
        )
        self.assertRejects(parse_argv, "", "   ", "unbalanced 'quote")

    def test_networks(self) -> None:
        self.assertEqual(
            parse_networks("10.0.0.0/8 192.168.1.7\n::1 2001:db8::/32 10.1.2.3/8"),
            (
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("192.168.1.7/32"),
                ipaddress.ip_network("::1/128"),
                ipaddress.ip_network("2001:db8::/32"),
                ipaddress.ip_network("10.0.0.0/8"),
            ),
        )
        self.assertEqual(parse_networks(""), ())
        self.assertRejects(
            parse_networks, "10.0.0.0/33", "example.com", "10.0.0", "::g/64"
        )


class RewriteTests(_Case):
    def test_dollarGroups(self) -> None:
        """
        C{$1}, C{${1}} and C{\\1} refer to groups.
        """
        [a, b, c] = parse_rewrites(
            "^/a/(.*)$ /x/$1\n^/b/(.*)$ /y/${1}z\n^/c/(.*)$ /z/\\1"
        )
        self.assertEqual(a.apply("/a/p?q=1"), "/x/p?q=1")
        self.assertEqual(b.apply("/b/p"), "/y/pz")
        self.assertEqual(c.apply("/c/p"), "/z/p")

    def test_noMatch(self) -> None:
        [rewrite] = parse_rewrites("^/a /b")
        self.assertIsNone(rewrite.apply("/x/a"))

    def test_firstOccurrenceOnly(self) -> None:
        """
        Only the matched part is replaced, once; the rest is kept.
        """
        [rewrite] = parse_rewrites("o 0")
        self.assertEqual(rewrite.apply("/foo/boo"), "/f0o/boo")

    def test_literalDollar(self) -> None:
        [rewrite] = parse_rewrites("^/a /cost$")
        self.assertEqual(rewrite.apply("/a"), "/cost$")

    def test_errors(self) -> None:
        self.assertRejects(
            parse_rewrites,
            "only-a-pattern",
            "( /x",
            "^/a /x/$1",
            "^/(a) /x/$2",
            "^/(a) /x/\\2",
        )

    def test_rewriteRecord(self) -> None:
        rewrite = parse_rewrites("^/(a) /$1")[0]
        self.assertIsInstance(rewrite, Rewrite)
        self.assertEqual(rewrite.pattern.pattern, "^/(a)")


class TokenTests(SynchronousTestCase):
    def test_tokens(self) -> None:
        for name in (b"X-Forwarded-For", b"a", b"!#$%&'*+-.^_`|~09AZaz"):
            self.assertTrue(is_token(name), name)
        for name in (b"", b"a b", b"a:b", b"a\x00", b"(x)", b"caf\xc3\xa9", b"a\r\nb"):
            self.assertFalse(is_token(name), name)


class RewriteTemplateTests(SynchronousTestCase):
    """
    A replacement is checked when the file is read, not when it first
    matches (a bad one would otherwise be a 500 at run time).
    """

    def test_badTemplates(self) -> None:
        from txrevproxy._values import parse_rewrites

        for line in ("^/a/(.*) /b/$2", "^/a/ /b/\\q", "^/(?P<x>a) /\\g<y>"):
            self.assertRaises(ValueError, parse_rewrites, line)

    def test_namedGroup(self) -> None:
        from txrevproxy._values import parse_rewrites

        [rewrite] = parse_rewrites("^/(?P<x>a)/(b) /\\g<x>-$2")
        self.assertEqual(rewrite.apply("/a/b"), "/a-b")

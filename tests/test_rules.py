# -*- test-case-name: tests.test_rules -*-
"""
Tests for L{txrevproxy._rules}: path normalisation, every kind of C{match}
condition and how a request is tested against them.
"""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from txrevproxy._rules import (
    TLS,
    Default,
    Directory,
    Extensions,
    From,
    FullPath,
    Header,
    Method,
    Not,
    Regex,
    RequestFacts,
    matches_all,
    normalize_path,
    parse_condition,
)


def facts(
    path: str = "/",
    query: str | None = None,
    method: bytes = b"GET",
    headers: tuple[tuple[bytes, bytes], ...] = (),
    client: str | None = "192.0.2.1",
    tls: bool = False,
) -> RequestFacts:
    raw = Headers()
    for name, value in headers:
        raw.addRawHeader(name, value)
    return RequestFacts(
        method=method,
        path=normalize_path(path.encode("utf-8")),
        query=query,
        headers=raw,
        client=ipaddress.ip_address(client) if client else None,
        tls=tls,
    )


def holds(line: str, request: RequestFacts) -> bool:
    return parse_condition(line).matches(request)


class NormalizePathTests(SynchronousTestCase):
    """
    L{normalize_path}: what conditions see of a path.
    """

    def test_cases(self) -> None:
        cases = {
            b"/": "/",
            b"/a/b": "/a/b",
            b"/a/./b/../c": "/a/c",
            b"/a/b/..": "/a/",
            b"/..": "/",
            b"/../../etc/passwd": "/etc/passwd",
            b"/a/..": "/",
            b"/%2e%2e/etc": "/etc",
            b"/a/%2E%2e/b": "/b",
            b"/a/%2e/b": "/a/b",
            b"//a///b": "/a/b",
            b"/a/b/": "/a/b/",
            b"/a//": "/a/",
            b"/%61dmin": "/admin",
            b"/a%2Fb": "/a/b",
            b"/caf%C3%A9": "/caf\u00e9",
            b"/x%20y": "/x y",
        }
        got = {raw: normalize_path(raw) for raw in cases}
        self.assertEqual(got, cases)

    def test_undecodableBytes(self) -> None:
        """
        Bytes that are not UTF-8 are kept (as surrogates), not dropped.
        """
        self.assertEqual(normalize_path(b"/%FF"), "/\udcff")


class ConditionTests(SynchronousTestCase):
    """
    Each condition kind, parsed from its C{match} line.
    """

    def test_default(self) -> None:
        self.assertEqual(parse_condition("default"), Default())
        self.assertTrue(holds("default", facts("/anything")))

    def test_directory(self) -> None:
        condition = parse_condition("directory /app/")
        self.assertEqual(condition, Directory("/app"))
        for path in (
            "/app",
            "/app/",
            "/app/x/y",
            "/app/../app/x",
            "/%61pp/x",
            "//app//x",
        ):
            self.assertTrue(condition.matches(facts(path)), path)
        for path in ("/application", "/ap", "/", "/x/app", "/app/../x"):
            self.assertFalse(condition.matches(facts(path)), path)

    def test_directoryRoot(self) -> None:
        self.assertTrue(holds("directory /", facts("/x")))
        self.assertTrue(holds("directory /", facts("/")))

    def test_extensions(self) -> None:
        condition = parse_condition("extensions php .JS gz")
        self.assertEqual(condition, Extensions(frozenset({"php", "js", "gz"})))
        for path in ("/a.php", "/a/b.PHP", "/x.js", "/a.tar.gz"):
            self.assertTrue(condition.matches(facts(path)), path)
        for path in ("/a.php/b", "/.php", "/php", "/a.phps", "/"):
            self.assertFalse(condition.matches(facts(path)), path)

    def test_regex(self) -> None:
        """
        A regex is searched in the path plus C{?query}.
        """
        self.assertIsInstance(parse_condition(r"regex ^/api/v[0-9]+/"), Regex)
        self.assertTrue(holds(r"regex ^/api/v[0-9]+/", facts("/api/v2/x")))
        self.assertTrue(holds(r"regex \?debug=1", facts("/x", "debug=1")))
        self.assertTrue(holds(r"regex \?$", facts("/x", "")))
        self.assertFalse(holds(r"regex \?", facts("/x", None)))
        self.assertTrue(holds(r"regex user", facts("/a/user/b")))
        self.assertFalse(holds(r"regex ^/api", facts("/x/api")))

    def test_regexWithSpaces(self) -> None:
        """
        Everything after C{regex} is the pattern.
        """
        self.assertTrue(holds("regex ^/a b$", facts("/a%20b")))

    def test_fullpath(self) -> None:
        condition = parse_condition("fullpath /a /b/c")
        self.assertIsInstance(condition, FullPath)
        self.assertTrue(condition.matches(facts("/a")))
        self.assertTrue(condition.matches(facts("/b/./c")))
        self.assertFalse(condition.matches(facts("/a/x")))
        self.assertFalse(condition.matches(facts("/b")))

    def test_method(self) -> None:
        """
        Methods are case-sensitive tokens.
        """
        condition = parse_condition("method GET POST")
        self.assertEqual(condition, Method(frozenset({b"GET", b"POST"})))
        self.assertTrue(condition.matches(facts(method=b"POST")))
        self.assertFalse(condition.matches(facts(method=b"get")))
        self.assertFalse(condition.matches(facts(method=b"PUT")))

    def test_header(self) -> None:
        """
        The name is case-insensitive; any of its values may match.
        """
        condition = parse_condition("header User-Agent ^curl/")
        self.assertIsInstance(condition, Header)
        ua = ((b"user-agent", b"Mozilla"), (b"user-agent", b"curl/8.0"))
        self.assertTrue(condition.matches(facts(headers=ua)))
        self.assertFalse(
            condition.matches(facts(headers=((b"user-agent", b"Mozilla"),)))
        )
        self.assertFalse(condition.matches(facts(headers=((b"x-agent", b"curl/8"),))))

    def test_from(self) -> None:
        condition = parse_condition("from 10.0.0.0/8 192.168.1.1 2001:db8::/32")
        self.assertIsInstance(condition, From)
        for client in ("10.2.3.4", "192.168.1.1", "2001:db8::5"):
            self.assertTrue(condition.matches(facts(client=client)), client)
        for client in ("11.0.0.1", "192.168.1.2", "2001:db9::1"):
            self.assertFalse(condition.matches(facts(client=client)), client)
        self.assertFalse(condition.matches(facts(client=None)))

    def test_tls(self) -> None:
        self.assertEqual(parse_condition("tls"), TLS())
        self.assertTrue(holds("tls", facts(tls=True)))
        self.assertFalse(holds("tls", facts(tls=False)))

    def test_not(self) -> None:
        self.assertEqual(parse_condition("not tls"), Not(TLS()))
        self.assertTrue(holds("not from 10.0.0.0/8", facts(client="192.0.2.1")))
        self.assertFalse(holds("not from 10.0.0.0/8", facts(client="10.0.0.1")))
        self.assertTrue(holds("not not tls", facts(tls=True)))
        self.assertFalse(holds("not directory /admin", facts("/admin/x")))
        self.assertTrue(holds("not directory /admin", facts("/public")))

    def test_kindCaseInsensitive(self) -> None:
        self.assertEqual(parse_condition("Directory /x"), Directory("/x"))

    def test_matchesAll(self) -> None:
        conditions = [parse_condition("directory /api"), parse_condition("method POST")]
        self.assertTrue(matches_all(conditions, facts("/api/x", method=b"POST")))
        self.assertFalse(matches_all(conditions, facts("/api/x", method=b"GET")))
        self.assertFalse(matches_all(conditions, facts("/x", method=b"POST")))
        self.assertTrue(matches_all([], facts()))


class ParseErrorTests(SynchronousTestCase):
    """
    A line that is not a condition raises L{ValueError} with a message.
    """

    def test_errors(self) -> None:
        for line in (
            "",
            "sometimes",
            "default now",
            "tls please",
            "not",
            "directory",
            "directory app",
            "directory /a /b",
            "extensions",
            "regex (",
            "fullpath a",
            "method G@T",
            "header",
            "header X-Only",
            "header Bad:Name x",
            "header X [",
            "from",
            "from 10.0.0.0/33",
            "from example.com",
            "not sometimes",
        ):
            with self.assertRaises(ValueError, msg=line) as caught:
                parse_condition(line)
            self.assertTrue(str(caught.exception), line)
            self.assertNotIn("\n", str(caught.exception))

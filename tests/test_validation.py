# -*- test-case-name: tests.test_validation -*-
"""
Tests for L{txrevproxy._validation}.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txrevproxy._validation import Rejection, Target, validate_head

Headers = Sequence[tuple[bytes, bytes]]
HOST = ((b"Host", b"example.com"),)

quick = settings(max_examples=200, deadline=None)


def check(
    method: bytes = b"GET",
    target: bytes = b"/",
    version: bytes = b"HTTP/1.1",
    headers: Headers = HOST,
    max_body_size: int = 0,
) -> Target | Rejection:
    """
    L{validate_head} with the defaults of a plain, valid HTTP/1.1 GET.
    """
    return validate_head(method, target, version, headers, max_body_size=max_body_size)


def host(value: bytes, version: bytes = b"HTTP/1.1") -> dict[str, object]:
    return {"headers": ((b"Host", value),), "version": version}


def target(value: bytes, method: bytes = b"GET") -> dict[str, object]:
    return {"target": value, "method": method}


def extra(*headers: tuple[bytes, bytes], version: bytes = b"HTTP/1.1") -> dict[str, object]:
    return {"headers": HOST + headers, "version": version}


# (label, keyword arguments for check(), status, text the reason contains)
REJECTED: list[tuple[str, dict[str, object], int, str]] = [
    # Request line.
    ("version 1.2", {"version": b"HTTP/1.2"}, 400, "version"),
    ("version 2.0", {"version": b"HTTP/2.0"}, 400, "version"),
    ("version lower-case", {"version": b"http/1.1"}, 400, "version"),
    ("version empty", {"version": b""}, 400, "version"),
    ("method empty", {"method": b""}, 400, "method"),
    ("method space", {"method": b"GE T"}, 400, "method"),
    ("method NUL", {"method": b"GET\x00"}, 400, "method"),
    ("method paren", {"method": b"G(T"}, 400, "method"),
    ("method non-ASCII", {"method": b"G\xc9T"}, 400, "method"),
    ("CONNECT authority-form", target(b"example.com:443", b"CONNECT"), 405, "CONNECT"),
    ("CONNECT origin-form", target(b"/", b"CONNECT"), 405, "CONNECT"),
    ("CONNECT without Host", {"method": b"CONNECT", "target": b"a:1", "headers": ()}, 405, "CONNECT"),
    # Request-target bytes.
    ("target empty", target(b""), 400, "empty request target"),
    ("target DEL", target(b"/a\x7fb"), 400, "forbidden byte"),
    ("target 0x80", target(b"/\x80"), 400, "forbidden byte"),
    ("target 0xA0", target(b"/\xa0"), 400, "forbidden byte"),
    ("target 0xB0", target(b"/\xb0"), 400, "forbidden byte"),
    ("target 0xFF", target(b"/\xff"), 400, "forbidden byte"),
    ("target UTF-8", target("/café".encode()), 400, "forbidden byte"),
    ("target NUL", target(b"/\x00"), 400, "forbidden byte"),
    ("target space", target(b"/a b"), 400, "forbidden byte"),
    ("target tab", target(b"/a\tb"), 400, "forbidden byte"),
    ("target CR", target(b"/a\rb"), 400, "forbidden byte"),
    ("target fragment", target(b"/a#b"), 400, "forbidden byte"),
    ("target fragment in query", target(b"/a?b#c"), 400, "forbidden byte"),
    # Request-target shape.
    ("asterisk with GET", target(b"*"), 400, "asterisk"),
    ("asterisk with path", target(b"*/x", b"OPTIONS"), 400, "request target"),
    ("relative path", target(b"admin"), 400, "request target"),
    ("authority-form GET", target(b"example.com:443"), 400, "request target"),
    ("authority-form OPTIONS", target(b"example.com:80", b"OPTIONS"), 400, "request target"),
    ("scheme ftp", target(b"ftp://example.com/"), 400, "request target"),
    ("scheme ws", target(b"ws://example.com/"), 400, "request target"),
    ("scheme one slash", target(b"http:/example.com/"), 400, "request target"),
    ("absolute empty authority", target(b"http:///x"), 400, "invalid authority"),
    ("absolute nothing", target(b"http://"), 400, "invalid authority"),
    ("absolute userinfo", target(b"http://u@example.com/"), 400, "invalid authority"),
    ("absolute bad port", target(b"http://example.com:x/"), 400, "invalid authority"),
    ("absolute empty port", target(b"http://example.com:/"), 400, "invalid authority"),
    ("absolute open bracket", target(b"http://[::1/"), 400, "invalid authority"),
    ("absolute comma", target(b"http://a,b/"), 400, "invalid authority"),
    # Host.
    ("no Host on 1.1", {"headers": ()}, 400, "missing Host"),
    ("no Host on 1.1, absolute-form", {"target": b"http://a/", "headers": ()}, 400, "missing Host"),
    ("no Host on HTTP/2", {"headers": (), "version": b"HTTP/2"}, 400, "missing Host"),
    ("two equal Hosts", extra((b"Host", b"example.com")), 400, "more than one Host"),
    ("two Hosts, names in other cases", extra((b"HOST", b"other.example")), 400, "more than one Host"),
    ("two Hosts on 1.0", extra((b"host", b"a"), version=b"HTTP/1.0"), 400, "more than one Host"),
    ("two empty Hosts on 1.0", {"headers": ((b"Host", b""),) * 2, "version": b"HTTP/1.0"}, 400, "more than one Host"),
    ("differing Hosts on HTTP/2", extra((b"host", b"b.example"), version=b"HTTP/2"), 400, "more than one Host"),
    ("Host userinfo", host(b"u@b"), 400, "invalid Host"),
    ("Host userinfo on 1.0", host(b"u@b", b"HTTP/1.0"), 400, "invalid Host"),
    ("Host space", host(b"a b"), 400, "invalid Host"),
    ("Host comma", host(b"a,b"), 400, "invalid Host"),
    ("Host list", host(b"a, b"), 400, "invalid Host"),
    ("Host empty on 1.1", host(b""), 400, "invalid Host"),
    ("Host only a port", host(b":80"), 400, "invalid Host"),
    ("Host only a dot", host(b"."), 400, "invalid Host"),
    ("Host empty port", host(b"a:"), 400, "invalid Host"),
    ("Host letter port", host(b"a:b"), 400, "invalid Host"),
    ("Host signed port", host(b"a:+80"), 400, "invalid Host"),
    ("Host port too big", host(b"a:65536"), 400, "invalid Host"),
    ("Host port too long", host(b"a:000080"), 400, "invalid Host"),
    ("Host two ports", host(b"a:80:80"), 400, "invalid Host"),
    ("Host slash", host(b"a/b"), 400, "invalid Host"),
    ("Host backslash", host(b"a\\b"), 400, "invalid Host"),
    ("Host question mark", host(b"a?b"), 400, "invalid Host"),
    ("Host hash", host(b"a#b"), 400, "invalid Host"),
    ("Host non-ASCII", host("é.example".encode()), 400, "invalid Host"),
    ("Host bad escape", host(b"%zz.example"), 400, "invalid Host"),
    ("Host short escape", host(b"a%4"), 400, "invalid Host"),
    ("Host unclosed IPv6", host(b"[::1"), 400, "invalid Host"),
    ("Host IPv6 junk after", host(b"[::1]x"), 400, "invalid Host"),
    ("Host IPv6 bad", host(b"[::g]"), 400, "invalid Host"),
    ("Host IPv6 too many groups", host(b"[1:2:3:4:5:6:7:8:9]"), 400, "invalid Host"),
    ("Host IPv6 empty", host(b"[]"), 400, "invalid Host"),
    ("Host IPv6 zone", host(b"[fe80::1%25eth0]"), 400, "invalid Host"),
    ("Host IPvFuture", host(b"[v1.x]"), 400, "invalid Host"),
    ("Host bare IPv6", host(b"::1"), 400, "invalid Host"),
    ("Host invalid even with absolute-form", {"target": b"http://a/", "headers": ((b"Host", b"u@b"),)}, 400, "invalid Host"),
    # Framing.
    ("CL and TE", extra((b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")), 400, "both"),
    ("TE and CL", extra((b"transfer-encoding", b"chunked"), (b"content-length", b"0")), 400, "both"),
    ("TE identity", extra((b"Transfer-Encoding", b"identity")), 400, "other than chunked"),
    ("TE identity with CL", extra((b"Transfer-Encoding", b"identity"), (b"Content-Length", b"5")), 400, "both"),
    ("TE gzip, chunked", extra((b"Transfer-Encoding", b"gzip, chunked")), 400, "other than chunked"),
    ("TE chunked, chunked", extra((b"Transfer-Encoding", b"chunked, chunked")), 400, "other than chunked"),
    ("TE leading comma", extra((b"Transfer-Encoding", b",chunked")), 400, "other than chunked"),
    ("TE xchunked", extra((b"Transfer-Encoding", b"xchunked")), 400, "other than chunked"),
    ("TE with parameter", extra((b"Transfer-Encoding", b"chunked;q=1")), 400, "other than chunked"),
    ("TE empty", extra((b"Transfer-Encoding", b"")), 400, "other than chunked"),
    ("TE repeated lines", extra((b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")), 400, "more than one Transfer-Encoding"),
    ("TE on 1.0", extra((b"Transfer-Encoding", b"chunked"), version=b"HTTP/1.0"), 400, "HTTP/1.0"),
    ("TE on HTTP/2", extra((b"transfer-encoding", b"chunked"), version=b"HTTP/2"), 400, "HTTP/2"),
    ("CL differing", extra((b"Content-Length", b"0"), (b"Content-Length", b"5")), 400, "more than one Content-Length"),
    ("CL repeated equal", extra((b"Content-Length", b"5"), (b"content-length", b"5")), 400, "more than one Content-Length"),
    ("CL list", extra((b"Content-Length", b"5,5")), 400, "malformed"),
    ("CL list with space", extra((b"Content-Length", b"5, 5")), 400, "malformed"),
    ("CL plus", extra((b"Content-Length", b"+5")), 400, "malformed"),
    ("CL minus", extra((b"Content-Length", b"-1")), 400, "malformed"),
    ("CL hex", extra((b"Content-Length", b"0x5")), 400, "malformed"),
    ("CL underscore", extra((b"Content-Length", b"5_0")), 400, "malformed"),
    ("CL inner space", extra((b"Content-Length", b"1 3")), 400, "malformed"),
    ("CL empty", extra((b"Content-Length", b"")), 400, "malformed"),
    ("CL Arabic digit", extra((b"Content-Length", "١".encode())), 400, "malformed"),
    ("CL 19 digits", extra((b"Content-Length", b"1" * 19)), 400, "malformed"),
    ("CL over max_body_size", {**extra((b"Content-Length", b"1025")), "max_body_size": 1024}, 413, "max_body_size"),
    ("CL huge over max_body_size", {**extra((b"Content-Length", b"9" * 18)), "max_body_size": 1}, 413, "max_body_size"),
    # Header names.
    ("name empty", extra((b"", b"x")), 400, "header name"),
    ("name space", extra((b"Bad Name", b"x")), 400, "header name"),
    ("name trailing space", extra((b"Content-Length ", b"5")), 400, "header name"),
    ("name colon", extra((b"X:Y", b"x")), 400, "header name"),
    ("name LF", extra((b"Host\n", b"x")), 400, "header name"),
    ("name NUL", extra((b"X\x00", b"x")), 400, "header name"),
    ("name non-ASCII", extra((b"X-\xef", b"x")), 400, "header name"),
    ("name paren", extra((b"X(Y)", b"x")), 400, "header name"),
    ("name quote", extra((b'"X"', b"x")), 400, "header name"),
    ("underscore name with a space", extra((b"X_Y Z", b"x")), 400, "header name"),
    # Header values.
    ("value NUL", extra((b"X", b"a\x00b")), 400, "control byte"),
    ("value CR", extra((b"X", b"a\rb")), 400, "control byte"),
    ("value LF", extra((b"X", b"a\nContent-Length: 44")), 400, "control byte"),
    ("value 0x01", extra((b"X", b"\x01")), 400, "control byte"),
    ("value VT", extra((b"Transfer-Encoding", b"chunked\x0b")), 400, "control byte"),
    ("value 0x1F", extra((b"X", b"a\x1f")), 400, "control byte"),
    ("value DEL", extra((b"X", b"a\x7f")), 400, "control byte"),
    ("value in a dropped header", extra((b"X_Y", b"a\rb")), 400, "control byte"),
    ("value in Host", host(b"a\x00"), 400, "control byte"),
]


def target_of(
    host: bytes,
    authority: bytes,
    path: bytes = b"/",
    query: bytes | None = None,
    absolute: bool = False,
    dropped: tuple[bytes, ...] = (),
) -> Target:
    return Target(host, authority, path, query, absolute, dropped)


# (label, keyword arguments for check(), the Target expected)
ACCEPTED: list[tuple[str, dict[str, object], Target]] = [
    ("plain", {}, target_of(b"example.com", b"example.com")),
    ("Host with port", host(b"example.com:8080"), target_of(b"example.com", b"example.com:8080")),
    ("Host upper-case", host(b"Example.COM"), target_of(b"example.com", b"Example.COM")),
    ("Host trailing dot", host(b"example.com.:81"), target_of(b"example.com", b"example.com.:81")),
    ("Host IPv4", host(b"192.0.2.1:8000"), target_of(b"192.0.2.1", b"192.0.2.1:8000")),
    ("Host IPv6 with port", host(b"[::1]:80"), target_of(b"[::1]", b"[::1]:80")),
    ("Host IPv6 upper-case", host(b"[::FFFF:192.0.2.1]"), target_of(b"[::ffff:192.0.2.1]", b"[::FFFF:192.0.2.1]")),
    ("Host underscore", host(b"my_host.example"), target_of(b"my_host.example", b"my_host.example")),
    ("Host escape", host(b"ex%4Dmple"), target_of(b"ex%4dmple", b"ex%4Dmple")),
    ("Host sub-delims", host(b"a!$&'()*+;=b"), target_of(b"a!$&'()*+;=b", b"a!$&'()*+;=b")),
    ("Host port 0 and 65535", host(b"a:65535"), target_of(b"a", b"a:65535")),
    ("Host name lower-case", {"headers": ((b"host", b"a"),)}, target_of(b"a", b"a")),
    ("HTTP/1.0 without Host", {"version": b"HTTP/1.0", "headers": ()}, target_of(b"", b"")),
    ("HTTP/1.0 empty Host", host(b"", b"HTTP/1.0"), target_of(b"", b"")),
    ("HTTP/1.0 with Host", host(b"A.example", b"HTTP/1.0"), target_of(b"a.example", b"A.example")),
    ("HTTP/2 with :authority and host", extra((b"host", b"example.com"), version=b"HTTP/2"), target_of(b"example.com", b"example.com")),
    ("query", target(b"/p?a=1&b"), target_of(b"example.com", b"example.com", b"/p", b"a=1&b")),
    ("empty query", target(b"/p?"), target_of(b"example.com", b"example.com", b"/p", b"")),
    ("question mark in query", target(b"/p?a?b"), target_of(b"example.com", b"example.com", b"/p", b"a?b")),
    ("double slash path", target(b"//x/../y"), target_of(b"example.com", b"example.com", b"//x/../y")),
    ("lenient printable bytes", target(b'/a|b{c}"d^`<>\\'), target_of(b"example.com", b"example.com", b'/a|b{c}"d^`<>\\')),
    ("percent-encoding kept", target(b"/a%2Fb%00?x=%0D"), target_of(b"example.com", b"example.com", b"/a%2Fb%00", b"x=%0D")),
    ("OPTIONS *", target(b"*", b"OPTIONS"), target_of(b"example.com", b"example.com", b"*")),
    (
        "absolute-form with a different Host",
        {"target": b"http://Backend.example:81/p?q", "headers": ((b"Host", b"front.example"),)},
        target_of(b"backend.example", b"Backend.example:81", b"/p", b"q", True),
    ),
    ("absolute-form https upper-case", target(b"HTTPS://a.example"), target_of(b"a.example", b"a.example", b"/", None, True)),
    ("absolute-form query only", target(b"http://a.example?x=1"), target_of(b"a.example", b"a.example", b"/", b"x=1", True)),
    ("absolute-form IPv6", target(b"http://[2001:db8::1]:8080/x"), target_of(b"[2001:db8::1]", b"[2001:db8::1]:8080", b"/x", None, True)),
    ("absolute-form OPTIONS", target(b"http://a.example:81", b"OPTIONS"), target_of(b"a.example", b"a.example:81", b"*", None, True)),
    ("absolute-form OPTIONS query", target(b"http://a.example?x", b"OPTIONS"), target_of(b"a.example", b"a.example", b"/", b"x", True)),
    ("absolute-form OPTIONS path", target(b"http://a.example/", b"OPTIONS"), target_of(b"a.example", b"a.example", b"/", None, True)),
    ("absolute-form on 1.0 without Host", {"target": b"http://a.example/x", "version": b"HTTP/1.0", "headers": ()}, target_of(b"a.example", b"a.example", b"/x", None, True)),
    ("method extension", {"method": b"PROPFIND"}, target_of(b"example.com", b"example.com")),
    ("method lower-case connect", {"method": b"connect"}, target_of(b"example.com", b"example.com")),
    ("TE chunked", extra((b"Transfer-Encoding", b"chunked")), target_of(b"example.com", b"example.com")),
    ("TE CHUNKED", extra((b"transfer-encoding", b"CHUNKED")), target_of(b"example.com", b"example.com")),
    ("TE with OWS", extra((b"Transfer-Encoding", b"\tChunked ")), target_of(b"example.com", b"example.com")),
    ("CL zero", extra((b"Content-Length", b"0")), target_of(b"example.com", b"example.com")),
    ("CL leading zeros", extra((b"Content-Length", b"007")), target_of(b"example.com", b"example.com")),
    ("CL with OWS", extra((b"Content-Length", b" 5\t")), target_of(b"example.com", b"example.com")),
    ("CL 18 digits, no limit", extra((b"Content-Length", b"9" * 18)), target_of(b"example.com", b"example.com")),
    ("CL at max_body_size", {**extra((b"Content-Length", b"1024")), "max_body_size": 1024}, target_of(b"example.com", b"example.com")),
    ("CL on GET", extra((b"Content-Length", b"5")), target_of(b"example.com", b"example.com")),
    ("CL on 1.0", extra((b"Content-Length", b"5"), version=b"HTTP/1.0"), target_of(b"example.com", b"example.com")),
    ("obs-text value", extra((b"X", b"\xa0caf\xe9\x85")), target_of(b"example.com", b"example.com")),
    ("HTAB and spaces in value", extra((b"X", b"a\tb  c")), target_of(b"example.com", b"example.com")),
    ("empty value", extra((b"X", b"")), target_of(b"example.com", b"example.com")),
    ("token punctuation in name", extra((b"!#$%&'*+-.^`|~", b"x")), target_of(b"example.com", b"example.com")),
    (
        "underscore names dropped once each, in order",
        extra((b"X_Foo", b"1"), (b"Accept", b"*/*"), (b"Content_Length", b"5"), (b"x_foo", b"2")),
        target_of(b"example.com", b"example.com", dropped=(b"x_foo", b"content_length")),
    ),
    (
        "dropped names are no framing headers",
        extra((b"Transfer_Encoding", b"gzip"), (b"Content-Length", b"5"), (b"Content_Length", b"6")),
        target_of(b"example.com", b"example.com", dropped=(b"transfer_encoding", b"content_length")),
    ),
    (
        "a dropped name is no Host",
        {"headers": ((b"Host", b"a"), (b"HOST_", b"b")), "version": b"HTTP/1.1"},
        target_of(b"a", b"a", dropped=(b"host_",)),
    ),
]


class TableTests(SynchronousTestCase):
    """
    Every rule of L{validate_head}, case by case.
    """

    def test_rejected(self) -> None:
        """
        Each malformed head is refused with the status SPEC gives, for the
        reason it was built to show.
        """
        wrong = []
        for label, arguments, status, reason in REJECTED:
            result = check(**arguments)  # type: ignore[arg-type]
            if not (
                isinstance(result, Rejection)
                and result.status == status
                and reason in result.reason
            ):
                wrong.append((label, result))
        self.assertEqual(wrong, [])

    def test_accepted(self) -> None:
        """
        Each valid head, including the edge cases real clients send, gives
        the expected L{Target}.
        """
        wrong = []
        for label, arguments, expected in ACCEPTED:
            result = check(**arguments)  # type: ignore[arg-type]
            if result != expected:
                wrong.append((label, result, expected))
        self.assertEqual(wrong, [])

    def test_labels_unique(self) -> None:
        """
        No case hides another under the same label.
        """
        labels = [case[0] for case in REJECTED + ACCEPTED]  # type: ignore[operator]
        self.assertEqual(len(labels), len(set(labels)))

    def test_max_body_size_zero_is_unlimited(self) -> None:
        """
        A C{max_body_size} of 0 (or less) sets no limit.
        """
        for limit in (0, -1):
            result = check(headers=HOST + ((b"Content-Length", b"1" * 18),), max_body_size=limit)
            self.assertIsInstance(result, Target)

    def test_framing_before_size(self) -> None:
        """
        A head that is both ambiguous and too big is a 400, not a 413: the
        ambiguity is the more important thing to log.
        """
        result = check(
            headers=HOST + ((b"Content-Length", b"99"), (b"Content-Length", b"99")),
            max_body_size=1,
        )
        self.assertEqual(result, Rejection(400, "more than one Content-Length"))


class RecordTests(SynchronousTestCase):
    """
    L{Rejection} and L{Target} cannot hold what L{validate_head} never makes.
    """

    def test_rejection_status(self) -> None:
        """
        A L{Rejection} carries a 4xx status and a reason.
        """
        self.assertEqual(Rejection(431, "x").status, 431)
        for status in (200, 399, 500, 502):
            self.assertRaises(ValueError, Rejection, status, "x")
        self.assertRaises(ValueError, Rejection, 400, "")
        self.assertRaises(TypeError, Rejection, "400", "x")

    def test_target_path(self) -> None:
        """
        A L{Target} path starts with C{/} or is C{*}.
        """
        self.assertEqual(Target(b"a", b"a", b"*", None, False).path, b"*")
        for path in (b"", b"x", b"**", b"http://a/"):
            self.assertRaises(ValueError, Target, b"a", b"a", path, None, False)

    def test_target_host_lower_case(self) -> None:
        """
        A L{Target} host is lower-case, so routing never depends on case.
        """
        self.assertRaises(ValueError, Target, b"A", b"A", b"/", None, False)

    def test_target_types(self) -> None:
        """
        L{Target} fields have the types they say, and C{dropped} becomes a
        tuple.
        """
        self.assertEqual(Target(b"a", b"a", b"/", None, False, [b"x_y"]).dropped, (b"x_y",))
        self.assertRaises(TypeError, Target, "a", b"a", b"/", None, False)
        self.assertRaises(TypeError, Target, b"a", b"a", b"/", "q", False)
        self.assertRaises(TypeError, Target, b"a", b"a", b"/", None, 1)
        self.assertRaises(TypeError, Target, b"a", b"a", b"/", None, False, ["x"])


# Strategies for valid heads.

TCHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^`|~"  # no "_"
TARGET_BYTES = bytes(b for b in range(0x21, 0x7F) if b != ord("#"))
VALUE_BYTES = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
FORBIDDEN_TARGET = bytes(b for b in range(256) if b not in TARGET_BYTES)
FORBIDDEN_VALUE = bytes([*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F])
FRAMING = {b"host", b"content-length", b"transfer-encoding"}


def from_bytes(alphabet: bytes, min_size: int = 0, max_size: int = 20) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(alphabet), min_size=min_size, max_size=max_size).map(bytes)


tokens = st.text(TCHARS, min_size=1, max_size=12).map(str.encode)
methods = tokens.filter(lambda m: m != b"CONNECT")
names = tokens.filter(lambda n: n.lower() not in FRAMING)
values = from_bytes(VALUE_BYTES, max_size=30).map(lambda v: v.strip(b" \t"))

labels = st.text(string.ascii_letters + string.digits + "-_~", min_size=1, max_size=10)
reg_names = st.lists(labels, min_size=1, max_size=4).map(lambda parts: ".".join(parts).encode())
ipv6 = st.builds(
    lambda address, exploded: address.exploded if exploded else str(address),
    st.ip_addresses(v=6),
    st.booleans(),
).map(lambda text: b"[" + text.encode() + b"]")
mixed_case = st.booleans()


@st.composite
def authorities(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """
    A valid C{host[:port]} and the routing host L{validate_head} must find.
    """
    name = draw(st.one_of(reg_names, ipv6))
    if draw(mixed_case):
        name = name.upper()
    port = draw(st.none() | st.integers(0, 65535))
    authority = name if port is None else name + b":%d" % (port,)
    return authority, name.lower()


paths = from_bytes(TARGET_BYTES.replace(b"?", b"")).map(lambda p: b"/" + p)
queries = st.none() | from_bytes(TARGET_BYTES)


@st.composite
def heads(draw: st.DrawFn) -> dict[str, object]:
    """
    A valid head, with what L{validate_head} must say about it.
    """
    version = draw(st.sampled_from([b"HTTP/1.0", b"HTTP/1.1"]))
    method = draw(methods)
    path, query = draw(paths), draw(queries)
    request_target = path if query is None else path + b"?" + query
    header_authority, header_host = draw(authorities())
    absolute = draw(st.booleans())
    if absolute:
        authority, expected_host = draw(authorities())
        scheme = draw(st.sampled_from([b"http", b"https", b"HTTP"]))
        request_target = scheme + b"://" + authority + request_target
    else:
        authority, expected_host = header_authority, header_host
    headers = draw(st.lists(st.tuples(names, values), max_size=6))
    headers.insert(draw(st.integers(0, len(headers))), (b"Host", header_authority))
    framing = draw(st.sampled_from(["none", "length"] + (["chunked"] if version == b"HTTP/1.1" else [])))
    if framing == "length":
        length = draw(st.integers(0, 10**18 - 1))
        headers.insert(draw(st.integers(0, len(headers))), (b"Content-Length", b"%d" % (length,)))
    elif framing == "chunked":
        coding = draw(st.sampled_from([b"chunked", b"CHUNKED", b"Chunked"]))
        headers.insert(draw(st.integers(0, len(headers))), (b"Transfer-Encoding", coding))
    return {
        "arguments": {"method": method, "target": request_target, "version": version, "headers": headers},
        "expected": Target(expected_host, authority, path, query, absolute),
    }


class PropertyTests(SynchronousTestCase):
    """
    Properties of L{validate_head} over generated heads.
    """

    @quick
    @given(heads())
    def test_valid_heads_accepted(self, head: dict[str, object]) -> None:
        """
        Any head built from valid tokens, values and hosts is accepted, and
        the L{Target} gives back the host, authority, path and query it was
        built from.
        """
        self.assertEqual(check(**head["arguments"]), head["expected"])  # type: ignore[arg-type]

    @quick
    @given(heads(), st.data())
    def test_forbidden_target_byte(self, head: dict[str, object], data: st.DataObject) -> None:
        """
        A control byte, space, DEL, non-ASCII byte or C{#} anywhere in the
        request target is refused with 400.
        """
        arguments = dict(head["arguments"])  # type: ignore[call-overload]
        request_target = arguments["target"]
        where = data.draw(st.integers(0, len(request_target)))
        bad = data.draw(st.sampled_from(FORBIDDEN_TARGET))
        arguments["target"] = request_target[:where] + bytes([bad]) + request_target[where:]
        result = check(**arguments)
        self.assertIsInstance(result, Rejection)
        self.assertEqual(result.status, 400)

    @quick
    @given(heads(), st.data())
    def test_forbidden_value_byte(self, head: dict[str, object], data: st.DataObject) -> None:
        """
        A control byte other than HTAB, or DEL, anywhere in any header value
        is refused with 400.
        """
        arguments = dict(head["arguments"])  # type: ignore[call-overload]
        headers = list(arguments["headers"])
        index = data.draw(st.integers(0, len(headers) - 1))
        name, value = headers[index]
        where = data.draw(st.integers(0, len(value)))
        bad = data.draw(st.sampled_from(FORBIDDEN_VALUE))
        headers[index] = (name, value[:where] + bytes([bad]) + value[where:])
        result = check(**{**arguments, "headers": headers})
        self.assertEqual(result, Rejection(400, "control byte in header value"))

    @quick
    @given(heads(), st.data())
    def test_second_host(self, head: dict[str, object], data: st.DataObject) -> None:
        """
        A second Host line, equal to the first or not, is refused with 400.
        """
        arguments = dict(head["arguments"])  # type: ignore[call-overload]
        headers = list(arguments["headers"])
        first = next(value for name, value in headers if name == b"Host")
        second = data.draw(st.just(first) | authorities().map(lambda pair: pair[0]))
        name = data.draw(st.sampled_from([b"Host", b"host", b"HOST"]))
        headers.insert(data.draw(st.integers(0, len(headers))), (name, second))
        result = check(**{**arguments, "headers": headers})
        self.assertEqual(result, Rejection(400, "more than one Host header"))

    @quick
    @given(heads(), st.data())
    def test_length_and_chunked(self, head: dict[str, object], data: st.DataObject) -> None:
        """
        Content-Length together with Transfer-Encoding is refused with 400,
        whatever else the head holds.
        """
        arguments = dict(head["arguments"])  # type: ignore[call-overload]
        headers = [
            (name, value)
            for name, value in arguments["headers"]
            if name.lower() not in (b"content-length", b"transfer-encoding")
        ]
        length = (b"Content-Length", b"%d" % (data.draw(st.integers(0, 10**6)),))
        chunked = (b"Transfer-Encoding", data.draw(st.sampled_from([b"chunked", b"CHUNKED"])))
        for header in data.draw(st.permutations([length, chunked])):
            headers.insert(data.draw(st.integers(0, len(headers))), header)
        result = check(**{**arguments, "headers": headers})
        self.assertEqual(result, Rejection(400, "both Content-Length and Transfer-Encoding"))


# Strategies for arbitrary input, biased towards the bytes that matter.

FRAGMENTS = [
    b"", b" ", b"\t", b"\r", b"\n", b"\x00", b"\x7f", b"\x80", b"\xff", b"/", b"?", b"#",
    b"*", b":", b"@", b",", b"[", b"]", b"%", b"%4", b"%zz", b"::1", b"http://", b"HTTPS://",
    b"ftp://", b"a", b"Example.COM", b"80", b"65536", b"chunked", b"identity", b"_",
    b"host", b"Host", b"Content-Length", b"Transfer-Encoding", b"5", b"9" * 19, b"-1",
]
noise = st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=4), max_size=6).map(b"".join)
fuzz_bytes = st.binary(max_size=40) | noise
fuzz_names = st.sampled_from([b"Host", b"host", b"Content-Length", b"Transfer-Encoding", b"X_Y"]) | fuzz_bytes


class FuzzTests(SynchronousTestCase):
    """
    L{validate_head} answers any input, and never accepts what it must not.
    """

    @quick
    @given(
        method=st.sampled_from([b"GET", b"OPTIONS", b"CONNECT"]) | fuzz_bytes,
        request_target=fuzz_bytes,
        version=st.sampled_from([b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2"]) | fuzz_bytes,
        headers=st.lists(st.tuples(fuzz_names, fuzz_bytes), max_size=6),
        max_body_size=st.integers(-1, 10**20),
    )
    def test_never_raises(
        self,
        method: bytes,
        request_target: bytes,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        max_body_size: int,
    ) -> None:
        """
        Whatever the bytes, the answer is a L{Target} or a L{Rejection}, and a
        L{Target} only for a head whose target and header bytes are clean.
        """
        result = validate_head(method, request_target, version, headers, max_body_size=max_body_size)
        if isinstance(result, Rejection):
            return
        self.assertIsInstance(result, Target)
        self.assertIn(version, (b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2"))
        self.assertNotEqual(method, b"CONNECT")
        self.assertEqual(request_target.translate(None, TARGET_BYTES), b"")
        for name, value in headers:
            self.assertTrue(name)
            self.assertEqual(name.translate(None, TCHARS.encode() + b"_"), b"")
            self.assertEqual(value.translate(None, VALUE_BYTES), b"")
        hosts = [value for name, value in headers if name.lower() == b"host"]
        if version == b"HTTP/1.1":
            self.assertEqual(len(hosts), 1)

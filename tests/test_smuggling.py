# -*- test-case-name: tests.test_smuggling -*-
"""
Request smuggling and desync, on real sockets (security.md §1, §4.4 rows
1-26; SPEC §3 "Bad input").

A proxy runs in-process on 127.0.0.1 in front of a L{StrictBackend}: a raw
HTTP/1.1 server with its own deliberately unforgiving parser, which records
every request it parses and files anything a lenient server could read in
two ways (two framing headers, a transfer coding other than C{chunked}, a
bad Content-Length, obs-fold, a bare CR or LF, hop-by-hop fields, chunk
extensions or trailers...) as a I{violation}.  Clients send raw bytes.

Every case checks both sides:

  - the client's answer: the status, and for a refusal that the proxy
    closed the connection;
  - the invariant: the backend parsed exactly the requests the client got
    a backend answer for, in order, never one the front refused nor one
    smuggled inside a body or sent after a refusal, and with no violation,
    so each forwarded request had one unambiguous framing.

Each client request carries an C{X-Req} tag that the backend echoes as
C{X-Seen}; smuggled requests are tagged C{smuggled}.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise
from typing import Any

import attrs
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.helpers import Response, connectClient, startProxy, wait
from txrevproxy import parse_config

_TCHAR = frozenset((string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~").encode())
_HEX = frozenset(string.hexdigits.encode())

# Fields that must never reach a backend (SPEC §3 Phase 1); Connection is
# checked on its own, since the agent may say "close" on its own account.
_NEVER_FORWARDED = frozenset(
    {
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"expect",
        b"http2-settings",
    }
)

SMUGGLED = (
    b"GET /smuggled HTTP/1.1\r\nHost: front.example\r\nX-Req: smuggled\r\n"
    b"Content-Length: 0\r\n\r\n"
)


# The strict capture backend.


class Violation(Exception):
    """
    The proxy forwarded something a strict parser refuses.
    """


@attrs.frozen
class Seen:
    """
    A request as the L{StrictBackend} parsed it.

    @ivar framing: C{"length"}, C{"chunked"} or C{"none"}.
    @ivar connection: The number of the backend connection it came on.
    """

    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    framing: str
    connection: int

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    @property
    def tag(self) -> bytes:
        tags = self.header(b"x-req")
        return tags[0] if tags else b"-"


def _chunked(data: bytes, at: int) -> tuple[bytes, int] | None:
    """
    Decode a chunked body as an agent must write it: bare hex sizes, no
    extensions, no trailers.

    @return: The body and the offset after it, or L{None} if incomplete.
    """
    body = bytearray()
    while True:
        end = data.find(b"\r\n", at)
        if end < 0:
            return None
        size_line = data[at:end]
        if not size_line or len(size_line) > 16 or not set(size_line) <= _HEX:
            raise Violation(f"chunk size line {size_line!r}")
        size = int(size_line, 16)
        at = end + 2
        if size == 0:
            if len(data) < at + 2:
                return None
            if data[at : at + 2] != b"\r\n":
                raise Violation("trailer fields forwarded")
            return bytes(body), at + 2
        if len(data) < at + size + 2:
            return None
        body += data[at : at + size]
        if data[at + size : at + size + 2] != b"\r\n":
            raise Violation("chunk data not followed by CRLF")
        at += size + 2


def parse_request(data: bytes, connection: int) -> tuple[Seen, int] | None:
    """
    Parse one request off the front of C{data}, refusing anything that two
    HTTP/1.1 parsers could read differently.

    @return: The request and the bytes it took, or L{None} if incomplete.
    @raise Violation: For anything ambiguous or hop-by-hop.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > 65536:
            raise Violation("head larger than 64 KiB")
        return None
    head = data[:end]
    bare = head.replace(b"\r\n", b"")
    if b"\r" in bare or b"\n" in bare:
        raise Violation("bare CR or LF in the head")
    line, *lines = head.split(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise Violation(f"request line {line!r}")
    method, target, version = parts
    if not method or not set(method) <= _TCHAR:
        raise Violation(f"method {method!r}")
    if version != b"HTTP/1.1":
        raise Violation(f"version {version!r}")
    if not target.startswith(b"/") or any(c <= 0x20 or c >= 0x7F for c in target):
        raise Violation(f"target not in clean origin-form: {target!r}")
    headers = []
    for field in lines:
        if field[:1] in (b" ", b"\t"):
            raise Violation("obs-fold")
        name, colon, value = field.partition(b":")
        if not colon or not name or not set(name) <= _TCHAR:
            raise Violation(f"field line {field!r}")
        value = value.strip(b" \t")
        if any((c < 0x20 and c != 0x09) or c == 0x7F for c in value):
            raise Violation(f"control byte in {name!r}")
        lower = name.lower()
        if b"_" in lower:
            raise Violation(f"underscore field name {name!r}")
        if lower in _NEVER_FORWARDED:
            raise Violation(f"hop-by-hop field {name!r}")
        if lower == b"connection" and value.lower() != b"close":
            raise Violation(f"Connection: {value!r}")
        headers.append((name, value))
    lower_names = [name.lower() for name, _ in headers]
    if lower_names.count(b"host") != 1:
        raise Violation("not exactly one Host")
    lengths = [v for n, v in headers if n.lower() == b"content-length"]
    codings = [v for n, v in headers if n.lower() == b"transfer-encoding"]
    if lengths and codings:
        raise Violation("both Content-Length and Transfer-Encoding")
    if codings and codings != [b"chunked"]:
        raise Violation(f"Transfer-Encoding {codings!r}")
    if len(lengths) > 1 or (lengths and not (lengths[0].isdigit() and len(lengths[0]) <= 18)):
        raise Violation(f"Content-Length {lengths!r}")
    at = end + 4
    if codings:
        decoded = _chunked(data, at)
        if decoded is None:
            return None
        body, at = decoded
        framing = "chunked"
    elif lengths:
        size = int(lengths[0])
        if len(data) < at + size:
            return None
        body, at, framing = data[at : at + size], at + size, "length"
    else:
        body, framing = b"", "none"
    return Seen(method, target, tuple(headers), body, framing, connection), at


class StrictConnection(Protocol):
    """
    One backend connection: parse strictly, answer each request with its tag.
    """

    def __init__(self, backend: StrictBackend, number: int) -> None:
        self.backend = backend
        self.number = number
        self.buffer = b""
        self.lost: Deferred[None] = Deferred()
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        self.buffer += data
        while self.buffer:
            try:
                parsed = parse_request(self.buffer, self.number)
            except Violation as e:
                self.backend.violations.append((str(e), self.buffer[:300]))
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self.transport.loseConnection()
                self.closed = True
                return
            if parsed is None:
                return
            seen, used = parsed
            self.buffer = self.buffer[used:]
            self.backend.requests.append(seen)
            body = b"seen " + seen.tag
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Seen: %s\r\n\r\n%s"
                % (len(body), seen.tag, body)
            )
            if seen.header(b"connection") == [b"close"]:
                self.transport.loseConnection()
                self.closed = True
                return

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.buffer:
            # Cut short: what arrived is recorded, never parsed as a request.
            self.backend.incomplete.append(self.buffer)
        self.closed = True
        self.lost.callback(None)


class StrictBackend(Factory):
    """
    A strict HTTP/1.1 server that records what it parses.

    @ivar requests: Every complete request, in order.
    @ivar violations: C{(what, bytes)} for each request refused.
    @ivar incomplete: The unparsed bytes of each connection that ended in
        the middle of a request.
    """

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.violations: list[tuple[str, bytes]] = []
        self.incomplete: list[bytes] = []
        self.connections: list[StrictConnection] = []
        self.port = 0
        self.listening: Any = None

    def buildProtocol(self, addr: Any) -> StrictConnection:
        connection = StrictConnection(self, len(self.connections))
        self.connections.append(connection)
        return connection

    def tags(self) -> list[bytes]:
        return [seen.tag for seen in self.requests]

    def stop(self) -> Deferred[Any]:
        for connection in self.connections:
            if not connection.lost.called:
                connection.transport.abortConnection()
        lost = [c.lost for c in self.connections if not c.lost.called]
        return DeferredList([*lost, self.listening.stopListening()])


def start_backend(case: TestCase) -> StrictBackend:
    backend = StrictBackend()
    backend.listening = reactor.listenTCP(0, backend, interface="127.0.0.1")
    backend.port = backend.listening.getHost().port
    case.addCleanup(backend.stop)
    return backend


class StrictParserTests(SynchronousTestCase):
    """
    The backend's parser is the judge of every case, so it must refuse what
    it claims to refuse.
    """

    CLEAN = b"POST /p?q HTTP/1.1\r\nHost: a\r\nX-Req: t\r\nContent-Length: 5\r\n\r\nhello"

    def test_clean(self) -> None:
        parsed = parse_request(self.CLEAN + b"GET", 3)
        assert parsed is not None
        seen, used = parsed
        self.assertEqual((seen.tag, seen.body, seen.framing, seen.connection), (b"t", b"hello", "length", 3))
        self.assertEqual(used, len(self.CLEAN))
        chunked_request = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        self.assertEqual(parse_request(chunked_request, 0)[0].body, b"abc")  # type: ignore[index]

    def test_incomplete(self) -> None:
        self.assertIsNone(parse_request(self.CLEAN[:-1], 0))
        self.assertIsNone(parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n", 0))

    def test_violations(self) -> None:
        head = b"POST / HTTP/1.1\r\nHost: a\r\n"
        bad = [
            head + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            head + b"Transfer-Encoding: xchunked\r\n\r\n",
            head + b"Transfer-Encoding: Chunked\r\n\r\n",
            head + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            head + b"Content-Length: +1\r\n\r\nx",
            head + b"X: 1\r\n 2\r\n\r\n",
            head + b"X: a\rb\r\n\r\n",
            head + b"X_Y: 1\r\n\r\n",
            head + b"Upgrade: h2c\r\n\r\n",
            head + b"Expect: 100-continue\r\n\r\n",
            head + b"Connection: X-Forwarded-For\r\n\r\n",
            head + b"Host: b\r\n\r\n",
            head + b"Transfer-Encoding: chunked\r\n\r\n1;e=1\r\nx\r\n0\r\n\r\n",
            head + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n",
            head + b"Transfer-Encoding: chunked\r\n\r\n1\r\nxy0\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ]
        for data in bad:
            self.assertRaises(Violation, parse_request, data, 0)


# Requests.


def request(
    tag: str,
    *fields: bytes,
    method: bytes = b"GET",
    target: bytes = b"/",
    version: bytes = b"HTTP/1.1",
    host: bytes | None = b"front.example",
    body: bytes = b"",
) -> bytes:
    """
    A raw request: the request line, C{Host} (unless L{None}), the C{X-Req}
    tag, the given field lines as they are, and C{body} as it is.
    """
    lines = [method + b" " + target + b" " + version]
    if host is not None:
        lines.append(b"Host: " + host)
    lines.append(b"X-Req: " + tag.encode("ascii"))
    lines.extend(fields)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(*chunks: bytes) -> bytes:
    """
    A chunked body of the non-empty C{chunks}, plainly framed.
    """
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"


def length(body: bytes) -> bytes:
    """
    The Content-Length field line for C{body}.
    """
    return b"Content-Length: %d" % (len(body),)


def seen_tag(response: Response) -> bytes | None:
    tags = response.header(b"x-seen")
    return tags[0] if tags else None


@attrs.frozen
class Outcome:
    """
    What one client connection got back, and the backend's record.
    """

    responses: list[Response]
    closed: bool
    backend: StrictBackend

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]

    @property
    def relayed(self) -> list[bytes]:
        """The tags of the responses that came from the backend."""
        return [t for t in map(seen_tag, self.responses) if t is not None]


class _SmugglingCase(TestCase):
    """
    A proxy in front of a L{StrictBackend}, and the invariant every case
    must keep.
    """

    timeout = 20

    async def proxy(
        self, rule: Mapping[str, str] = {}, server: Mapping[str, str] = {}
    ) -> tuple[StrictBackend, int]:
        backend = start_backend(self)
        lines = ["[server]", "access_log = off"]
        lines += [f"{k} = {v}" for k, v in server.items()]
        lines += ["[source:strict]", f"address = 127.0.0.1:{backend.port}"]
        lines += ["[rule:all]", "match = default", "handler = proxy", "sources = strict"]
        lines += [f"{k} = {v}" for k, v in rule.items()]
        running = await startProxy(self, parse_config("\n".join(lines) + "\n", "<test>"))
        return backend, running.port

    async def send(
        self,
        port: int,
        backend: StrictBackend,
        pieces: Sequence[bytes],
        count: int,
        closing: bool,
        gap: float = 0.0,
    ) -> Outcome:
        """
        Send C{pieces} on one connection, C{gap} seconds apart, then wait for
        C{count} complete responses or the end of the connection (and, when
        C{closing}, for the end), and a moment more for any stray request
        to reach the backend.
        """
        client = await connectClient(self, port)
        client.parser.heads.extend([False] * count)
        for index, piece in enumerate(pieces):
            if index and gap:
                await wait(gap)
            if not client.closed:
                client.transport.write(piece)
        await client.responses(count, timeout=5)
        closed = await client.waitClosed(2.0) if closing else client.closed
        await wait(0.05)
        return Outcome(list(client.parser.responses), closed, backend)

    def check_invariant(self, outcome: Outcome, forwarded: Sequence[bytes], start: int = 0) -> None:
        """
        The backend parsed, from request C{start} on, exactly the requests
        tagged C{forwarded}, in order, all cleanly framed, and the client got
        their answers.
        """
        backend = outcome.backend
        self.assertEqual(backend.violations, [])
        self.assertEqual(backend.tags()[start:], list(forwarded))
        self.assertNotIn(b"smuggled", backend.tags())
        self.assertEqual(outcome.relayed, list(forwarded))
        for seen in backend.requests:
            framings = {n.lower() for n, _ in seen.headers} & {b"content-length", b"transfer-encoding"}
            self.assertLessEqual(len(framings), 1)
            if seen.body:
                self.assertEqual(len(framings), 1)

    def check_refused(self, outcome: Outcome, statuses: Sequence[int] = (400,)) -> None:
        """
        The last answer is a refusal with one of C{statuses}, from the proxy
        itself, and the proxy closed the connection after it.
        """
        self.assertTrue(outcome.responses, "no answer at all")
        last = outcome.responses[-1]
        self.assertIn(last.status, statuses)
        self.assertIsNone(seen_tag(last))
        self.assertTrue(outcome.closed, "connection left open after a refusal")


# The cases.

_BODY = b"hello" + SMUGGLED

# (label, the request, statuses allowed).  Each is sent on a fresh
# connection followed at once by a valid request tagged "<label>-after",
# which must never be forwarded either.
REFUSED: list[tuple[str, bytes, tuple[int, ...]]] = [
    # CL.TE and TE.CL.
    ("CL.TE", request("cl-te", b"Content-Length: 6", b"Transfer-Encoding: chunked", method=b"POST", body=b"0\r\n\r\n" + SMUGGLED), (400,)),
    ("TE.CL", request("te-cl", b"Transfer-Encoding: chunked", b"Content-Length: 4", method=b"POST", body=chunked(SMUGGLED)), (400,)),
    # TE.TE obfuscations.
    ("TE xchunked", request("xchunked", b"Transfer-Encoding: xchunked", method=b"POST", body=chunked(SMUGGLED)), (400, 501)),
    ("TE xchunked with CL", request("xchunked-cl", b"Transfer-Encoding: xchunked", length(_BODY), method=b"POST", body=_BODY), (400, 501)),
    ("TE leading space with CL", request("sp-cl", b"Transfer-Encoding:  chunked", length(_BODY), method=b"POST", body=_BODY), (400,)),
    ("TE tab value with CL", request("tab-cl", b"Transfer-Encoding:\tchunked", length(_BODY), method=b"POST", body=_BODY), (400,)),
    ("TE tab before colon", request("tab-colon", b"Transfer-Encoding\t: chunked", method=b"POST", body=chunked(SMUGGLED)), (400,)),
    ("TE chunked, identity", request("chunked-identity", b"Transfer-Encoding: chunked, identity", method=b"POST", body=chunked(SMUGGLED)), (400, 501)),
    ("TE identity", request("identity", b"Transfer-Encoding: identity", method=b"POST", body=SMUGGLED), (400, 501)),
    ("TE identity with CL", request("identity-cl", b"Transfer-Encoding: identity", length(_BODY), method=b"POST", body=_BODY), (400, 501)),
    ("TE gzip, chunked", request("gzip-chunked", b"Transfer-Encoding: gzip, chunked", method=b"POST", body=chunked(SMUGGLED)), (400, 501)),
    ("TE chunked twice", request("te-twice", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", method=b"POST", body=chunked(SMUGGLED)), (400,)),
    ("TE vertical tab", request("te-vt", b"Transfer-Encoding: chunked\x0b", method=b"POST", body=chunked(SMUGGLED)), (400,)),
    ("TE obs-fold", request("te-fold", b"Transfer-Encoding:", b" chunked", method=b"POST", body=chunked(SMUGGLED)), (400,)),
    ("TE obs-fold with CL", request("te-fold-cl", length(_BODY), b"Transfer-Encoding:", b" chunked", method=b"POST", body=_BODY), (400,)),
    ("obs-fold of another field", request("fold", b"X-A: 1", b"\t2"), (400,)),
    ("TE on HTTP/1.0", request("te-10", b"Transfer-Encoding: chunked", method=b"POST", version=b"HTTP/1.0", body=chunked(SMUGGLED)), (400,)),
    ("TE on HTTP/1.0 with CL", request("te-10-cl", b"Transfer-Encoding: chunked", length(_BODY), method=b"POST", version=b"HTTP/1.0", body=_BODY), (400,)),
    # Content-Length.
    ("CL twice, same", request("cl-same", length(_BODY), length(_BODY), method=b"POST", body=_BODY), (400,)),
    ("CL twice, different", request("cl-differ", b"Content-Length: 0", length(_BODY), method=b"POST", body=_BODY), (400,)),
    ("CL list", request("cl-list", b"Content-Length: %d, %d" % (len(_BODY), len(_BODY)), method=b"POST", body=_BODY), (400,)),
    ("CL plus", request("cl-plus", b"Content-Length: +%d" % len(_BODY), method=b"POST", body=_BODY), (400,)),
    ("CL minus", request("cl-minus", b"Content-Length: -1", method=b"POST", body=_BODY), (400,)),
    ("CL hex", request("cl-hex", b"Content-Length: 0x%x" % len(_BODY), method=b"POST", body=_BODY), (400,)),
    ("CL inner space", request("cl-space", b"Content-Length: 1 3", method=b"POST", body=_BODY), (400,)),
    ("CL underscore", request("cl-underscore", b"Content-Length: 1_3", method=b"POST", body=_BODY), (400,)),
    ("CL empty", request("cl-empty", b"Content-Length: ", method=b"POST", body=_BODY), (400,)),
    ("CL huge", request("cl-huge", b"Content-Length: " + b"9" * 30, method=b"POST", body=_BODY), (400, 413)),
    ("space before colon", request("sp-colon", b"Content-Length : 5", method=b"POST", body=b"hello"), (400,)),
    # Host.
    ("no Host", request("no-host", host=None), (400,)),
    ("two Hosts, same", request("host-same", b"Host: front.example"), (400,)),
    ("two Hosts, different", request("host-differ", b"Host: other.example"), (400,)),
    ("Host userinfo", request("host-at", host=b"user@front.example"), (400,)),
    ("Host with a space", request("host-space", host=b"front example"), (400,)),
    ("Host list", request("host-comma", host=b"front.example,other.example"), (400,)),
    ("Host empty", request("host-empty", host=b""), (400,)),
    ("Host with a path", request("host-slash", host=b"front.example/x"), (400,)),
    ("Host bad port", request("host-port", host=b"front.example:http"), (400,)),
    ("absolute-form with a bad Host", request("abs-bad-host", target=b"http://front.example/", host=b"u@b"), (400,)),
    ("absolute-form with userinfo", request("abs-userinfo", target=b"http://u@front.example/"), (400,)),
    # Request line and target.
    ("CONNECT", request("connect", method=b"CONNECT", target=b"front.example:443"), (400, 405)),
    ("relative target", request("relative", target=b"admin"), (400,)),
    ("asterisk with GET", request("asterisk", target=b"*"), (400,)),
    ("DEL in target", request("del", target=b"/a\x7fb"), (400,)),
    ("0xA0 in target", request("nbsp", target=b"/a\xa0b"), (400,)),
    ("HTTP/1.2", request("v12", version=b"HTTP/1.2"), (400, 505)),
    ("lower-case version", request("vlower", version=b"http/1.1"), (400,)),
    ("double space", request("dspace", target=b" /"), (400,)),
    ("h2 prior knowledge", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", (400, 505)),
    # Field bytes.
    ("bare LF injection", request("lf", b"X-A: x\nContent-Length: %d" % len(SMUGGLED), method=b"POST", body=SMUGGLED), (400,)),
    ("bare CR", request("cr", b"X-A: x\ry"), (400,)),
    ("NUL in value", request("nul", b"X-A: x\x00y"), (400,)),
    ("control byte in name", request("ctl-name", b"X-\x01A: 1"), (400,)),
    ("line without colon", request("no-colon", b"X-A 1"), (400,)),
    ("leading space on the first field", b"GET / HTTP/1.1\r\n Host: front.example\r\nX-Req: lead\r\n\r\n", (400,)),
    # Chunked bodies gone wrong after the head was accepted.
    ("chunk size 0x", request("chunk-0x", b"Transfer-Encoding: chunked", method=b"POST", body=b"0x5\r\nhello\r\n0\r\n\r\n"), (400,)),
    ("chunk size plus", request("chunk-plus", b"Transfer-Encoding: chunked", method=b"POST", body=b"+5\r\nhello\r\n0\r\n\r\n"), (400,)),
    ("chunk without CRLF", request("chunk-crlf", b"Transfer-Encoding: chunked", method=b"POST", body=b"5\r\nhelloXX0\r\n\r\n" + SMUGGLED), (400,)),
    ("chunk bare LF", request("chunk-lf", b"Transfer-Encoding: chunked", method=b"POST", body=b"5\nhello\r\n0\r\n\r\n"), (400,)),
    ("chunk size empty", request("chunk-empty", b"Transfer-Encoding: chunked", method=b"POST", body=b"\r\nhello\r\n0\r\n\r\n"), (400,)),
]


class RefusedTests(_SmugglingCase):
    """
    Every malformed or ambiguous request is refused and the connection
    closed; nothing of it, and nothing after it, reaches the backend.
    """

    async def test_refused(self) -> None:
        backend, port = await self.proxy()
        wrong = []
        for label, data, statuses in REFUSED:
            after = request(label.replace(" ", "-") + "-after")
            outcome = await self.send(port, backend, [data + after], 2, closing=True)
            problems = []
            if not outcome.responses:
                problems.append("no answer")
            else:
                last = outcome.responses[-1]
                if len(outcome.responses) != 1 or last.status not in statuses or seen_tag(last):
                    problems.append(f"answers {outcome.statuses} {outcome.relayed}")
            if not outcome.closed:
                problems.append("left open")
            if outcome.relayed:
                problems.append(f"forwarded {outcome.relayed}")
            if problems:
                wrong.append((label, problems))
        # Nothing of any of them, complete, ever reached the backend.
        self.assertEqual(backend.tags(), [])
        self.assertEqual(backend.violations, [])
        self.assertEqual(wrong, [])

    def test_labelsUnique(self) -> None:
        labels = [label for label, _, _ in REFUSED]
        self.assertEqual(len(labels), len(set(labels)))

    async def test_chunkErrorAbortsBackendRequest(self) -> None:
        """
        A chunked body that turns malformed after a good chunk was already
        streamed: the client gets 400 and a close, and the backend sees its
        connection dropped mid-body, never a complete request.
        """
        backend, port = await self.proxy()
        head = request("late-bad", b"Transfer-Encoding: chunked", method=b"POST")
        outcome = await self.send(
            port, backend, [head + b"5\r\nhello\r\n", b"zz\r\n" + SMUGGLED], 1, closing=True, gap=0.2
        )
        self.check_refused(outcome)
        self.check_invariant(outcome, [])
        self.assertTrue(
            all(c.lost.called for c in backend.connections), "backend request not aborted"
        )
        # The head and the first chunk were streamed, then cut.
        [partial] = backend.incomplete
        self.assertIn(b"X-Req: late-bad", partial)
        self.assertTrue(partial.endswith(b"5\r\nhello\r\n"), partial)


class AcceptedTests(_SmugglingCase):
    """
    Legal but unusual framing is accepted and forwarded with one clean,
    re-serialised framing; what looks like a request inside a body stays
    body.
    """

    async def check_one(
        self, data: bytes, tag: str, body: bytes, framing: str | None = None
    ) -> Seen:
        backend, port = await self.proxy()
        outcome = await self.send(port, backend, [data + request(tag + "-next")], 2, closing=False)
        self.assertEqual(outcome.statuses, [200, 200])
        self.check_invariant(outcome, [tag.encode(), tag.encode() + b"-next"])
        seen = backend.requests[0]
        self.assertEqual(seen.body, body)
        if framing is not None:
            self.assertEqual(seen.framing, framing)
        return seen

    async def test_chunkedWithOWS(self) -> None:
        """
        C{Transfer-Encoding:  chunked} (leading space) is plain chunked.
        """
        await self.check_one(
            request("ows", b"Transfer-Encoding:  chunked", method=b"POST", body=chunked(b"hello", SMUGGLED)),
            "ows",
            _BODY,
        )

    async def test_chunkedWithTab(self) -> None:
        await self.check_one(
            request("tab", b"Transfer-Encoding:\tchunked\t", method=b"POST", body=chunked(SMUGGLED)),
            "tab",
            SMUGGLED,
        )

    async def test_chunkedUpperCase(self) -> None:
        await self.check_one(
            request("upper", b"Transfer-Encoding: CHUNKED", method=b"POST", body=chunked(SMUGGLED)),
            "upper",
            SMUGGLED,
        )

    async def test_lengthWithOWS(self) -> None:
        await self.check_one(
            request("cl-ows", b"Content-Length:  %d \t" % len(_BODY), method=b"POST", body=_BODY),
            "cl-ows",
            _BODY,
            "length",
        )

    async def test_underscoreTransferEncodingIgnored(self) -> None:
        """
        C{Transfer_Encoding} is no framing header: the body is framed by
        Content-Length, and the backend never sees the underscore name (a
        CGI backend would read it as C{HTTP_TRANSFER_ENCODING}).
        """
        body = chunked(SMUGGLED)
        await self.check_one(
            request("underscore", b"Transfer_Encoding: chunked", length(body), method=b"POST", body=body),
            "underscore",
            body,
            "length",
        )

    async def test_underscoreContentLengthIgnored(self) -> None:
        await self.check_one(
            request("cl-underscore", b"Content_Length: 0", length(_BODY), method=b"POST", body=_BODY),
            "cl-underscore",
            _BODY,
            "length",
        )

    async def test_extensionsAndTrailersDropped(self) -> None:
        """
        Chunk extensions and trailers (even framing fields in trailers) are
        not forwarded: the strict backend would file a violation.
        """
        body = b"5;name=value\r\nhello\r\n0\r\nContent-Length: 50\r\nX-Trailer: 1\r\n\r\n"
        await self.check_one(
            request("trailers", b"Transfer-Encoding: chunked", method=b"POST", body=body),
            "trailers",
            b"hello",
        )

    async def test_getWithBody(self) -> None:
        """
        A GET with a Content-Length body is forwarded with that body and its
        length, never stripped while the length stays (relayd's bug).
        """
        await self.check_one(
            request("get-body", length(SMUGGLED), body=SMUGGLED), "get-body", SMUGGLED, "length"
        )


class PipelineTests(_SmugglingCase):
    """
    Pipelined requests: each is framed on its own; nothing after a refusal
    is forwarded.
    """

    async def test_smuggledInBodyStaysBody(self) -> None:
        """
        A valid request whose body holds a whole request, then another valid
        request: two requests forwarded, the first with that body.
        """
        backend, port = await self.proxy()
        data = request("first", length(_BODY), method=b"POST", body=_BODY) + request("second")
        outcome = await self.send(port, backend, [data], 2, closing=False)
        self.assertEqual(outcome.statuses, [200, 200])
        self.check_invariant(outcome, [b"first", b"second"])
        self.assertEqual(backend.requests[0].body, _BODY)

    async def test_validInvalidValid(self) -> None:
        """
        A valid request, an invalid one and a valid one in one segment: 200,
        400, close; the third is never forwarded.
        """
        backend, port = await self.proxy()
        data = (
            request("one", b"Transfer-Encoding: chunked", method=b"POST", body=chunked(_BODY))
            + request("two", b"Content-Length: 3", b"Transfer-Encoding: chunked", method=b"POST", body=chunked(SMUGGLED))
            + request("three")
        )
        outcome = await self.send(port, backend, [data], 3, closing=True)
        self.assertEqual(outcome.statuses, [200, 400])
        self.check_refused(outcome)
        self.check_invariant(outcome, [b"one"])
        self.assertEqual(backend.requests[0].body, _BODY)

    async def test_invalidThenValid(self) -> None:
        backend, port = await self.proxy()
        data = request("bad", b"Content-Length: 1", b"Content-Length: 2", method=b"POST", body=b"xx") + request("good")
        outcome = await self.send(port, backend, [data], 2, closing=True)
        self.assertEqual(outcome.statuses, [400])
        self.check_refused(outcome)
        self.check_invariant(outcome, [])

    async def test_underscoreTransferEncodingWithoutLength(self) -> None:
        """
        With only C{Transfer_Encoding: chunked}, the request has no body: what
        follows its head is parsed as the next request, which is malformed
        (a chunk-size line), so it is refused and nothing else goes on.
        """
        backend, port = await self.proxy()
        data = request("no-body", b"Transfer_Encoding: chunked", method=b"POST", body=chunked(SMUGGLED))
        outcome = await self.send(port, backend, [data], 2, closing=True)
        self.assertEqual(outcome.statuses, [200, 400])
        self.check_refused(outcome)
        self.check_invariant(outcome, [b"no-body"])
        self.assertEqual(backend.requests[0].body, b"")

    async def test_http10EndsThePipeline(self) -> None:
        """
        After an HTTP/1.0 request the connection closes; a request pipelined
        after it is never forwarded.
        """
        backend, port = await self.proxy()
        data = request("old", version=b"HTTP/1.0") + request("after-old")
        outcome = await self.send(port, backend, [data], 2, closing=True)
        self.assertEqual(outcome.statuses, [200])
        self.assertTrue(outcome.closed)
        self.check_invariant(outcome, [b"old"])


class RoutingTests(_SmugglingCase):
    """
    Absolute-form targets and what the backend is told about the host.
    """

    async def test_absoluteFormRoutedByAuthority(self) -> None:
        """
        With two vservers, C{GET http://abs.example/...} with C{Host:
        front.example} goes to abs.example's backend in origin-form, and the
        other Host appears nowhere; and the other way round.
        """
        default, abs_backend = start_backend(self), start_backend(self)
        text = f"""
[server]
access_log = off
[source:front]
address = 127.0.0.1:{default.port}
[source:abs]
address = 127.0.0.1:{abs_backend.port}
[vserver:abs]
hosts = abs.example
[rule:front]
match = default
handler = proxy
sources = front
preserve_host = yes
[rule:abs]
vserver = abs
match = default
handler = proxy
sources = abs
preserve_host = yes
"""
        port = (await startProxy(self, text)).port
        one = await self.send(
            port, abs_backend, [request("to-abs", target=b"http://ABS.example:8080/p?q=1", host=b"front.example")], 1, False
        )
        two = await self.send(
            port, default, [request("to-front", target=b"http://front.example/x", host=b"abs.example")], 1, False
        )
        self.check_invariant(one, [b"to-abs"])
        self.check_invariant(two, [b"to-front"])
        seen = abs_backend.requests[0]
        self.assertEqual(seen.target, b"/p?q=1")
        self.assertEqual(seen.header(b"host"), [b"ABS.example:8080"])
        self.assertEqual(seen.header(b"x-forwarded-host"), [b"ABS.example:8080"])
        self.assertNotIn(b"front.example", b"".join(v for _, v in seen.headers))
        self.assertEqual(default.requests[0].target, b"/x")
        self.assertEqual(default.requests[0].header(b"host"), [b"front.example"])

    async def test_absoluteFormSourceHost(self) -> None:
        """
        Without C{preserve_host}, the backend gets the source's Host and the
        authority as C{X-Forwarded-Host}.
        """
        backend, port = await self.proxy()
        outcome = await self.send(
            port, backend, [request("abs", target=b"http://abs.example/p", host=b"other.example")], 1, False
        )
        self.check_invariant(outcome, [b"abs"])
        seen = backend.requests[0]
        self.assertEqual(seen.target, b"/p")
        self.assertEqual(seen.header(b"host"), [b"127.0.0.1:%d" % backend.port])
        self.assertEqual(seen.header(b"x-forwarded-host"), [b"abs.example"])


class HopByHopTests(_SmugglingCase):
    """
    Connection tokens, Upgrade and Expect cannot change what the backend
    gets beyond removing the client's own fields.
    """

    async def test_connectionNamesForwardedFor(self) -> None:
        """
        C{Connection: close, X-Forwarded-For} removes the client's copy only:
        the backend gets the proxy's forwarding headers.
        """
        backend, port = await self.proxy()
        data = request(
            "xff", b"Connection: close, X-Forwarded-For, X-Real-IP", b"X-Forwarded-For: 6.6.6.6",
            b"X-Real-IP: 6.6.6.6",
        )
        outcome = await self.send(port, backend, [data], 1, closing=False)
        self.assertEqual(outcome.statuses, [200])
        self.check_invariant(outcome, [b"xff"])
        seen = backend.requests[0]
        self.assertEqual(seen.header(b"x-forwarded-for"), [b"127.0.0.1"])
        self.assertEqual(seen.header(b"x-real-ip"), [b"127.0.0.1"])

    async def test_closeTokenInAList(self) -> None:
        """
        C{close} anywhere in the comma list of C{Connection}, over any
        number of lines and in any case, ends the client connection after
        the response (RFC 9112 section 9.6); a request pipelined after it
        is never forwarded.
        """
        backend, port = await self.proxy()
        variants = [
            [b"Connection: close"],
            [b"Connection: Close"],
            [b"Connection: close, X-Forwarded-For"],
            [b"Connection: keep-alive,close"],
            [b"Connection: X-Hop", b"Connection: close"],
        ]
        wrong = []
        for number, fields in enumerate(variants):
            tag = f"close-{number}"
            data = request(tag, *fields) + request(tag + "-after")
            outcome = await self.send(port, backend, [data], 2, closing=True)
            if outcome.relayed != [tag.encode()] or not outcome.closed:
                wrong.append((fields, outcome.relayed, outcome.closed))
        self.assertEqual(wrong, [])

    async def test_connectionNamesContentLength(self) -> None:
        """
        C{Connection: Content-Length} does not strip the framing: the body
        arrives whole, with its length.
        """
        backend, port = await self.proxy()
        data = request("conn-cl", b"Connection: Content-Length", length(_BODY), method=b"POST", body=_BODY)
        outcome = await self.send(port, backend, [data + request("conn-cl-next")], 2, closing=False)
        self.check_invariant(outcome, [b"conn-cl", b"conn-cl-next"])
        self.assertEqual(backend.requests[0].body, _BODY)
        self.assertEqual(backend.requests[0].header(b"content-length"), [b"%d" % len(_BODY)])

    async def test_connectionNamesTransferEncodingAndHost(self) -> None:
        backend, port = await self.proxy()
        data = request(
            "conn-te", b"Connection: Transfer-Encoding, Host", b"Transfer-Encoding: chunked",
            method=b"POST", body=chunked(b"hel", b"lo"),
        )
        outcome = await self.send(port, backend, [data + request("conn-te-next")], 2, closing=False)
        self.check_invariant(outcome, [b"conn-te", b"conn-te-next"])
        self.assertEqual(backend.requests[0].body, b"hello")

    async def test_h2cUpgradeNeverForwarded(self) -> None:
        """
        An h2c upgrade is answered as plain HTTP/1.1 (never 101), Upgrade and
        HTTP2-Settings never reach the backend, and the connection goes on.
        """
        backend, port = await self.proxy()
        data = request(
            "h2c", b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c",
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ) + request("h2c-next", b"Upgrade: websocket", b"Connection: upgrade")
        outcome = await self.send(port, backend, [data], 2, closing=False)
        self.assertEqual(outcome.statuses, [200, 200])
        self.assertEqual([r.version for r in outcome.responses], [b"HTTP/1.1"] * 2)
        self.assertFalse(outcome.closed)
        self.check_invariant(outcome, [b"h2c", b"h2c-next"])

    async def test_expectContinuePipelined(self) -> None:
        """
        C{Expect: 100-continue} with the body sent at once, then another
        request: at most an interim 100, both answered, no Expect forwarded.
        """
        backend, port = await self.proxy()
        data = request(
            "expect", b"Expect: 100-continue", length(_BODY), method=b"POST", body=_BODY
        ) + request("expect-next")
        outcome = await self.send(port, backend, [data], 2, closing=False)
        self.assertEqual(outcome.statuses, [200, 200])
        self.check_invariant(outcome, [b"expect", b"expect-next"])
        self.assertEqual(backend.requests[0].body, _BODY)
        for interim in outcome.responses[0].interim:
            self.assertTrue(interim.startswith(b"HTTP/1.1 100 "))

    async def test_unknownExpectation(self) -> None:
        """
        An expectation other than 100-continue is refused (417) or dropped;
        either way the backend never sees C{Expect}.
        """
        backend, port = await self.proxy()
        outcome = await self.send(port, backend, [request("expect-foo", b"Expect: foo")], 1, closing=False)
        self.assertIn(outcome.statuses, ([200], [417]))
        self.check_invariant(outcome, [b"expect-foo"] if outcome.statuses == [200] else [])

    async def test_expectContinueRefusedHead(self) -> None:
        """
        A refused head with C{Expect: 100-continue} gets its refusal, not a
        100 that would invite the body.
        """
        backend, port = await self.proxy()
        data = request(
            "expect-bad", b"Expect: 100-continue", b"Content-Length: 5", b"Content-Length: 6", method=b"POST"
        )
        outcome = await self.send(port, backend, [data], 1, closing=True)
        self.check_refused(outcome)
        self.assertEqual(outcome.responses[0].interim, [])
        self.check_invariant(outcome, [])


# Generated pipelines.


def _valid(tag: str, kind: str, body: bytes) -> bytes:
    if kind == "get":
        return request(tag)
    if kind == "length":
        return request(tag, length(body), method=b"POST", body=body)
    if kind == "chunked":
        third = max(1, len(body) // 3)
        return request(tag, b"Transfer-Encoding: chunked", method=b"POST", body=chunked(body[:third], body[third:]))
    if kind == "absolute":
        return request(tag, target=b"http://abs.example/a?b")
    if kind == "expect":
        return request(tag, b"Expect: 100-continue", length(body), method=b"PUT", body=body)
    if kind == "h2c":
        return request(tag, b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c", b"HTTP2-Settings: AA")
    if kind == "underscore":
        return request(tag, b"Transfer_Encoding: chunked", length(body), method=b"POST", body=body)
    if kind == "http10":
        return request(tag, version=b"HTTP/1.0")
    if kind == "close":
        return request(tag, b"Connection: close")
    raise ValueError(kind)


_VALID = ["get", "length", "chunked", "absolute", "expect", "h2c", "underscore"]
_LAST = ["http10", "close"]  # valid, but the connection ends after them

_INVALID: dict[str, Callable[[str, bytes], bytes]] = {
    "cl-te": lambda t, b: request(t, length(b), b"Transfer-Encoding: chunked", method=b"POST", body=chunked(b)),
    "te-cl": lambda t, b: request(t, b"Transfer-Encoding: chunked", length(b), method=b"POST", body=chunked(b)),
    "cl-twice": lambda t, b: request(t, length(b), length(b), method=b"POST", body=b),
    "cl-plus": lambda t, b: request(t, b"Content-Length: +%d" % len(b), method=b"POST", body=b),
    "te-identity": lambda t, b: request(t, b"Transfer-Encoding: identity", length(b), method=b"POST", body=b),
    "te-fold": lambda t, b: request(t, b"Transfer-Encoding:", b" chunked", method=b"POST", body=chunked(b)),
    "te-http10": lambda t, b: request(t, b"Transfer-Encoding: chunked", method=b"POST", version=b"HTTP/1.0", body=chunked(b)),
    "no-host": lambda t, b: request(t, host=None),
    "host-twice": lambda t, b: request(t, b"Host: other.example"),
    "lf-injection": lambda t, b: request(t, b"X-A: a\nX-B: b"),
    "bad-chunk": lambda t, b: request(t, b"Transfer-Encoding: chunked", method=b"POST", body=b"1x\r\n" + b),
    "connect": lambda t, b: request(t, method=b"CONNECT", target=b"abs.example:443"),
}

_bodies = st.sampled_from([b"x", _BODY, SMUGGLED, b"0\r\n\r\n" + SMUGGLED, b"\r\n" * 3])
_steps = st.tuples(st.sampled_from(_VALID * 2 + _LAST + sorted(_INVALID)), _bodies)


@st.composite
def pipelines(draw: st.DrawFn) -> tuple[list[tuple[str, bytes]], list[int]]:
    """
    Up to five requests, and the points where the bytes are cut into
    separate writes.
    """
    steps = draw(st.lists(_steps, min_size=1, max_size=5))
    cuts = draw(st.lists(st.integers(1, 600), max_size=2))
    return steps, sorted(set(cuts))


def generated(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """
    C{count} examples of C{strategy}, the same on every run: Hypothesis
    generates, the asynchronous test replays them on real sockets (its
    own loop cannot wait on the reactor).
    """
    found: list[Any] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        found.append(example)

    collect()
    return found


class GeneratedPipelineTests(_SmugglingCase):
    """
    For generated pipelines of valid and invalid requests, cut into
    writes at generated points: the client is answered for the valid
    prefix, up to and including the first refusal or connection-ending
    request, and the backend saw exactly the requests the client got
    backend answers for.
    """

    timeout = 60

    async def test_pipelines(self) -> None:
        backend, port = await self.proxy()
        wrong = []
        total_forwarded: list[bytes] = []
        for number, (steps, cuts) in enumerate(generated(pipelines(), 60)):
            data = b""
            forwarded: list[bytes] = []
            answers: list[int | None] = []  # 200, or None for a refusal
            ends = False
            for index, (kind, body) in enumerate(steps):
                tag = f"p{number}-{index}-{kind}"
                if kind in _INVALID:
                    data += _INVALID[kind](tag, body)
                    if not ends:
                        answers.append(None)
                        ends = True
                else:
                    data += _valid(tag, kind, body)
                    if not ends:
                        answers.append(200)
                        forwarded.append(tag.encode())
                        ends = kind in _LAST
            bounds = [0, *[c for c in cuts if c < len(data)], len(data)]
            pieces = [data[a:b] for a, b in pairwise(bounds)]
            start = len(backend.requests)
            outcome = await self.send(port, backend, pieces, len(steps), closing=ends, gap=0.01)
            got = [None if seen_tag(r) is None else r.status for r in outcome.responses]
            refused_ok = all(
                r.status in (400, 405) for r in outcome.responses if seen_tag(r) is None
            )
            if (
                got != answers
                or not refused_ok
                or outcome.relayed != forwarded
                or backend.tags()[start:] != forwarded
                or (ends and not outcome.closed)
            ):
                wrong.append((steps, cuts, outcome.statuses, outcome.relayed, backend.tags()[start:]))
            total_forwarded += forwarded
        self.assertEqual(wrong, [])
        self.assertEqual(backend.violations, [])
        # Counted over all pipelines: the backend saw no more, and no other,
        # requests than the clients got backend answers for.
        self.assertEqual(backend.tags(), total_forwarded)

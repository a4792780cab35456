# -*- test-case-name: tests.test_properties -*-
"""
Property tests of the header passes (L{txrevproxy._headers.HeaderPolicy})
and of request validation (L{txrevproxy._validation.validate_head}).

tests/test_headers.py and tests/test_validation.py check chosen examples;
here Hypothesis generates header lists, C{Connection} tokens, peers, rule
settings and field values, and the SPEC's rules (§3 Phase 1 and 2, "Bad
input") must hold for all of them:

  - hop-by-hop fields and the fields C{Connection} names never survive;
  - the proxy's own C{Host} and forwarding fields are always there, once,
    with the proxy's values, unless the rule hides or sets them, and a
    C{Connection} token cannot remove them;
  - C{X-Forwarded-For} from an untrusted peer is replaced, from a trusted
    one appended to;
  - C{*_add_headers} replace, C{*_hide_headers} remove;
  - repeated fields keep their values and order.

The expectations are written from the SPEC, not from the implementation's
private tables.
"""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Sequence

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from txrevproxy import ProxySettings
from txrevproxy._headers import HOP_BY_HOP, HeaderPolicy, Peer, client_address
from txrevproxy._framing import parse_head
from txrevproxy._validation import Rejection, Target, validate_head
from txrevproxy._values import parse_networks, parse_rewrites

quick = settings(max_examples=150, deadline=None)

Pairs = list[tuple[bytes, bytes]]

TRUSTED = parse_networks("10.0.0.0/8 127.0.0.0/8 fd00::/8")

# What SPEC §3 Phase 1 says the proxy sets itself.
OWN = (b"host", b"x-forwarded-for", b"x-real-ip", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-ssl")
# Never forwarded from a client, whatever Connection says (SPEC §3 Phase 1
# and X-Sendfile); framing is the agent's.
NEVER_FROM_CLIENT = HOP_BY_HOP | {b"content-length", b"x-sendfile-type", b"x-accel-mapping"}
SPEC_HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authorization", b"expect", b"http2-settings",
}


def lower(pairs: Sequence[tuple[bytes, bytes]]) -> Pairs:
    return [(n.lower(), v) for n, v in pairs]


def values(pairs: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in pairs if n.lower() == name]


def grouped(pairs: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, list[bytes]]]:
    """
    The pairs as the proxy hands them over: through Twisted's L{Headers}.
    """
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name, value)
    return [(n, list(vs)) for n, vs in headers.getAllRawHeaders()]


# Strategies.

_TCHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^`|~"  # no "_": validation drops those


def _any_case(name: bytes) -> st.SearchStrategy[bytes]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda flips: bytes(
            c ^ 0x20 if flip and chr(c).isalpha() else c for c, flip in zip(name, flips)
        )
    )


SPECIAL = sorted(SPEC_HOP_BY_HOP | NEVER_FROM_CLIENT | set(OWN) | {b"cookie", b"x-secret", b"set-cookie", b"server", b"date", b"location"})
random_names = st.text(_TCHARS, min_size=1, max_size=8).map(str.encode)
names = st.one_of(st.sampled_from(SPECIAL).flatmap(_any_case), random_names)
plain_names = random_names.filter(lambda n: n.lower() not in SPECIAL)
_VALUE_BYTES = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
field_values = st.binary(max_size=12).map(
    lambda b: bytes(_VALUE_BYTES[c % len(_VALUE_BYTES)] for c in b).strip(b" \t")
)
addresses = st.sampled_from(["192.0.2.7", "198.51.100.1", "10.1.2.3", "127.0.0.1", "2001:db8::5", "fd00::9"])
chain_entries = st.sampled_from([b"203.0.113.9", b"10.9.9.9", b"2001:db8::1", b"unknown", b" 198.51.100.4 "])


@st.composite
def connection_values(draw: st.DrawFn) -> list[bytes]:
    """
    C{Connection} values: comma lists of tokens with odd spacing and case,
    naming any field, the proxy's own included.
    """
    lines = []
    for _ in range(draw(st.integers(1, 2))):
        tokens = draw(st.lists(st.one_of(names, st.sampled_from([b"close", b"keep-alive", b"Upgrade"])), min_size=1, max_size=4))
        spaces = draw(st.lists(st.sampled_from([b"", b" ", b"  ", b"\t"]), min_size=len(tokens), max_size=len(tokens)))
        lines.append(b",".join(s + t for s, t in zip(spaces, tokens)))
    return lines


@st.composite
def client_requests(draw: st.DrawFn) -> tuple[Pairs, Peer, bytes]:
    """
    A client's header lines (with Connection lines among them), the peer,
    and the client's Host.
    """
    pairs: Pairs = draw(st.lists(st.tuples(names, field_values), max_size=12))
    if draw(st.booleans()):
        for value in draw(connection_values()):
            pairs.insert(draw(st.integers(0, len(pairs))), (draw(_any_case(b"connection")), value))
    if draw(st.booleans()):
        chain = draw(st.lists(chain_entries, min_size=1, max_size=3))
        for entry in chain:
            pairs.insert(draw(st.integers(0, len(pairs))), (b"X-Forwarded-For", entry))
    address = ipaddress.ip_address(draw(addresses))
    trusted = any(address in net for net in TRUSTED)
    chain_values = [v for n, v in pairs if n.lower() == b"x-forwarded-for"]
    peer = Peer(address, trusted, client_address(address, chain_values, TRUSTED), draw(st.booleans()))
    client_host = draw(st.sampled_from([b"client.example", b"Client.Example:8080", b""]))
    return pairs, peer, client_host


add_pairs = st.lists(
    st.tuples(st.one_of(plain_names, st.sampled_from(OWN + (b"Cookie", b"X-Secret")).flatmap(_any_case)), field_values.filter(bool)),
    max_size=3,
)
hide_names = st.frozensets(st.one_of(plain_names.map(bytes.lower), st.sampled_from(list(OWN) + [b"cookie", b"x-secret"])), max_size=3)


def connection_tokens_of(pairs: Pairs) -> set[bytes]:
    tokens = set()
    for name, value in pairs:
        if name.lower() == b"connection":
            tokens |= {t.strip(b" \t").lower() for t in value.split(b",") if t.strip(b" \t")}
    return tokens


class RequestHeaderProperties(SynchronousTestCase):
    """
    L{HeaderPolicy.request_headers} for generated requests and rules.
    """

    def build(self, request: tuple[Pairs, Peer, bytes], policy: HeaderPolicy) -> Pairs:
        pairs, peer, client_host = request
        return policy.request_headers(grouped(pairs), b"backend:81", client_host, peer)

    @quick
    @given(client_requests(), add_pairs, hide_names)
    def test_hopByHopNeverSurvive(self, request: tuple[Pairs, Peer, bytes], add: Pairs, hide: frozenset[bytes]) -> None:
        """
        No hop-by-hop field, and no field the client's C{Connection} names,
        reaches the backend, except the proxy's own and the rule's.
        """
        policy = HeaderPolicy(request_hide=hide, request_add=tuple(add))
        out = self.build(request, policy)
        allowed = set(OWN) | {n.lower() for n, _ in add}
        forbidden = (NEVER_FROM_CLIENT | SPEC_HOP_BY_HOP | connection_tokens_of(request[0])) - allowed
        self.assertEqual({n.lower() for n, _ in out} & forbidden, set())

    @quick
    @given(client_requests())
    def test_ownHeadersOnceEach(self, request: tuple[Pairs, Peer, bytes]) -> None:
        """
        Without hide or add, Host, X-Forwarded-For, X-Real-IP and
        X-Forwarded-Proto/SSL are there exactly once (X-Forwarded-Host too,
        when the client named a host), whatever C{Connection} says; from an
        untrusted peer every one has the proxy's value.
        """
        pairs, peer, client_host = request
        out = self.build(request, HeaderPolicy())
        self.assertEqual(out[0], (b"Host", b"backend:81"))
        self.assertEqual(values(out, b"host"), [b"backend:81"])
        self.assertEqual(len(values(out, b"x-forwarded-for")), 1)
        self.assertEqual(values(out, b"x-real-ip"), [str(peer.client).encode()])
        proto, ssl = (b"https", b"on") if peer.tls else (b"http", b"off")
        defaults = {b"x-forwarded-proto": [proto], b"x-forwarded-ssl": [ssl], b"x-forwarded-host": [client_host] if client_host else []}
        for name, default in defaults.items():
            sent = values(pairs, name)
            if peer.trusted and sent:
                # A trusted proxy's own values are kept (empty ones left out).
                self.assertEqual(values(out, name), [v for v in sent if v])
            else:
                self.assertEqual(values(out, name), default)

    @quick
    @given(client_requests())
    def test_forwardedFor(self, request: tuple[Pairs, Peer, bytes]) -> None:
        """
        From an untrusted peer X-Forwarded-For is the peer alone; from a
        trusted one it is the client's chain with the peer appended.
        """
        pairs, peer, _ = request
        [forwarded] = values(self.build(request, HeaderPolicy()), b"x-forwarded-for")
        address = str(peer.address).encode()
        if not peer.trusted:
            self.assertEqual(forwarded, address)
            return
        sent = [e.strip() for v in values(pairs, b"x-forwarded-for") for e in v.split(b",") if e.strip()]
        got = [e.strip() for e in forwarded.split(b",") if e.strip()]
        self.assertEqual(got, sent + [address])

    @quick
    @given(client_requests(), add_pairs, hide_names)
    def test_addReplacesHideRemoves(self, request: tuple[Pairs, Peer, bytes], add: Pairs, hide: frozenset[bytes]) -> None:
        """
        An added field has exactly the rule's values, whatever the client
        or the proxy set; a hidden field that is not added is gone, the
        proxy's own included.
        """
        out = self.build(request, HeaderPolicy(request_hide=hide, request_add=tuple(add)))
        added = {n.lower() for n, _ in add}
        for name in added:
            self.assertEqual(values(out, name), [v for n, v in add if n.lower() == name])
        for name in hide - added:
            self.assertEqual(values(out, name), [])

    @quick
    @given(client_requests(), hide_names)
    def test_endToEndKeptInOrder(self, request: tuple[Pairs, Peer, bytes], hide: frozenset[bytes]) -> None:
        """
        Every other field reaches the backend with all its values, in the
        order Twisted groups them (repeated fields keep their order).
        """
        pairs, _, _ = request
        out = self.build(request, HeaderPolicy(request_hide=hide))
        gone = NEVER_FROM_CLIENT | SPEC_HOP_BY_HOP | set(OWN) | connection_tokens_of(pairs) | hide
        expected = [(n.lower(), v) for n, vs in grouped(pairs) for v in vs if n.lower() not in gone]
        self.assertEqual([p for p in lower(out) if p[0] not in set(OWN)], expected)

    @quick
    @given(st.frozensets(st.sampled_from([b"Cookie", b"X-Secret", b"X-FORWARDED-FOR", b"x-real-ip"]), min_size=1))
    def test_hideAnyCaseFromSettings(self, hide: frozenset[bytes]) -> None:
        """
        A rule built in code (SPEC §4) may name hidden fields in any case,
        as the INI loader accepts them: C{Cookie} hides C{cookie}.  The
        policy is made from L{ProxySettings} as the proxy resource makes it.
        """
        proxy = ProxySettings(sources=("a",), request_hide_headers=hide, reply_hide_headers=hide)
        policy = HeaderPolicy(request_hide=proxy.request_hide_headers, reply_hide=proxy.reply_hide_headers)
        client = [(b"Cookie", b"a=1"), (b"X-Secret", b"s")]
        peer = Peer(ipaddress.ip_address("192.0.2.1"), False, ipaddress.ip_address("192.0.2.1"), False)
        out = policy.request_headers(grouped(client), b"b", b"c", peer)
        reply = policy.reply_headers(client, b"txrevproxy")
        for name in {n.lower() for n in hide}:
            self.assertEqual(values(out, name), [], name)
            self.assertEqual(values(reply, name), [], name)


# Phase 2.

_REPLY_NAMES = st.one_of(
    st.sampled_from(sorted(SPEC_HOP_BY_HOP | {
        b"server", b"date", b"content-length", b"set-cookie", b"location", b"content-location",
        b"x-sendfile", b"x-accel-redirect", b"x-accel-buffering", b"x-sendfile-type", b"link",
    })).flatmap(_any_case),
    random_names,
)
reply_add_pairs = st.lists(
    st.tuples(st.one_of(plain_names, st.sampled_from([b"Server", b"Set-Cookie", b"X-Frame-Options"])), field_values.filter(bool)),
    max_size=3,
)
reply_hide_names = st.frozensets(st.one_of(plain_names.map(bytes.lower), st.sampled_from([b"server", b"set-cookie", b"x-powered-by"])), max_size=3)
REWRITES = parse_rewrites("^http://in/(.*) https://out/$1")


class ReplyHeaderProperties(SynchronousTestCase):
    """
    L{HeaderPolicy.reply_headers} for generated backend responses and rules.
    """

    @quick
    @given(st.lists(st.tuples(_REPLY_NAMES, field_values), max_size=12), reply_add_pairs, reply_hide_names, st.booleans())
    # Found by Hypothesis: reply_add_headers names Server, preserve_server is on.
    @example([(b"Server", b"Backend/1")], [(b"Server", b"Front/2")], frozenset(), True)
    def test_reply(self, pairs: Pairs, add: Pairs, hide: frozenset[bytes], preserve: bool) -> None:
        """
        Hop-by-hop, framing, Date and the internal-redirect family never
        reach the client; C{Server} is ours once, or the backend's with
        C{preserve_server}, or the rule's; added fields replace, hidden ones
        go; everything else keeps its values and order, C{Location} and
        C{Content-Location} rewritten.
        """
        policy = HeaderPolicy(reply_hide=hide, reply_add=tuple(add), preserve_server=preserve, reply_rewrite=REWRITES)
        out = policy.reply_headers(pairs, b"txrevproxy")
        added = {n.lower() for n, _ in add}
        got = {n.lower() for n, _ in out}
        self.assertEqual(got & ((SPEC_HOP_BY_HOP | {b"content-length", b"date"}) - added), set())
        self.assertEqual({n for n in got if n.startswith((b"x-accel-", b"x-sendfile"))}, set())
        for name in added:
            self.assertEqual(values(out, name), [v for n, v in add if n.lower() == name])
        for name in hide - added:
            self.assertEqual(values(out, name), [])
        backend_server = values(pairs, b"server")
        if b"server" not in added and b"server" not in hide:
            expected = backend_server if preserve and backend_server else [b"txrevproxy"]
            self.assertEqual(values(out, b"server"), expected)
        gone = SPEC_HOP_BY_HOP | {b"content-length", b"date", b"server"} | hide | added
        expected_rest = [
            (n.lower(), v.replace(b"http://in/", b"https://out/", 1) if n.lower() in (b"location", b"content-location") and v.startswith(b"http://in/") else v)
            for n, v in pairs
            if n.lower() not in gone and not n.lower().startswith((b"x-accel-", b"x-sendfile"))
        ]
        self.assertEqual([p for p in lower(out) if p[0] not in {b"server"} | added], expected_rest)

    @quick
    @given(st.lists(st.tuples(random_names, field_values), min_size=1, max_size=6), st.data())
    def test_backendConnectionTokens(self, pairs: Pairs, data: st.DataObject) -> None:
        """
        Through the strict response parser and then the reply pass, the
        fields a backend's C{Connection} names never reach the client.
        """
        named = data.draw(st.lists(st.sampled_from([n for n, _ in pairs]), min_size=1, max_size=3))
        tokens = b", ".join(data.draw(_any_case(n)) for n in named)
        head = [b"HTTP/1.1 200 OK", b"Connection: keep-alive, " + tokens, b"Content-Length: 0"]
        head += [n + b": " + v for n, v in pairs]
        parsed = parse_head(b"\r\n".join(head) + b"\r\n\r\n")
        out = HeaderPolicy().reply_headers(parsed.fields, b"txrevproxy")
        self.assertEqual({n.lower() for n, _ in out} & ({n.lower() for n in named} | SPEC_HOP_BY_HOP), set())
        kept = {n.lower() for n, _ in pairs} - {n.lower() for n in named} - {b"server", b"date", b"content-length"}
        kept = {n for n in kept if not n.startswith((b"x-accel-", b"x-sendfile"))} - SPEC_HOP_BY_HOP
        self.assertEqual({n.lower() for n, _ in out} - {b"server"}, kept)


# Validation, beyond tests/test_validation.py.

HOST = (b"Host", b"example.com")
_OWS = b" \t"


def verdict(headers: Sequence[tuple[bytes, bytes]], version: bytes = b"HTTP/1.1", max_body_size: int = 0) -> Target | Rejection:
    return validate_head(b"POST", b"/x", version, [HOST, *headers], max_body_size=max_body_size)


coding_parts = st.sampled_from([b"chunked", b"CHUNKED", b"identity", b"gzip", b"xchunked", b"chunked;q=1", b"", b" ", b"\t", b",", b"chunk", b"ed", b"\xa0"])
codings = st.lists(coding_parts, min_size=1, max_size=4).map(b"".join)
length_parts = st.sampled_from([b"0", b"5", b"9", b"00", b"+", b"-", b"x", b"0x", b" ", b"\t", b",", b"_", b".", "١".encode(), b"e3"])
lengths = st.lists(length_parts, min_size=1, max_size=6).map(b"".join) | st.integers(0, 10**20).map(lambda n: b"%d" % n)
_REG_NAME = set((string.ascii_letters + string.digits + "-._~!$&'()*+;=%").encode())
_NOT_HOST = bytes(b for b in range(256) if b not in _REG_NAME and b not in b":[]")


class ValidationProperties(SynchronousTestCase):
    """
    L{validate_head} over generated framing and Host values.
    """

    def assertRefused(self, result: Target | Rejection, status: int) -> None:
        assert isinstance(result, Rejection), result
        self.assertEqual(result.status, status)

    @quick
    @given(codings, st.sampled_from([b"Transfer-Encoding", b"transfer-encoding", b"TRANSFER-ENCODING"]))
    def test_onlyChunked(self, coding: bytes, name: bytes) -> None:
        """
        A single Transfer-Encoding is accepted exactly when it is
        C{chunked} (any case, OWS around); every other value is a 400.
        """
        result = verdict([(name, coding.strip(_OWS))])
        if coding.strip(_OWS).lower() == b"chunked":
            self.assertIsInstance(result, Target)
        else:
            self.assertRefused(result, 400)

    @quick
    @given(codings)
    def test_noCodingOnHTTP10(self, coding: bytes) -> None:
        result = verdict([(b"Transfer-Encoding", coding.strip(_OWS))], version=b"HTTP/1.0")
        self.assertRefused(result, 400)

    @quick
    @given(lengths, st.integers(0, 10**6))
    def test_contentLengthDigitsOnly(self, value: bytes, limit: int) -> None:
        """
        Content-Length is accepted exactly when it is 1 to 18 ASCII digits
        after OWS; above a non-zero C{max_body_size} it is a 413.
        """
        result = verdict([(b"Content-Length", value.strip(_OWS))], max_body_size=limit)
        digits = value.strip(_OWS)
        if not (digits.isdigit() and 0 < len(digits) <= 18):
            self.assertRefused(result, 400)
        elif limit and int(digits) > limit:
            self.assertEqual(result, Rejection(413, "Content-Length exceeds max_body_size"))
        else:
            self.assertIsInstance(result, Target)

    @quick
    @given(
        st.lists(st.tuples(st.sampled_from([b"Content-Length", b"Transfer-Encoding"]).flatmap(_any_case), st.sampled_from([b"5", b"chunked"])), min_size=2, max_size=3),
    )
    def test_repeatedFramingAnyCase(self, framing: Pairs) -> None:
        """
        Two or more framing lines, whatever their case and values, are a 400.
        """
        result = verdict(framing)
        self.assertRefused(result, 400)

    @quick
    @given(
        st.sampled_from([b"Content_Length", b"Transfer_Encoding", b"Host_", b"X_Forwarded_For", b"_"]).flatmap(_any_case),
        st.sampled_from([b"5", b"chunked", b"identity", b"-1", b"evil.example", b""]),
        st.sampled_from([[], [(b"Content-Length", b"3")], [(b"Transfer-Encoding", b"chunked")]]),
    )
    def test_underscoreNamesInert(self, name: bytes, value: bytes, framing: Pairs) -> None:
        """
        A field with C{_} in its name never counts as Host or framing: the
        verdict is the one without it, with the name listed as dropped.
        """
        without = verdict(framing)
        with_it = verdict([*framing, (name, value)])
        assert isinstance(without, Target)
        self.assertEqual(with_it, Target(without.host, without.authority, without.path, without.query, without.absolute, (name.lower(),)))

    @quick
    @given(st.lists(st.sampled_from(list(string.ascii_lowercase + "-.")), min_size=1, max_size=10).map(lambda c: "".join(c).encode()), st.sampled_from(_NOT_HOST), st.data())
    def test_hostBadByte(self, name: bytes, bad: int, data: st.DataObject) -> None:
        """
        Any byte outside the reg-name set, anywhere in a host name, makes
        Host invalid (400), also when absolute-form names another host.
        """
        where = data.draw(st.integers(0, len(name)))
        host = name[:where] + bytes([bad]) + name[where:]
        target = data.draw(st.sampled_from([b"/", b"http://other.example/"]))
        result = validate_head(b"GET", target, b"HTTP/1.1", [(b"Host", host)])
        self.assertRefused(result, 400)

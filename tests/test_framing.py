"""
Reading backend response heads and chunked bodies strictly
(L{txrevproxy._framing}).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txrevproxy._framing import BadResponse, ChunkedDecoder, head_end, parse_head


def head(*lines: bytes, status: bytes = b"HTTP/1.1 200 OK") -> bytes:
    return b"\r\n".join((status, *lines)) + b"\r\n\r\n"


class HeadEndTests(SynchronousTestCase):
    def test_crlf(self) -> None:
        data = head(b"A: b") + b"body"
        self.assertEqual(data[head_end(data) :], b"body")

    def test_bareLF(self) -> None:
        data = b"HTTP/1.1 200 OK\nA: b\n\nbody"
        self.assertEqual(data[head_end(data) :], b"body")

    def test_bareLFBeforeCRLF(self) -> None:
        """
        The first empty line ends the head, however each is written: a body
        that starts with CRLF after a bare-LF head is body.
        """
        data = b"HTTP/1.1 200 OK\n\n\r\nx"
        self.assertEqual(data[head_end(data) :], b"\r\nx")

    def test_incomplete(self) -> None:
        self.assertEqual(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n"), -1)


class ParseHeadTests(SynchronousTestCase):
    def test_fields(self) -> None:
        """
        Fields keep their order, their names as sent, and repeated names;
        surrounding whitespace is not part of a value.
        """
        parsed = parse_head(head(b"X-B: 1", b"x-a:  2 \t", b"X-B: 3", b"Empty:"))
        self.assertEqual(parsed.fields, ((b"X-B", b"1"), (b"x-a", b"2"), (b"X-B", b"3"), (b"Empty", b"")))
        self.assertEqual((parsed.minor, parsed.code, parsed.phrase), (1, 200, b"OK"))

    def test_status(self) -> None:
        self.assertEqual(parse_head(head(status=b"HTTP/1.0 404 Not  Found")).phrase, b"Not  Found")
        self.assertEqual(parse_head(head(status=b"HTTP/1.1 204")).phrase, b"")
        for bad in (b"HTTP/2 200 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"ICY 200 OK", b"HTTP/1.1 200 O\x01K"):
            with self.subTest(status=bad):
                self.assertRaises(BadResponse, parse_head, head(status=bad))

    def test_framingTakenOut(self) -> None:
        """
        The framing and connection fields, and those C{Connection} names,
        never reach the fields relayed.
        """
        parsed = parse_head(
            head(b"Content-Length: 5", b"Connection: keep-alive, X-Secret", b"X-Secret: 1", b"Keep-Alive: timeout=5", b"X-Kept: 2")
        )
        self.assertEqual(parsed.fields, ((b"X-Kept", b"2"),))
        self.assertEqual((parsed.length, parsed.chunked, parsed.idle_limit), (5, False, 5.0))

    def test_keepAlive(self) -> None:
        self.assertTrue(parse_head(head()).keep_alive)
        self.assertFalse(parse_head(head(b"Connection: Close")).keep_alive)
        self.assertFalse(parse_head(head(status=b"HTTP/1.0 200 OK")).keep_alive)
        self.assertTrue(parse_head(head(b"Connection: keep-alive", status=b"HTTP/1.0 200 OK")).keep_alive)

    def test_chunked(self) -> None:
        parsed = parse_head(head(b"Transfer-Encoding: Chunked"))
        self.assertEqual((parsed.length, parsed.chunked), (None, True))

    def test_obsFold(self) -> None:
        """
        A folded line is joined to its field with a space (RFC 9112 §5.2).
        """
        self.assertEqual(parse_head(head(b"A: b", b"  c", b"\td")).fields, ((b"A", b"b c d"),))
        self.assertEqual(parse_head(b"HTTP/1.1 200 OK\nA: b\n c\n\n").fields, ((b"A", b"b c"),))

    def test_refused(self) -> None:
        cases = {
            "CL and TE": [b"Content-Length: 1", b"Transfer-Encoding: chunked"],
            "two CL": [b"Content-Length: 1", b"Content-Length: 1"],
            "bad CL": [b"Content-Length: 1x"],
            "signed CL": [b"Content-Length: +1"],
            "non-ASCII digits CL": ["Content-Length: \u0661".encode()],
            "gzip": [b"Transfer-Encoding: gzip, chunked"],
            "two TE": [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
            "space before colon": [b"Content-Length : 1"],
            "no colon": [b"Junk"],
            "bad name": [b"A(b): c"],
            "bare CR": [b"A: b\rc"],
            "NUL": [b"A: b\x00"],
            "fold first": [b" A: b"],
        }
        for why, lines in cases.items():
            with self.subTest(why):
                self.assertRaises(BadResponse, parse_head, head(*lines))

    def test_remembered(self) -> None:
        """
        The same head parses to the same (immutable) record, without being
        parsed again; a large one is parsed every time.
        """
        block = head(b"X-A: 1", b"Content-Length: 3")
        self.assertIs(parse_head(block), parse_head(bytes(block)))
        self.assertIsInstance(parse_head(block).fields, tuple)
        large = head(b"X-A: " + b"a" * 5000)
        self.assertIsNot(parse_head(large), parse_head(large))
        self.assertEqual(parse_head(large), parse_head(large))

    def test_switchingProtocols(self) -> None:
        self.assertRaises(BadResponse, parse_head, head(b"Upgrade: h2c", status=b"HTTP/1.1 101 Switching"))


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, at = [], 0
    for size in sizes:
        piece = body[at : at + size]
        if piece:
            out.append(b"%x;ext=1\r\n%b\r\n" % (len(piece), piece))
        at += size
    if at < len(body):
        out.append(b"%X\r\n%b\r\n" % (len(body) - at, body[at:]))
    return b"".join(out) + b"0\r\nTrailer: x\r\n\r\n"


class ChunkedDecoderTests(SynchronousTestCase):
    def test_whole(self) -> None:
        decoder = ChunkedDecoder()
        pieces, rest = decoder.feed(chunked(b"hello world", [5, 6]) + b"NEXT")
        self.assertEqual((b"".join(pieces), rest, decoder.done), (b"hello world", b"NEXT", True))

    @settings(max_examples=200, deadline=None)
    @given(
        st.binary(max_size=300),
        st.lists(st.integers(1, 50), max_size=10),
        st.lists(st.integers(1, 40), max_size=30),
    )
    def test_anySplit(self, body: bytes, sizes: list[int], cuts: list[int]) -> None:
        """
        However the encoded body is cut into reads, the decoded bytes are
        the body, and what follows it is left over.
        """
        wire = chunked(body, sizes) + b"REST"
        decoder = ChunkedDecoder()
        got, rest, at = [], b"", 0
        for cut in cuts + [len(wire)]:
            pieces, left = decoder.feed(wire[at : at + cut])
            got += pieces
            rest += left
            at += cut
            if at >= len(wire):
                break
        self.assertEqual(b"".join(got), body)
        self.assertTrue(decoder.done)
        self.assertEqual(rest, b"REST")

    def test_refused(self) -> None:
        for wire in (b"x\r\n", b"-1\r\n", b"5\r\nhelloXX", b"5\n", b"1" * 17 + b"\r\n", b"5 x\r\n", b"a" * 5000):
            with self.subTest(wire=wire[:20]):
                self.assertRaises(BadResponse, ChunkedDecoder().feed, wire)

    def test_trailerBounded(self) -> None:
        decoder = ChunkedDecoder()
        decoder.feed(b"0\r\n")
        self.assertRaises(BadResponse, decoder.feed, (b"X: " + b"y" * 1000 + b"\r\n") * 70)

# -*- test-case-name: tests.test_tls -*-
"""
Tests for TLS on both sides of the proxy: C{https://} sources (certificate
checks, SNI, C{tls_ca}, C{tls_verify}) and TLS listeners (C{ssl:} and the
SNI directory endpoint C{tls:}, HTTP/2 by ALPN, the TLS version floor).

Everything runs on 127.0.0.1 in this process: backends are Twisted
L{Site}s, the proxy is what L{txrevproxy.build} makes, and clients are small
protocols that speak raw HTTP/1.1 or, with the C{h2} library, HTTP/2.
Certificates are made per test by L{tests.certs}.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any, Optional

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS
from twisted.logger import formatEvent, globalLogPublisher
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from tests.certs import CertificateAuthority, Issued
from txrevproxy import build, parse_config
from txrevproxy._endpoints import TLSHandshakeFailed, load_ca_certificates

__all__ = [
    "Harness",
    "echo_site",
    "get",
    "header",
    "parse_response",
    "raw_request",
    "temporary_directory",
]


def temporary_directory(case: SynchronousTestCase) -> Path:
    """
    A fresh directory (short, for Unix socket paths), removed after C{case}.
    """
    path = tempfile.mkdtemp(prefix="txrp-")
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return Path(path)


class _Echo(Resource):
    """
    Answers with what it received, as JSON; C{/stream} answers in chunks
    (no C{Content-Length}).
    """

    isLeaf = True

    def __init__(self, seen: list[dict[str, Any]]) -> None:
        super().__init__()
        self.seen = seen

    def render(self, request: Any) -> Any:
        record = {
            "method": request.method.decode("ascii"),
            "uri": request.uri.decode("latin-1"),
            "version": request.clientproto.decode("ascii"),
            "headers": [
                [name.decode("latin-1").lower(), value.decode("latin-1")]
                for name, values in request.requestHeaders.getAllRawHeaders()
                for value in values
            ],
            "body": request.content.read().decode("latin-1"),
            "secure": request.isSecure(),
        }
        self.seen.append(record)
        request.setHeader(b"content-type", b"application/json")
        if request.path == b"/stream":
            for piece in (b"one ", b"two ", b"three"):
                request.write(piece)
            request.finish()
            return NOT_DONE_YET
        return json.dumps(record).encode("ascii")


def echo_site(seen: list[dict[str, Any]]) -> Site:
    """
    A backend that records each request in C{seen} and echoes it as JSON.
    """
    return Site(_Echo(seen))


def header(record: dict[str, Any], name: str) -> list[str]:
    """
    The values of a header of a request a backend recorded.
    """
    return [value for key, value in record["headers"] if key == name]


class Harness:
    """
    Listeners, services and connections of one test, all shut down at its
    end; server-side connections still open then are aborted and awaited, so
    the reactor is left clean.
    """

    def __init__(self, case: TestCase) -> None:
        self.case = case
        self.ports: list[Any] = []
        self.services: list[Any] = []
        self.open: dict[Any, tuple[list[Any], Deferred[None]]] = {}
        self.accepted = 0
        self.logged: list[str] = []
        globalLogPublisher.addObserver(self._log)
        case.addCleanup(self._shutdown)

    def _log(self, event: dict[str, Any]) -> None:
        text = formatEvent(event)
        if text:
            self.logged.append(text)

    def track(self, factory: Any) -> Any:
        """
        Record every connection C{factory} serves.
        """
        build_protocol = factory.buildProtocol

        def buildProtocol(addr: Any) -> Any:
            protocol = build_protocol(addr)
            if protocol is not None:
                self.accepted += 1
                transport: list[Any] = []
                lost: Deferred[None] = Deferred()
                self.open[protocol] = (transport, lost)
                make_connection = protocol.makeConnection
                connection_lost = protocol.connectionLost

                def makeConnection(t: Any) -> None:
                    transport.append(t)
                    make_connection(t)

                def connectionLost(reason: Failure) -> None:
                    self.open.pop(protocol, None)
                    connection_lost(reason)
                    lost.callback(None)

                protocol.makeConnection = makeConnection
                protocol.connectionLost = connectionLost
            return protocol

        factory.buildProtocol = buildProtocol
        return factory

    @inlineCallbacks
    def listen(self, endpoint: Any, factory: Any) -> Generator[Deferred[Any], Any, int]:
        """
        Serve C{factory} on C{endpoint}; the port number (0 for a Unix
        socket).
        """
        port = yield endpoint.listen(self.track(factory))
        self.ports.append(port)
        return getattr(port.getHost(), "port", 0)

    def listen_on(self, description: str, factory: Any) -> Deferred[int]:
        return self.listen(serverFromString(reactor, description), factory)

    def backend(
        self, seen: list[dict[str, Any]], issued: Optional[Issued] = None,
        server_names: Optional[list[Optional[bytes]]] = None,
    ) -> Deferred[int]:
        """
        An echo backend on 127.0.0.1, over TLS with C{issued} if given;
        the server names clients ask for by SNI go to C{server_names}.
        """
        if issued is None:
            return self.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), echo_site(seen))
        names = server_names if server_names is not None else []

        def record(name: Optional[bytes]) -> None:
            names.append(name)
            return None

        options = CertificateOptions(
            privateKey=load_pem_private_key(issued.key, None),
            certificate=x509.load_pem_x509_certificate(issued.certificate),
            contextForServerName=record,
        )
        return self.listen(
            SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1"), echo_site(seen)
        )

    def proxy(self, text: str) -> Any:
        """
        The site (and started services) for a configuration text.
        """
        runtime = build(parse_config(text), reactor)
        runtime.service.startService()
        self.services.append(runtime.service)
        return runtime.site

    @inlineCallbacks
    def _shutdown(self) -> Generator[Deferred[Any], Any, None]:
        globalLogPublisher.removeObserver(self._log)
        for port in self.ports:
            yield port.stopListening()
        for service in self.services:
            yield service.stopService()
        waiting = [lost for _, lost in self.open.values()]
        for transport, _ in list(self.open.values()):
            if transport:
                transport[0].abortConnection()
        yield DeferredList(waiting)


@implementer(IHandshakeListener)
class _RawClient(Protocol):
    """
    Sends bytes, collects everything until the connection closes, and notes
    what TLS negotiated.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()
        self.handshake = False
        self.protocol: Optional[bytes] = None
        self.peer_name: Optional[str] = None

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def handshakeCompleted(self) -> None:
        self.handshake = True
        self.protocol = self.transport.negotiatedProtocol
        subject = self.transport.getPeerCertificate().to_cryptography().subject
        self.peer_name = subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure) -> None:
        if self.received or not reason.check(SSL.Error):
            self.done.callback(b"".join(self.received))
        else:
            self.done.errback(reason)


def client_tls(ca: CertificateAuthority, name: str, protocols: Sequence[bytes] = ()) -> Any:
    """
    TLS options of a client that trusts only C{ca} and asks for C{name}.
    """
    return optionsForClientTLS(
        name, trustRoot=Certificate.loadPEM(ca.certificate), acceptableProtocols=list(protocols) or None
    )


@inlineCallbacks
def raw_request(
    port: int, data: bytes, tls: Any = None, path: Optional[str] = None
) -> Generator[Deferred[Any], Any, tuple[_RawClient, bytes]]:
    """
    Send C{data} to 127.0.0.1:C{port} (over TLS with C{tls} options, or to
    the Unix socket C{path}) and read until the server closes.
    """
    endpoint: Any
    if path is not None:
        endpoint = UNIXClientEndpoint(reactor, path, timeout=5)
    else:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    client = _RawClient(data)
    yield connectProtocol(endpoint, client)
    received = yield client.done
    return client, received


def parse_response(data: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """
    Status, headers (lower-cased names) and body of one HTTP/1.1 response,
    de-chunked.
    """
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
    if ("transfer-encoding", "chunked") in headers:
        out = b""
        while True:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            body = rest[size + 2 :]
        body = out
    return status, headers, body


def get(host: str, path: str = "/", extra: bytes = b"") -> bytes:
    """
    An HTTP/1.1 GET that asks the server to close after answering.
    """
    return (
        b"GET " + path.encode("ascii") + b" HTTP/1.1\r\nHost: " + host.encode("ascii")
        + b"\r\nConnection: close\r\n" + extra + b"\r\n"
    )


class _Case(TestCase):
    timeout = 15

    def setUp(self) -> None:
        # The directory goes after the listeners in it are closed.
        self.dir = temporary_directory(self)
        self.harness = Harness(self)
        self.ca = CertificateAuthority()
        self.seen: list[dict[str, Any]] = []
        self.names: list[Optional[bytes]] = []

    def config(self, sources: str, extra_rule: str = "") -> str:
        return (
            "[server]\naccess_log = off\n"
            + sources
            + "[rule:all]\nmatch = default\nhandler = proxy\nsources = "
            + " ".join(line.split(":", 1)[1].rstrip("]") for line in sources.splitlines() if line.startswith("[source:"))
            + "\nconnect_timeout = 2\nread_timeout = 5\n"
            + extra_rule
        )

    @inlineCallbacks
    def through_proxy(self, text: str, data: bytes) -> Generator[Deferred[Any], Any, tuple[int, list[tuple[str, str]], bytes]]:
        site = self.harness.proxy(text)
        port = yield self.harness.listen_on("tcp:0:interface=127.0.0.1", site)
        _, received = yield raw_request(port, data)
        return parse_response(received)


class HTTPSBackendTests(_Case):
    """
    C{https://} sources: certificates are checked, SNI is sent, and a
    refused certificate is a failure to connect.
    """

    @inlineCallbacks
    def test_dnsName(self) -> Generator[Deferred[Any], Any, None]:
        """
        A source named by a DNS name is checked against that name, with the
        CAs of C{tls_ca}, and the name is sent by SNI.
        """
        port = yield self.harness.backend(self.seen, self.ca.issue(["localhost"], []), self.names)
        ca = self.ca.write(self.dir)
        status, _, body = yield self.through_proxy(
            self.config(f"[source:b]\naddress = https://localhost:{port}\ntls_ca = {ca}\n"),
            get("front.example"),
        )
        self.assertEqual(status, 200, body)
        [record] = self.seen
        self.assertTrue(record["secure"])
        self.assertEqual(header(record, "host"), [f"localhost:{port}"])
        self.assertEqual(self.names, [b"localhost"])

    @inlineCallbacks
    def test_ipAddress(self) -> Generator[Deferred[Any], Any, None]:
        """
        A source named by an IP address is checked against the certificate's
        IP address names; no SNI is sent for an address.
        """
        port = yield self.harness.backend(self.seen, self.ca.issue(["backend.test"], ["127.0.0.1"]), self.names)
        ca = self.ca.write(self.dir)
        status, _, body = yield self.through_proxy(
            self.config(f"[source:b]\naddress = https://127.0.0.1:{port}\ntls_ca = {ca}\n"),
            get("front.example"),
        )
        self.assertEqual(status, 200, body)
        self.assertEqual(len(self.seen), 1)
        self.assertEqual(self.names, [None])

    @inlineCallbacks
    def test_ipAddressNotInCertificate(self) -> Generator[Deferred[Any], Any, None]:
        """
        A certificate without the source's IP address is refused: the
        client gets a 502, the log says why, and the backend sees no request.
        """
        port = yield self.harness.backend(self.seen, self.ca.issue(["127.0.0.1.test"], []))
        ca = self.ca.write(self.dir)
        status, _, _ = yield self.through_proxy(
            self.config(f"[source:b]\naddress = https://127.0.0.1:{port}\ntls_ca = {ca}\n"),
            get("front.example"),
        )
        self.assertEqual(status, 502)
        self.assertEqual(self.seen, [])
        [line] = [line for line in self.harness.logged if "502 for" in line]
        self.assertIn("b: TLS handshake with the backend failed", line)
        self.assertIn("does not match", line)

    @inlineCallbacks
    def test_untrustedCA(self) -> Generator[Deferred[Any], Any, None]:
        """
        Without C{tls_ca} the system's CAs are trusted, and a private CA is
        not among them.
        """
        port = yield self.harness.backend(self.seen, self.ca.issue())
        status, _, _ = yield self.through_proxy(
            self.config(f"[source:b]\naddress = https://localhost:{port}\n"), get("front.example")
        )
        self.assertEqual(status, 502)
        self.assertEqual(self.seen, [])
        [line] = [line for line in self.harness.logged if "502 for" in line]
        self.assertIn("certificate verify failed", line)

    @inlineCallbacks
    def test_bundle(self) -> Generator[Deferred[Any], Any, None]:
        """
        Every CA of a C{tls_ca} bundle is trusted, not only the first.
        """
        port = yield self.harness.backend(self.seen, self.ca.issue())
        bundle = self.dir / "bundle.pem"
        bundle.write_bytes(CertificateAuthority("other").certificate + self.ca.certificate)
        status, _, body = yield self.through_proxy(
            self.config(f"[source:b]\naddress = https://localhost:{port}\ntls_ca = {bundle}\n"),
            get("front.example"),
        )
        self.assertEqual(status, 200, body)

    @inlineCallbacks
    def test_verifyOff(self) -> Generator[Deferred[Any], Any, None]:
        """
        C{tls_verify = no} accepts any certificate (here: an unknown CA and
        another name), still sends SNI, and says so in the log at start.
        """
        port = yield self.harness.backend(self.seen, self.ca.issue(["elsewhere.test"], []), self.names)
        text = self.config(f"[source:b]\naddress = https://localhost:{port}\ntls_verify = no\n")
        status, _, body = yield self.through_proxy(text, get("front.example"))
        self.assertEqual(status, 200, body)
        self.assertEqual(self.names, [b"localhost"])
        warnings = [line for line in self.harness.logged if "verification is off" in line]
        self.assertEqual(len(warnings), 1)
        self.assertIn("Source b:", warnings[0])

    @inlineCallbacks
    def test_failover(self) -> Generator[Deferred[Any], Any, None]:
        """
        A refused certificate is a failure to connect: nothing was sent, so
        even a POST goes on to the next source.
        """
        bad = yield self.harness.backend([], CertificateAuthority("other").issue())
        good = yield self.harness.backend(self.seen, self.ca.issue())
        ca = self.ca.write(self.dir)
        text = self.config(
            f"[source:bad]\naddress = https://localhost:{bad}\n"
            f"[source:good]\naddress = https://localhost:{good}\ntls_ca = {ca}\n",
            "balancer = failover\n",
        )
        request = b"POST /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc"
        status, _, body = yield self.through_proxy(text, request)
        self.assertEqual(status, 200, body)
        self.assertEqual([r["body"] for r in self.seen], ["abc"])

    @inlineCallbacks
    def test_pooled(self) -> Generator[Deferred[Any], Any, None]:
        """
        TLS connections to a source are kept alive and reused.
        """
        port = yield self.harness.backend(self.seen, self.ca.issue(), self.names)
        ca = self.ca.write(self.dir)
        site = self.harness.proxy(self.config(f"[source:b]\naddress = https://localhost:{port}\ntls_ca = {ca}\n"))
        front = yield self.harness.listen_on("tcp:0:interface=127.0.0.1", site)
        before = self.harness.accepted
        for _ in range(3):
            _, received = yield raw_request(front, get("x"))
            self.assertEqual(parse_response(received)[0], 200)
        # One front connection per request, one backend connection in all.
        self.assertEqual(self.harness.accepted - before, 4)
        self.assertEqual(len(self.names), 1)

    @inlineCallbacks
    def test_handshakeTimeout(self) -> Generator[Deferred[Any], Any, None]:
        """
        A backend that accepts TCP but never answers the handshake is a
        connect timeout (504), bounded by C{connect_timeout}.
        """
        silent = Factory.forProtocol(Protocol)
        port = yield self.harness.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), silent)
        text = self.config(f"[source:b]\naddress = https://localhost:{port}\n").replace(
            "connect_timeout = 2", "connect_timeout = 0.3"
        )
        status, _, _ = yield self.through_proxy(text, get("x"))
        self.assertEqual(status, 504)
        [line] = [line for line in self.harness.logged if "504 for" in line]
        self.assertIn("connect timeout", line)

    @inlineCallbacks
    def test_cancelledDuringHandshake(self) -> Generator[Deferred[Any], Any, None]:
        """
        A request given up (here by C{read_timeout}) while its connection is
        still in the handshake drops that connection.
        """
        silent = Factory.forProtocol(Protocol)
        port = yield self.harness.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), silent)
        text = self.config(f"[source:b]\naddress = https://localhost:{port}\n").replace(
            "read_timeout = 5", "read_timeout = 0.3"
        )
        status, _, _ = yield self.through_proxy(text, get("x"))
        self.assertEqual(status, 504)
        [line] = [line for line in self.harness.logged if "504 for" in line]
        self.assertIn("read_timeout", line)
        # The backend side of the abandoned connection is closed too.
        while any(type(p) is Protocol for p in self.harness.open):
            yield deferLater(reactor, 0.01)


class CABundleTests(SynchronousTestCase):
    """
    L{load_ca_certificates} reads every certificate of a PEM file.
    """

    def test_several(self) -> None:
        path = temporary_directory(self) / "cas.pem"
        path.write_bytes(b"# comment\n" + CertificateAuthority("a").certificate + CertificateAuthority("b").certificate)
        names = [c.original.to_cryptography().subject.rfc4514_string() for c in load_ca_certificates(str(path))]
        self.assertEqual(names, ["CN=a", "CN=b"])

    def test_none(self) -> None:
        path = temporary_directory(self) / "empty.pem"
        path.write_bytes(CertificateAuthority().issue().key)
        with self.assertRaises(ValueError) as raised:
            load_ca_certificates(str(path))
        self.assertIn("no PEM certificate", str(raised.exception))

    def test_broken(self) -> None:
        path = temporary_directory(self) / "broken.pem"
        path.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        with self.assertRaises(ValueError) as raised:
            load_ca_certificates(str(path))
        self.assertIn(str(path), str(raised.exception))

    def test_failureIsConnectError(self) -> None:
        """
        A refused handshake is retried and counted like a refused connection.
        """
        from twisted.internet.error import ConnectError

        self.assertTrue(issubclass(TLSHandshakeFailed, ConnectError))


class _H2Client(Protocol):
    """
    Sends requests over one HTTP/2 connection (body chunks as flow control
    allows) and collects the responses by stream.
    """

    def __init__(
        self,
        requests: Sequence[tuple[list[tuple[bytes, bytes]], bytes]],
        patience: float = 5.0,
        validate: bool = True,
    ) -> None:
        """
        @param patience: Seconds after which the connection is cut and what
            arrived so far is the answer.
        @param validate: Whether the C{h2} library may refuse to send
            headers it finds invalid; off, a test can send a bad request.
        """
        self.requests = requests
        self.patience = patience
        self.validate = validate
        self.responses: dict[int, dict[str, Any]] = {}
        self.unsent: dict[int, bytes] = {}
        self.protocol: Optional[bytes] = None
        self.error: Optional[Exception] = None
        self.done: Deferred[list[dict[str, Any]]] = Deferred()

    def connectionMade(self) -> None:
        self.timer = reactor.callLater(self.patience, self.transport.abortConnection)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=self.validate,
                normalize_outbound_headers=self.validate,
            )
        )
        self.conn.initiate_connection()
        for headers, body in self.requests:
            stream = self.conn.get_next_available_stream_id()
            self.responses[stream] = {"headers": [], "body": b"", "reset": None, "ended": False}
            self.conn.send_headers(stream, headers, end_stream=not body)
            if body:
                self.unsent[stream] = body
        self._pump()

    def _pump(self) -> None:
        for stream, rest in list(self.unsent.items()):
            while rest:
                window = min(self.conn.local_flow_control_window(stream), self.conn.max_outbound_frame_size)
                if window <= 0:
                    break
                self.conn.send_data(stream, rest[:window], end_stream=len(rest) <= window)
                rest = rest[window:]
            if rest:
                self.unsent[stream] = rest
            else:
                del self.unsent[stream]
        self.transport.write(self.conn.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        self.protocol = self.transport.negotiatedProtocol
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            # The server broke the protocol (say, a body shorter than its
            # content-length): what arrived so far is the answer.
            self.error = e
            self.transport.abortConnection()
            return
        for event in events:
            response = self.responses.get(getattr(event, "stream_id", 0))
            if isinstance(event, h2.events.ResponseReceived):
                response["headers"] = list(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                response["body"] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                response["ended"] = True
            elif isinstance(event, h2.events.StreamReset):
                response["reset"] = event.error_code
                self.unsent.pop(event.stream_id, None)
        self._pump()
        if all(r["ended"] or r["reset"] is not None for r in self.responses.values()):
            self.conn.close_connection()
            self.transport.write(self.conn.data_to_send())
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        if self.timer.active():
            self.timer.cancel()
        self.done.callback([self.responses[k] for k in sorted(self.responses)])


@inlineCallbacks
def h2_exchange(
    port: int, ca: CertificateAuthority, requests: Sequence[tuple[list[tuple[bytes, bytes]], bytes]],
    **options: Any,
) -> Generator[Deferred[Any], Any, tuple[_H2Client, list[dict[str, Any]]]]:
    """
    Send C{requests} over one HTTP/2 connection to 127.0.0.1:C{port}.
    """
    client = _H2Client(requests, **options)
    tls = client_tls(ca, "front.test", [b"h2", b"http/1.1"])
    yield connectProtocol(wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", port)), client)
    responses = yield client.done
    return client, responses


def h2_request(
    method: bytes, path: bytes, authority: bytes = b"front.test", extra: Sequence[tuple[bytes, bytes]] = ()
) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", method), (b":scheme", b"https"), (b":authority", authority), (b":path", path),
        *extra,
    ]


def status_of(response: dict[str, Any]) -> int:
    return int(dict(response["headers"])[b":status"])


class FrontEndTLSTests(_Case):
    """
    The proxy listening on TLS: C{ssl:} and C{tls:} endpoints, the
    forwarding headers and C{tls} condition, SNI, HTTP/2 and TLS versions.
    """

    @inlineCallbacks
    def serve(
        self, listen: Callable[[Path], str], extra_rules: str = "", server: str = ""
    ) -> Generator[Deferred[Any], Any, tuple[int, int]]:
        """
        A proxy to an echo backend, on C{listen(self.dir)} and on plain
        TCP; the two port numbers.  The rule matching C{tls} marks requests
        with C{X-Rule: secure}, the default rule with C{X-Rule: plain}.
        """
        backend = yield self.harness.backend(self.seen)
        text = (
            f"[server]\naccess_log = off\n{server}"
            f"[source:b]\naddress = 127.0.0.1:{backend}\n"
            "[rule:secure]\npriority = 10\nmatch = tls\nhandler = proxy\nsources = b\n"
            "request_add_headers = X-Rule: secure\n"
            "[rule:plain]\nmatch = default\nhandler = proxy\nsources = b\n"
            "request_add_headers = X-Rule: plain\n" + extra_rules
        )
        site = self.harness.proxy(text)
        secure = yield self.harness.listen_on(listen(self.dir), site)
        plain = yield self.harness.listen_on("tcp:0:interface=127.0.0.1", site)
        return secure, plain

    def ssl_listener(self, names: Sequence[str] = ("front.test",)) -> Callable[[Path], str]:
        cert, key = self.ca.issue(list(names), ["127.0.0.1"]).write(self.dir, "front")
        return lambda d: f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1"

    @inlineCallbacks
    def test_sslHTTP11(self) -> Generator[Deferred[Any], Any, None]:
        """
        HTTP/1.1 over an C{ssl:} listener reaches the backend with
        C{X-Forwarded-Proto: https} and C{X-Forwarded-SSL: on}, and the
        C{tls} condition holds; over plain TCP neither.
        """
        secure, plain = yield self.serve(self.ssl_listener())
        client, received = yield raw_request(secure, get("front.test"), client_tls(self.ca, "front.test"))
        self.assertEqual(parse_response(received)[0], 200)
        self.assertIn(client.protocol, (None, b"http/1.1"))
        _, received = yield raw_request(plain, get("front.test"))
        self.assertEqual(parse_response(received)[0], 200)
        over_tls, over_tcp = self.seen
        self.assertEqual(header(over_tls, "x-forwarded-proto"), ["https"])
        self.assertEqual(header(over_tls, "x-forwarded-ssl"), ["on"])
        self.assertEqual(header(over_tls, "x-rule"), ["secure"])
        self.assertEqual(header(over_tcp, "x-forwarded-proto"), ["http"])
        self.assertEqual(header(over_tcp, "x-forwarded-ssl"), ["off"])
        self.assertEqual(header(over_tcp, "x-rule"), ["plain"])
        self.assertFalse(over_tls["secure"])

    @inlineCallbacks
    def test_sniDirectory(self) -> Generator[Deferred[Any], Any, None]:
        """
        The C{tls:} endpoint serves each host name the certificate made for
        it, picked by SNI from a directory of PEM files.
        """
        pems = self.dir / "pems"
        pems.mkdir()
        self.ca.issue(["a.test"], []).write_pem(pems, "a")
        self.ca.issue(["b.test", "*.b.test"], []).write_pem(pems, "b")
        secure, _ = yield self.serve(lambda d: f"tls:{pems}:port=0:interface=127.0.0.1")
        for name in ("a.test", "b.test", "www.b.test"):
            client, received = yield raw_request(secure, get(name), client_tls(self.ca, name))
            self.assertEqual(parse_response(received)[0], 200)
            self.assertEqual(client.peer_name, name.removeprefix("www."))
        self.assertEqual([header(r, "x-forwarded-host") for r in self.seen], [["a.test"], ["b.test"], ["www.b.test"]])
        self.assertEqual([header(r, "x-rule") for r in self.seen], [["secure"]] * 3)

    @inlineCallbacks
    def test_http2(self) -> Generator[Deferred[Any], Any, None]:
        """
        A client that asks for C{h2} by ALPN speaks HTTP/2 to the proxy; the
        backend gets HTTP/1.1 without pseudo-headers, and request bodies
        larger than a flow-control window arrive intact.
        """
        secure, _ = yield self.serve(self.ssl_listener())
        body = bytes(range(256)) * 800  # 200 KiB, three initial windows
        requests = [
            (h2_request(b"GET", b"/get?q=1", extra=[(b"cookie", b"a=1"), (b"cookie", b"b=2")]), b""),
            (h2_request(b"POST", b"/post", extra=[(b"content-length", b"%d" % len(body))]), body),
            (h2_request(b"PUT", b"/put"), b"no length"),
            (h2_request(b"GET", b"/stream"), b""),
        ]
        client, responses = yield h2_exchange(secure, self.ca, requests)
        self.assertEqual(client.protocol, b"h2")
        self.assertEqual([status_of(r) for r in responses], [200] * 4)
        for response in responses:
            names = [name for name, _ in response["headers"]]
            for hop in (b"connection", b"keep-alive", b"transfer-encoding"):
                self.assertNotIn(hop, names)
        self.assertEqual(responses[3]["body"], b"one two three")
        by_path = {record["uri"]: record for record in self.seen}
        self.assertEqual(sorted(by_path), ["/get?q=1", "/post", "/put", "/stream"])
        for record in self.seen:
            self.assertEqual(record["version"], "HTTP/1.1")
            self.assertEqual([n for n, _ in record["headers"] if n.startswith(":")], [])
            self.assertEqual(header(record, "x-forwarded-proto"), ["https"])
            self.assertEqual(header(record, "x-forwarded-host"), ["front.test"])
            self.assertEqual(header(record, "x-rule"), ["secure"])
        self.assertEqual(by_path["/get?q=1"]["method"], "GET")
        # HTTP/2 cookie crumbs become one HTTP/1.1 header (RFC 9113 8.2.3).
        self.assertEqual(header(by_path["/get?q=1"], "cookie"), ["a=1; b=2"])
        self.assertEqual(by_path["/post"]["body"].encode("latin-1"), body)
        self.assertEqual(header(by_path["/post"], "content-length"), [str(len(body))])
        self.assertEqual(by_path["/put"]["body"], "no length")
        self.assertEqual(json.loads(responses[1]["body"])["body"].encode("latin-1"), body)

    @inlineCallbacks
    def test_tls11Refused(self) -> Generator[Deferred[Any], Any, None]:
        """
        TLS 1.2 is the least the listener accepts: a client that can only
        speak TLS 1.1 is refused, while the same client allowed 1.2 is
        served.
        """
        secure, _ = yield self.serve(self.ssl_listener())
        # Allowed 1.1 and 1.2 (no 1.3), the client can only have used 1.2.
        client, received = yield raw_request(secure, get("front.test"), _OldClient(SSL.TLS1_2_VERSION))
        self.assertTrue(client.handshake)
        self.assertEqual(parse_response(received)[0], 200)
        try:
            yield raw_request(secure, get("front.test"), _OldClient(SSL.TLS1_1_VERSION))
        except SSL.Error as e:
            reasons = " ".join(str(entry) for entry in e.args[0])
            if "no protocols available" in reasons or ("unsupported protocol" in reasons and "alert" not in reasons):
                self.skipTest(f"this OpenSSL will not offer TLS 1.1: {reasons}")
            self.assertIn("alert protocol version", reasons)
        else:
            self.fail("a TLS 1.1 client was served")
        self.assertEqual(len(self.seen), 1)


class _CutShort(Protocol):
    """
    A backend that starts a response and hangs up in the middle of it: after
    1000 of the 100000 bytes it announced, or after the first chunk.
    """

    def dataReceived(self, data: bytes) -> None:
        if b"/chunked" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"x" * 1000 + b"\r\n")
        else:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        self.transport.loseConnection()


class HTTP2EdgeTests(_Case):
    """
    HTTP/2 requests on the paths where the proxy answers by itself.
    """

    @inlineCallbacks
    def serve(self, backend: Any = None, server: str = "") -> Generator[Deferred[Any], Any, int]:
        if backend is None:
            backend = echo_site(self.seen)
        port = yield self.harness.listen_on("tcp:0:interface=127.0.0.1", backend)
        cert, key = self.ca.issue(["front.test"], []).write(self.dir, "front")
        site = self.harness.proxy(
            f"[server]\naccess_log = off\n{server}[source:b]\naddress = 127.0.0.1:{port}\n"
            "[rule:all]\nmatch = default\nhandler = proxy\nsources = b\nread_timeout = 2\n"
        )
        secure = yield self.harness.listen_on(f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1", site)
        return secure

    @inlineCallbacks
    def test_tooLarge(self) -> Generator[Deferred[Any], Any, None]:
        """
        C{max_body_size} holds for HTTP/2 bodies too: 413, nothing sent on.
        """
        port = yield self.serve(server="max_body_size = 1000\n")
        _, [response] = yield h2_exchange(
            port, self.ca, [(h2_request(b"POST", b"/p", extra=[(b"content-length", b"2000")]), b"x" * 2000)]
        )
        self.assertEqual(status_of(response), 413)
        self.assertEqual(self.seen, [])

    @inlineCallbacks
    def test_backendDown(self) -> Generator[Deferred[Any], Any, None]:
        """
        A backend that hangs up without answering gives a 502 stream.
        """
        port = yield self.serve(Factory.forProtocol(_Slammer))
        _, [response] = yield h2_exchange(port, self.ca, [(h2_request(b"GET", b"/p"), b"")])
        self.assertEqual(status_of(response), 502)
        self.assertTrue(response["ended"])

    @inlineCallbacks
    def test_backendCut(self) -> Generator[Deferred[Any], Any, None]:
        """
        A backend that fails during the body resets the client's stream
        (the HTTP/2 form of cutting the connection), whether the response
        had a length or not: it never looks complete.
        """
        port = yield self.serve(Factory.forProtocol(_CutShort))
        requests = [(h2_request(b"GET", b"/length"), b""), (h2_request(b"GET", b"/chunked"), b"")]
        _, responses = yield h2_exchange(port, self.ca, requests, patience=2.0)
        for response in responses:
            self.assertEqual(status_of(response), 200)
            self.assertEqual(response["body"], b"x" * 1000)
            self.assertFalse(response["ended"])
            self.assertIsNotNone(response["reset"])

    @inlineCallbacks
    def test_connectWithOversizedBody(self) -> Generator[Deferred[Any], Any, None]:
        """
        An HTTP/2 C{CONNECT} whose body is over C{max_body_size} is refused
        on its stream (413), without disturbing the connection.
        """
        port = yield self.serve(server="max_body_size = 1000\n")
        connect = [(b":method", b"CONNECT"), (b":authority", b"front.test")]
        _, [response] = yield h2_exchange(port, self.ca, [(connect, b"x" * 2000)])
        self.assertIn(status_of(response), (405, 413))

    @inlineCallbacks
    def test_validated(self) -> Generator[Deferred[Any], Any, None]:
        """
        HTTP/2 request heads get the checks HTTP/1.1 heads get: a control
        byte in a header value or an invalid authority is a 400, and
        C{CONNECT} a 405; none reaches the backend.
        """
        port = yield self.serve()
        _, responses = yield h2_exchange(
            port,
            self.ca,
            [
                (h2_request(b"GET", b"/a", extra=[(b"x-a", b"a\x01b")]), b""),
                (h2_request(b"GET", b"/b", authority=b"a b,c"), b""),
                ([(b":method", b"CONNECT"), (b":authority", b"x.test:443")], b""),
            ],
            patience=2.0,
            validate=False,
        )
        self.assertEqual([r["headers"] and status_of(r) for r in responses], [400, 400, 405])
        self.assertEqual(self.seen, [])


class _Slammer(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.abortConnection()


@implementer(IOpenSSLClientConnectionCreator)
class _OldClient:
    """
    A client that speaks TLS 1.1 at most up to C{highest}, trusting anything.
    """

    def __init__(self, highest: int) -> None:
        self.context = SSL.Context(SSL.TLS_METHOD)
        self.context.set_min_proto_version(SSL.TLS1_1_VERSION)
        self.context.set_max_proto_version(highest)
        # OpenSSL 3 needs security level 0 to offer TLS 1.1 at all.
        self.context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")

    def clientConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        return SSL.Connection(self.context)

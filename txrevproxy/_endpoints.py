# -*- test-case-name: tests.test_tls -*-
"""
How the proxy connects to a source: TCP, TLS over TCP, or a Unix socket.

An C{https://} source's certificate is checked against the host name or IP
address of its C{address} (service_identity), and a connection is handed
over only once its handshake succeeded: a refused certificate is then a
failure to connect, retried elsewhere and counted like a refused
connection, never a request that may have been sent.

Backend connections read up to L{READ_SIZE} bytes at a time: large bodies
then cost a quarter of the reactor turns Twisted's default 64 KiB reads do.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import attrs
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._config import SourceConfig

__all__ = ["READ_SIZE", "TLSHandshakeFailed", "load_ca_certificates", "source_endpoint"]

READ_SIZE = 262144

_log = Logger()

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


def load_ca_certificates(path: str) -> list[Certificate]:
    """
    Every certificate in a PEM file, as C{tls_ca} names one: a bundle may
    hold several CAs, and a backend signed by any of them is trusted.

    @raise ValueError: The file holds no PEM certificate, or a broken one.
    """
    with open(path, "rb") as f:
        blocks = _PEM_CERTIFICATE.findall(f.read())
    if not blocks:
        raise ValueError(f"{path}: no PEM certificate (-----BEGIN CERTIFICATE-----) found")
    try:
        return [Certificate.loadPEM(block) for block in blocks]
    except crypto.Error as e:
        raise ValueError(f"{path}: not a valid PEM certificate ({_ssl_reasons(e)})") from None


def _ssl_reasons(error: Exception) -> str:
    """
    OpenSSL's reasons for an error, without its library and function names.
    """
    details = error.args[0] if error.args else ()
    if isinstance(details, list):
        reasons = [entry[-1] for entry in details if isinstance(entry, tuple) and entry[-1]]
        if reasons:
            return "; ".join(reasons)
    return str(error) or "TLS error"


def _is_ip(host: str) -> bool:
    return isIPAddress(host) or isIPv6Address(host)


def _tcp_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """
    A TCP endpoint: an address connects straight (a refusal is known at
    once); a name goes through L{HostnameEndpoint}, which resolves it and
    tries its addresses in turn.
    """
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return HostnameEndpoint(reactor, host, port, timeout=timeout)


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """
    TLS without certificate checks (C{tls_verify = no}), still sending the
    host name by SNI so a backend that serves several names by SNI picks
    the right one.
    """

    def __init__(self, host: str) -> None:
        self._options = CertificateOptions()
        self._server_name: Optional[bytes] = None
        if not _is_ip(host):
            try:
                self._server_name = host.encode("idna")
            except UnicodeError:
                pass  # Not a name a server could have a certificate for.

    def clientConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        connection = self._options.clientConnectionForTLS(protocol)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


def _tls_options(source: SourceConfig) -> IOpenSSLClientConnectionCreator:
    """
    How to speak TLS to an C{https://} source: the certificate checked
    against the address's host name or IP address with service_identity,
    against the system's trusted CAs or those of C{tls_ca}.
    """
    host = source.address.host
    if not source.tls_verify:
        return _Unverified(host)
    trust = None
    if source.tls_ca is not None:
        trust = trustRootFromCertificates(load_ca_certificates(source.tls_ca))
    return optionsForClientTLS(host, trustRoot=trust)


class TLSHandshakeFailed(ConnectError):
    """
    The TLS handshake with a backend failed, most often because its
    certificate was refused.  It is a L{ConnectError}: nothing of the
    request was sent.
    """

    MESSAGE = "TLS handshake with the backend failed"


@implementer(IHandshakeListener)
class _HandshakeGate(Protocol):
    """
    Holds a TLS connection back from the agent until its handshake is done.

    A certificate the proxy refuses is then a failure to connect, like a
    refused connection: no byte of the request was sent, so it can be tried
    on another source whatever the method, and it counts toward
    C{max_fails}.  After the handshake it only passes bytes through.
    """

    transport: Any  # the TLS transport

    def __init__(self, factory: IProtocolFactory, reactor: IReactorTime, timeout: float) -> None:
        self._factory = factory
        self._reactor = reactor
        self._timeout = timeout
        self._timer: Optional[IDelayedCall] = None
        self._timed_out = False
        self.connecting: Optional[Deferred[Any]] = None
        self.inner: Optional[IProtocol] = None
        self.ready: Deferred[IProtocol] = Deferred(lambda d: self._abort())

    def connectionMade(self) -> None:
        self._timer = self._reactor.callLater(self._timeout, self._expire)

    def handshakeCompleted(self) -> None:
        self._stop_timer()
        if self.ready.called:
            return
        inner = self._factory.buildProtocol(self.transport.getPeer())
        if inner is None:
            self.transport.abortConnection()
            return
        self.inner = inner
        inner.makeConnection(self.transport)
        self.ready.callback(inner)

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_timer()
        if self.inner is not None:
            self.inner.connectionLost(reason)
        elif not self.ready.called:
            self.ready.errback(self._failure(reason))

    def _failure(self, reason: Failure) -> Failure:
        if self._timed_out:
            return Failure(ConnectTimeout(string=f"TLS handshake ({self._timeout:g} s)"))
        if reason.check(VerificationError):
            why = "certificate does not match the host name or IP address"
        elif reason.check(SSL.Error):
            why = _ssl_reasons(reason.value)
        elif reason.check(ConnectionDone, ConnectionLost):
            why = "connection closed by the backend"
        else:
            why = reason.getErrorMessage()
        return Failure(TLSHandshakeFailed(string=why))

    def _expire(self) -> None:
        self._timer = None
        self._timed_out = True
        self.transport.abortConnection()

    def _abort(self) -> None:
        # The request gave up (cancelled): stop connecting, or handshaking.
        self._stop_timer()
        if self.transport is not None:
            self.transport.abortConnection()
        elif self.connecting is not None:
            self.connecting.cancel()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None


class _GateFactory(Factory):
    def __init__(self, gate: _HandshakeGate) -> None:
        self._gate = gate

    def buildProtocol(self, addr: Any) -> _HandshakeGate:
        return self._gate


@implementer(IStreamClientEndpoint)
@attrs.frozen
class _TLSEndpoint:
    """
    TLS over another endpoint, whose connections are handed over only once
    the handshake (and so the certificate check) succeeded; the handshake
    has C{timeout} seconds.
    """

    reactor: IReactorTime
    endpoint: IStreamClientEndpoint
    creator: IOpenSSLClientConnectionCreator
    timeout: float

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        gate = _HandshakeGate(factory, self.reactor, self.timeout)
        gate.connecting = wrapClientTLS(self.creator, self.endpoint).connect(_GateFactory(gate))

        def failed(reason: Failure) -> None:
            # No TCP connection (refused, timed out, cancelled).
            if not gate.ready.called:
                gate.ready.errback(reason)

        gate.connecting.addErrback(failed)
        return gate.ready


def source_endpoint(
    reactor: Any, source: SourceConfig, timeout: float, tls: bool = True
) -> IStreamClientEndpoint:
    """
    The client endpoint that reaches a source: TCP (with TLS for
    C{https://} unless C{tls} is false) or a Unix socket.

    Over TLS, C{timeout} bounds the TCP connection and then the handshake,
    and a failed handshake (say, a certificate that is refused) fails the
    connection attempt with L{TLSHandshakeFailed}, a L{ConnectError}.
    """
    address = source.address
    endpoint: IStreamClientEndpoint
    if address.scheme == "unix":
        endpoint = UNIXClientEndpoint(reactor, address.path, timeout=timeout)
    else:
        endpoint = _tcp_endpoint(reactor, address.host, address.port, timeout)
    endpoint = _LargeReads(endpoint)
    if address.scheme == "https" and tls:
        return _TLSEndpoint(reactor, endpoint, _tls_options(source), timeout)
    return endpoint


@implementer(IStreamClientEndpoint)
@attrs.frozen
class _LargeReads:
    """
    Connects through another endpoint, then has the socket read
    L{READ_SIZE} bytes at a time.
    """

    endpoint: IStreamClientEndpoint

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def enlarge(protocol: IProtocol) -> IProtocol:
            transport = getattr(protocol, "transport", None)
            if transport is not None and hasattr(transport, "bufferSize"):
                transport.bufferSize = READ_SIZE
            return protocol

        return self.endpoint.connect(factory).addCallback(enlarge)



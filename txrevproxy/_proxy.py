# -*- test-case-name: tests.test_proxy -*-
"""
The proxy Resource: one request in, one backend exchange (with as many
attempts as the retry rules allow), one response out.

The resource is a leaf: whatever lies below the path it is mounted at is
forwarded, byte for byte, so it serves the same in txrevproxy's own tree
(where a rule decides what "below" means) and in any other C{twisted.web}
tree or Klein route.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    FileBodyProducer,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ._backend import Backend
from ._balancers import IBalancer
from ._config import ProxySettings
from ._errorpages import ErrorPages
from ._headers import HeaderPolicy, Peer, client_address
from ._internal import KEPT_HEADERS, BadRedirect, TooManyRedirects, dispatch, redirect_value, validate_target
from ._health import HealthChecker, SourceHealth, http_probe
from ._interpreter import SpawnFailed
from ._streams import RequestBody, ResponseRelay
from ._values import Network

__all__ = ["ReverseProxyResource", "forwarded_target", "request_peer"]

_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def forwarded_target(request: Any) -> bytes:
    """
    What to send as the request target: the raw path less the segments the
    resource tree consumed on the way here (C{request.prepath}), plus the
    raw query.  Working on the raw bytes keeps the target byte-exact.
    """
    path, question, query = request.uri.partition(b"?")
    if path[:1] != b"/":
        # Absolute-form: the routing authority is not forwarded.
        scheme_end = path.find(b"://")
        slash = path.find(b"/", scheme_end + 3) if scheme_end >= 0 else -1
        path = path[slash:] if slash >= 0 else b"/"
    consumed = len(request.prepath)
    if consumed:
        segments = path.split(b"/")
        path = b"/" + b"/".join(segments[1 + consumed :])
    return path + question + query


def request_peer(request: Any, trusted: Sequence[Network]) -> Peer:
    """
    The immediate peer, whether it is trusted, and the client address the
    forwarding headers and C{from} conditions use; worked out once per
    request.
    """
    peer = getattr(request, "_txrevproxy_peer", None)
    if peer is None:
        peer = request._txrevproxy_peer = _peer(request, trusted)
    return peer


def _peer(request: Any, trusted: Sequence[Network]) -> Peer:
    host = getattr(request.getClientAddress(), "host", None)
    try:
        address = ipaddress.ip_address(host) if host else None
    except ValueError:
        address = None
    trusted_peer = address is not None and any(address in net for net in trusted)
    client = address
    if trusted_peer:
        chain = request.requestHeaders.getRawHeaders(b"x-forwarded-for", ())
        client = client_address(address, chain, trusted)
    return Peer(address, trusted_peer, client, request.isSecure())


class ReverseProxyResource(Resource):
    """
    Forwards requests to a set of backends picked by a balancer.

    @ivar backends: The sources, in configuration order.
    """

    isLeaf = True

    def __init__(
        self,
        backends: Sequence[Backend],
        settings: ProxySettings,
        balancer: IBalancer,
        reactor: IReactorTime,
        *,
        pages: ErrorPages = ErrorPages(),
        trusted_proxies: Sequence[Network] = (),
        server_tokens: bytes = b"txrevproxy",
        name: str = "proxy",
    ) -> None:
        super().__init__()
        self.backends = tuple(backends)
        self.settings = settings
        self.balancer = balancer
        self.reactor = reactor
        self.pages = pages
        self.trusted_proxies = tuple(trusted_proxies)
        self.server_tokens = server_tokens
        self.name = name
        self.policy = HeaderPolicy(
            request_hide=settings.request_hide_headers,
            request_add=settings.request_add_headers,
            reply_hide=settings.reply_hide_headers,
            reply_add=settings.reply_add_headers,
            reply_rewrite=settings.reply_rewrite,
            preserve_server=settings.preserve_server,
        )
        self._by_name = {backend.name: backend for backend in self.backends}
        self.health = SourceHealth(
            list(self._by_name), settings.max_fails, settings.fail_timeout, reactor, rule=name
        )
        # Buffered bodies (HTTP/2, or a tree whose requests are not ours)
        # are read from disk in steps on this reactor, not the global one.
        self.cooperator = Cooperator(scheduler=lambda step: reactor.callLater(0, step))

    def render(self, request: Any) -> Any:
        _Exchange(self, request).start()
        return NOT_DONE_YET

    def health_checker(self) -> Optional[HealthChecker]:
        """
        The service that probes the backends when C{health_check} is set,
        or L{None}.  Whoever serves this resource starts and stops it.
        """
        path = self.settings.health_check
        if path is None:
            return None
        timeout = min(self.settings.health_interval, 5.0)
        probes = {
            b.name: http_probe(b.agent, b.uri_prefix + path.encode("ascii"), b.host, timeout, self.reactor)
            for b in self.backends
        }
        return HealthChecker(self.health, probes, self.settings.health_interval, self.reactor, timeout)

    def rewrite_target(self, target: bytes) -> bytes:
        """
        Apply C{request_rewrite}: the first rule that matches rewrites.
        """
        if not self.settings.request_rewrite:
            return target
        text = target.decode("latin-1")
        for rewrite in self.settings.request_rewrite:
            result = rewrite.apply(text)
            if result is not None:
                return result.encode("latin-1", "replace")
        return target


class _Exchange:
    """
    One proxied request: its attempts at the backends and its response.
    """

    _log = Logger()

    def __init__(self, proxy: ReverseProxyResource, request: Any) -> None:
        self.proxy = proxy
        self.request = request
        self.tried: list[tuple[str, str]] = []
        self.pending: Optional[Deferred[Any]] = None
        self.relay: Optional[ResponseRelay] = None
        self.gone = False
        self.timed_out = False
        self.timer: Optional[IDelayedCall] = None
        self.fell_back = False
        self.body = self._body()

    def _body(self) -> Optional[IBodyProducer]:
        if getattr(self.request, "internal_redirects", 0):
            return None  # An internal redirect is a GET without a body.
        stream = getattr(self.request, "body_stream", None)
        if stream is not None:
            return stream
        content = self.request.content
        if content is None:
            return None
        content.seek(0, 2)
        if content.tell() == 0 and not self.request.requestHeaders.hasHeader(b"content-length"):
            return None
        content.seek(0)
        return FileBodyProducer(content, cooperator=self.proxy.cooperator)

    def start(self) -> None:
        request, proxy = self.request, self.proxy
        request.notifyFinish().addErrback(self._client_gone)
        peer = request_peer(request, proxy.trusted_proxies)
        client_host = request.getHeader(b"host") or b""
        self.target = proxy.rewrite_target(forwarded_target(request))
        self.peer = peer
        self.client_host = client_host
        self.raw_headers = list(request.requestHeaders.getAllRawHeaders())
        self._attempt()

    # Dispatch.

    def _choose(self) -> Optional[Backend]:
        proxy = self.proxy
        tried = {name for name, _ in self.tried}
        untried = [b.name for b in proxy.backends if b.name not in tried]
        if not untried:
            return None
        if not any(proxy.health.in_rotation(name) for name in untried):
            # Every source left is out of rotation: one is tried anyway,
            # once per request, rather than failing without trying.
            if self.fell_back:
                return None
            self.fell_back = True
        candidates = proxy.health.candidates(untried)
        client = "" if self.peer.client is None else str(self.peer.client)
        return proxy._by_name[proxy.balancer.choose(client, candidates)]

    def _attempt(self) -> None:
        self.timed_out = False
        backend = self._choose()
        if backend is None:
            self._fail()
            return
        self.backend = backend
        d = backend.when_ready()
        d.addCallback(lambda _: self._send(backend))
        d.addCallbacks(self._got_response, self._attempt_failed)
        self.pending = d

    def _send(self, backend: Backend) -> Deferred[IResponse]:
        proxy, request = self.proxy, self.request
        host = self.client_host if proxy.settings.preserve_host and self.client_host else backend.host
        headers = proxy.policy.request_headers(self.raw_headers, host, self.client_host, self.peer)
        raw: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            raw.setdefault(name, []).append(value)
        proxy.balancer.started(backend.name)
        d = backend.agent.request(
            request.method, backend.uri_prefix + self.target, Headers(raw), self.body
        )
        self.pending = d
        self._start_timer(d)
        d.addBoth(self._ended, backend)
        return d

    def _ended(self, result: Any, backend: Backend) -> Any:
        self.proxy.balancer.finished(backend.name)
        return result

    def _start_timer(self, d: Deferred[Any]) -> None:
        def expire() -> None:
            self.timer = None
            self.timed_out = True
            d.cancel()

        def arm() -> None:
            if not d.called and not self.gone:
                self.timer = self.proxy.reactor.callLater(self.proxy.settings.read_timeout, expire)

        stream = self.body if isinstance(self.body, RequestBody) else None
        if stream is None:
            arm()
        else:
            stream.when_complete(arm)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None

    def _attempt_failed(self, reason: Failure) -> None:
        self._stop_timer()
        if self.gone:
            return
        why = self._describe(reason)
        self.tried.append((self.backend.name, why))
        if self.timed_out or reason.check(ConnectError, ConnectTimeout, DNSLookupError):
            # The source's own fault, on a new connection; a reset of a
            # pooled connection or an HTTP error answer is not counted.
            self.proxy.health.failed(self.backend.name, why)
        if self._retryable(reason):
            self._attempt()
        else:
            self._fail(reason)

    def _describe(self, reason: Failure) -> str:
        if self.timed_out:
            return f"no response within read_timeout ({self.proxy.settings.read_timeout:g} s)"
        if reason.check(ConnectTimeout):
            return f"connect timeout ({self.proxy.settings.connect_timeout:g} s)"
        if reason.check(SpawnFailed):
            return "interpreter not running"
        if reason.check(ResponseNeverReceived, RequestTransmissionFailed, ResponseFailed):
            # Agent wraps the real causes in a list of failures.
            causes = [f.getErrorMessage() or f.type.__name__ for f in reason.value.reasons]
            return f"{reason.type.__name__}: " + "; ".join(causes)
        return reason.getErrorMessage() or reason.type.__name__

    def _retryable(self, reason: Failure) -> bool:
        """
        Whether another source may be tried (SPEC §3 Dispatch): always when
        nothing was sent; when the request went out but no response byte
        came back, only for an idempotent method whose body has not begun
        to stream.  Nothing has reached the client in either case.
        """
        if not self.timed_out and reason.check(ConnectError, DNSLookupError, SpawnFailed, RequestNotSent):
            return True
        if self.timed_out or reason.check(ResponseNeverReceived, RequestTransmissionFailed):
            started = getattr(self.body, "started", self.body is not None)
            return self.request.method in _IDEMPOTENT and not started
        return False

    def _fail(self, reason: Optional[Failure] = None) -> None:
        if self.timed_out or self._all_timeouts():
            status = 504
        elif reason is None and all(why == "interpreter not running" for _, why in self.tried):
            status = 503
        else:
            status = 502
        attempts = "; ".join(f"{name}: {why}" for name, why in self.tried) or "no source"
        self._log.warn(
            "{status} for {method} {target} (rule {rule}): {attempts}",
            status=status,
            method=self.request.method.decode("latin-1"),
            target=self.target.decode("latin-1"),
            rule=self.proxy.name,
            attempts=attempts,
        )
        self._error(status)

    def _all_timeouts(self) -> bool:
        return bool(self.tried) and all("timeout" in why for _, why in self.tried)

    def _error(self, status: int) -> None:
        request = self.request
        if self.gone:
            return
        if isinstance(self.body, RequestBody) and not self.body.complete:
            # The rest of the body will not be read: the connection cannot
            # carry another request.
            request.channel.persistent = False
        request.responseHeaders.setRawHeaders(b"server", [self.proxy.server_tokens])
        body = self.proxy.pages.render(request, status)
        request.write(body)
        request.finish()

    # Response.

    def _got_response(self, response: IResponse) -> None:
        self._stop_timer()
        self.pending = None
        self.proxy.health.succeeded(self.backend.name)
        if self.gone:
            response.deliverBody(_Discard())
            return
        request = self.request
        proxy = self.proxy
        if proxy.settings.x_sendfile:
            value = redirect_value(response.headers)
            if value is not None:
                self._internal_redirect(response, value)
                return
        if proxy.settings.vserver_errors and response.code >= 400:
            # The vserver's page replaces the backend's answer; the status
            # stays.  1xx-3xx answers (a redirect's Location) never do.
            response.deliverBody(_Drain())
            self._error(response.code)
            return
        request.setResponseCode(response.code, response.phrase)
        headers = proxy.policy.reply_headers(response.headers.getAllRawHeaders(), proxy.server_tokens)
        out = request.responseHeaders
        date = out.getRawHeaders(b"date")
        raw: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            raw.setdefault(name, []).append(value)
        request.responseHeaders = out = Headers(raw)
        if date:
            out.setRawHeaders(b"date", date)
        if request.method == b"HEAD":
            # Agent leaves a HEAD answer's Content-Length among the headers.
            length = response.headers.getRawHeaders(b"content-length")
            if length:
                out.setRawHeaders(b"content-length", length[-1:])
        elif isinstance(response.length, int) and response.code not in (204, 304):
            # (A 304's length would be that of the 200 it stands for, which
            # Agent does not keep: it is left out, as RFC 9110 §8.6 allows.)
            out.setRawHeaders(b"content-length", [b"%d" % response.length])
        if isinstance(self.body, RequestBody) and not self.body.complete:
            request.channel.persistent = False
        self.relay = ResponseRelay(request, proxy.reactor, proxy.settings.read_timeout, self._relayed)
        response.deliverBody(self.relay)

    def _internal_redirect(self, response: IResponse, value: bytes) -> None:
        response.deliverBody(_Drain())
        kept = [
            (name, response.headers.getRawHeaders(name))
            for name in KEPT_HEADERS
            if response.headers.hasHeader(name)
        ]
        try:
            dispatch(self.request, validate_target(value), kept)
        except BadRedirect as e:
            self._log.warn(
                "502 for {target}: backend {source} asked for an internal redirect to "
                "{value!r}: {why}",
                target=self.target.decode("latin-1"),
                source=self.backend.name,
                value=value,
                why=str(e),
            )
            self._error(502)
        except TooManyRedirects as e:
            self._log.warn("500 for {target}: {why}", target=self.target.decode("latin-1"), why=str(e))
            self._error(500)

    def _relayed(self, reason: Optional[Failure]) -> None:
        self.relay = None
        if self.gone:
            return
        if reason is None:
            self.request.finish()
            return
        self._log.warn(
            "Backend {source} failed during the response body of {target}: {why}",
            source=self.backend.name,
            target=self.target.decode("latin-1"),
            why=reason.getErrorMessage(),
        )
        request = self.request
        if not request.startedWriting:
            # Nothing reached the client yet: it can still get a clean 502.
            date = request.responseHeaders.getRawHeaders(b"date")
            request.responseHeaders = Headers({b"date": date} if date else {})
            self._error(502)
            return
        # Never complete a truncated response: the client must see it cut,
        # after what was relayed so far (so close, not abort, which would
        # drop the buffered head and body too).
        channel = request.channel
        if channel is None:
            return
        if request.clientproto == b"HTTP/2":
            channel.abortConnection()  # resets the stream; the connection lives
        else:
            channel.loseConnection()

    def _client_gone(self, reason: Failure) -> None:
        self.gone = True
        self._stop_timer()
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.cancel()
        if isinstance(self.body, RequestBody):
            self.body.fail(reason)
        if self.relay is not None:
            self.relay.stopProducing()


class _Discard(Protocol):
    """
    Drops a body nobody wants, so its connection is closed rather than left
    busy in the pool.
    """

    def connectionMade(self) -> None:
        self.transport.stopProducing()


class _Drain(Protocol):
    """
    Reads and forgets a short body so its connection can go back to the
    pool; a long one is cut, and its connection closed, instead.
    """

    _left = 65536

    def dataReceived(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0:
            self.transport.stopProducing()

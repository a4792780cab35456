# -*- test-case-name: tests.test_proxy_wire,tests.test_resilience -*-
"""
One proxied request from start to end: the attempts at the backends (with
the retry rules of SPEC §3 "Dispatch"), and relaying the response, or the
error page that replaces it.

An L{Exchange} is made per request by the proxy resource and lives until
the response is finished or the client is gone; everything it needs flows
in at construction, and nothing flows back but the response.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
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

from ._backend import Backend
from ._headers import Peer
from ._internal import KEPT_HEADERS, BadRedirect, TooManyRedirects, dispatch, redirect_value, validate_target
from ._interpreter import SpawnFailed
from ._response import BackendResponse, response_pairs
from ._streams import RequestBody, ResponseRelay
from ._watchdog import Watchdog

if TYPE_CHECKING:
    from ._proxy import ReverseProxyResource

__all__ = ["Exchange", "IDEMPOTENT"]

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class Exchange:
    """
    One proxied request: its attempts at the backends and its response.

    @ivar backend: The backend of the current (or last) attempt.
    """

    _log = Logger()
    backend: Backend

    def __init__(self, proxy: ReverseProxyResource, request: Any, peer: Peer, target: bytes) -> None:
        """
        @param proxy: The resource whose settings, backends and balancer
            this exchange uses.
        @param peer: Who sent the request.
        @param target: The request target to send (already rewritten).
        """
        self.proxy = proxy
        self.request = request
        self.peer = peer
        self.target = target
        self.tried: list[tuple[str, str]] = []
        self.pending: Optional[Deferred[Any]] = None
        self.relay: Optional[ResponseRelay] = None
        self.gone = False
        self.timed_out = False
        self.watchdog = Watchdog(proxy.reactor, proxy.settings.read_timeout)
        self.send_timer: Optional[IDelayedCall] = None
        self.current: Optional[Deferred[Any]] = None
        self.in_flight: Optional[str] = None
        self.renewed: set[tuple[str, str]] = set()
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
        if content.tell() == 0:
            return None  # (Agent still sends Content-Length: 0 for a POST or PUT.)
        content.seek(0)
        return FileBodyProducer(content, cooperator=self.proxy.cooperator)

    def start(self) -> None:
        """
        Send the request to the first backend the balancer picks.
        """
        request = self.request
        when_gone = getattr(request, "when_gone", None)
        if when_gone is not None:
            when_gone(self._client_gone)
        else:
            request.notifyFinish().addErrback(self._client_gone)
        self.client_host = request.getHeader(b"host") or b""
        self.raw_headers = list(request.requestHeaders.getAllRawHeaders())
        self._attempt()

    # Dispatch.

    def _untried(self) -> list[str]:
        """
        The sources not tried yet for this request, in configuration order.
        """
        tried = {name for name, _ in self.tried}
        return [backend.name for backend in self.proxy.backends if backend.name not in tried]

    def _choose(self) -> Optional[Backend]:
        proxy = self.proxy
        untried = self._untried()
        if not untried:
            return None
        candidates = proxy.health.candidates(untried)
        if not proxy.health.in_rotation(candidates[0]):
            # (candidates() gives every source left when none is in
            # rotation.)  One is tried anyway, once per request, rather
            # than failing without trying.
            if self.fell_back:
                return None
            self.fell_back = True
        client = "" if self.peer.client is None else self.peer.client_text
        return proxy.by_name[proxy.balancer.choose(client, candidates)]

    def _attempt(self, again: Optional[Backend] = None) -> None:
        self.timed_out = False
        backend = again or self._choose()
        if backend is None:
            self._fail()
            return
        self.backend = backend
        if backend.waiter is None or backend.ready():
            d = self._send(backend)
        else:
            # An interpreter source still starting: wait for it (up to
            # spawn_timeout) rather than fail.
            d = backend.when_ready().addCallback(lambda _: self._send(backend))
        d.addCallbacks(self._got_response, self._attempt_failed)
        self.pending = d

    def _send(self, backend: Backend) -> Deferred[IResponse]:
        proxy, request = self.proxy, self.request
        host = self.client_host if proxy.settings.preserve_host and self.client_host else backend.host
        headers = proxy.policy.request_headers(self.raw_headers, host, self.client_host, self.peer)
        proxy.balancer.started(backend.name)
        self.in_flight = backend.name
        d = backend.send(request.method, backend.uri_prefix + self.target, headers, self.body)
        self.current = d
        self._start_timer(d)
        if isinstance(self.body, RequestBody):
            self.body.stalled = lambda stalled: self._send_stalled(d, stalled)
        return d

    def _send_stalled(self, d: Deferred[Any], stalled: bool) -> None:
        """
        The backend stopped (or resumed) taking the request body: a backend
        that stays stalled for C{read_timeout} is as silent as one that
        does not answer, and the attempt times out.
        """
        self._stop_send_timer()
        if stalled and self._waiting(d):
            self.send_timer = self.proxy.reactor.callLater(self.proxy.settings.read_timeout, self._expire, d)

    def _waiting(self, d: Deferred[Any]) -> bool:
        """
        Whether the attempt that sent C{d} is still waiting for its
        response head (C{d.called} does not tell: a Deferred chained to
        another counts as called while it waits).
        """
        return self.current is d and not self.gone

    def _expire(self, d: Deferred[Any]) -> None:
        self._stop_timer()
        if self._waiting(d):
            self.timed_out = True
            d.cancel()

    def _start_timer(self, d: Deferred[Any]) -> None:
        def arm() -> None:
            if self._waiting(d):
                self.watchdog.watch(lambda: self._expire(d))

        stream = self.body if isinstance(self.body, RequestBody) else None
        if stream is None:
            arm()
        else:
            stream.when_complete(arm)

    def _stop_timer(self) -> None:
        self.watchdog.stop()
        self._stop_send_timer()

    def _stop_send_timer(self) -> None:
        if self.send_timer is not None and self.send_timer.active():
            self.send_timer.cancel()
        self.send_timer = None

    def _release(self) -> None:
        """
        The attempt in flight is over for the balancer (least_conn counts a
        request until its response body is through).
        """
        if self.in_flight is not None:
            self.proxy.balancer.finished(self.in_flight)
            self.in_flight = None

    def _attempt_failed(self, reason: Failure) -> None:
        self._stop_timer()
        self.current = None
        self._release()
        if self.gone or self.request.finished:
            return  # (Answered already: say, 413 while the body streamed.)
        backend = self.backend
        name = backend.name
        stale = not self.timed_out and getattr(reason.value, "reused_connection", False)
        # An interpreter source that went down under us is being restarted
        # by its supervisor: the next try waits for it, up to spawn_timeout.
        if backend.waiter is not None and reason.check(
            ConnectError, ResponseNeverReceived, RequestTransmissionFailed
        ):
            backend.recheck()
        restarting = backend.waiter is not None and not backend.ready()
        why = self._describe(reason) + (" (on a reused connection)" if stale else "")
        self.tried.append((name, why))
        if not (stale or restarting) and (
            self.timed_out or reason.check(ConnectError, ConnectTimeout, DNSLookupError)
        ):
            # The source's own fault, on a new connection; a pooled
            # connection the backend let go, or an HTTP error answer, is not.
            self.proxy.health.failed(name, why)
        if not self._retryable(reason):
            self._fail(reason)
        elif (stale or restarting) and not self._untried() and self._renew(name, restarting):
            # nginx's rule: a try lost to a stale pooled connection (or to a
            # program being restarted) is given back, once for each cause,
            # when no other source is left.
            self._attempt(again=backend)
        else:
            self._attempt()

    def _renew(self, name: str, restarting: bool) -> bool:
        cause = (name, "restart" if restarting else "stale")
        if cause in self.renewed:
            return False
        self.renewed.add(cause)
        return True


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
            return self.request.method in IDEMPOTENT and not started
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
        request.responseHeaders.setRawHeaders(b"server", [self.proxy.server_tokens])
        body = self.proxy.pages.render(request, status)
        request.write(body)
        request.finish()

    # Response.

    def _got_response(self, response: IResponse) -> None:
        # (A relay, if one is needed, sets the watchdog again for the body.)
        self._stop_timer()
        self.current = None
        self.pending = None
        self.proxy.health.succeeded(self.backend.name)
        if self.gone:
            self._release()
            response.deliverBody(_Discard())
            return
        request = self.request
        proxy = self.proxy
        pairs = response_pairs(response)
        if proxy.settings.x_sendfile:
            value = redirect_value(pairs)
            if value is not None:
                self._internal_redirect(response, value)
                return
        if proxy.settings.vserver_errors and response.code >= 400:
            # The vserver's page replaces the backend's answer; the status
            # stays.  1xx-3xx answers (a redirect's Location) never do.
            self._release()
            response.deliverBody(_Drain())
            self._error(response.code)
            return
        request.setResponseCode(response.code, response.phrase)
        headers = proxy.policy.reply_headers(pairs, proxy.server_tokens)
        if request.method == b"HEAD":
            # (The client, like Agent, leaves a HEAD answer's Content-Length
            # among its fields.)
            lengths = [v for n, v in pairs if n.lower() == b"content-length"]
            if lengths:
                headers.append((b"Content-Length", lengths[-1]))
        elif isinstance(response.length, int) and response.code not in (204, 304):
            # (A 304's length would be that of the 200 it stands for, which
            # Agent does not keep: it is left out, as RFC 9110 §8.6 allows.)
            headers.append((b"Content-Length", b"%d" % response.length))
        # The backend's fields join what the site set (its Date); Server is
        # the policy's, and a default Content-Type (Twisted's own Request
        # sets one) is not the backend's.
        out = request.responseHeaders
        out.removeHeader(b"server")
        out.removeHeader(b"content-type")
        for name, value in headers:
            out.addRawHeader(name, value)
        body = response.take_body() if isinstance(response, BackendResponse) else None
        if body is not None:
            # All of it came with the head: no relay, no producer, no timer.
            self._release()
            if body:
                request.write(body)
            request.finish()
            return
        self.relay = ResponseRelay(request, self.watchdog, self._relayed)
        response.deliverBody(self.relay)

    def _internal_redirect(self, response: IResponse, value: bytes) -> None:
        self._release()
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
                "502 for {target} (rule {rule}): backend {source} asked for an internal "
                "redirect to {value!r}: {why}",
                target=self.target.decode("latin-1"),
                rule=self.proxy.name,
                source=self.backend.name,
                value=value,
                why=str(e),
            )
            self._error(502)
        except TooManyRedirects as e:
            self._log.warn(
                "500 for {target} (rule {rule}): backend {source} redirected it again: {why}",
                target=self.target.decode("latin-1"),
                rule=self.proxy.name,
                source=self.backend.name,
                why=str(e),
            )
            self._error(500)

    def _relayed(self, reason: Optional[Failure]) -> None:
        self.relay = None
        self._release()
        if self.gone:
            return
        if reason is None:
            self.request.finish()
            return
        self._log.warn(
            "Backend {source} failed during the response body of {target} (rule {rule}): {why}",
            source=self.backend.name,
            target=self.target.decode("latin-1"),
            rule=self.proxy.name,
            why=self._describe(reason),
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
        self._release()
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

    transport: Any  # the body's TransportProxyProducer

    def connectionMade(self) -> None:
        self.transport.stopProducing()


class _Drain(Protocol):
    """
    Reads and forgets a short body so its connection can go back to the
    pool; a long one is cut, and its connection closed, instead.
    """

    transport: Any  # the body's TransportProxyProducer
    _left = 65536

    def dataReceived(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0:
            self.transport.stopProducing()

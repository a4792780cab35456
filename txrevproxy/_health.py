# -*- test-case-name: tests.test_health -*-
"""
Source health: which sources of a proxy rule are in rotation.

The dispatcher asks L{SourceHealth} which untried sources it may hand the
balancer and tells it how each attempt went (passive checks); when a rule
sets C{health_check}, a L{HealthChecker} probes every source on a schedule
and reports to the same L{SourceHealth} (active checks).  Balancers thus see
one answer whatever found a source dead.  Unlike Cherokee, a source is out
for C{fail_timeout} seconds rather than a fixed five minutes, comes back on
trial, and comes back at once when a health check passes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

__all__ = ["HealthChecker", "SourceHealth", "http_probe"]

Probe = Callable[[], Deferred[int]]


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _timed_out(result: object, timeout: float) -> object:
    """
    For L{Deferred.addTimeout}: whatever failure a cancelled request ends in
    (L{CancelledError}, or the agent's C{ResponseNeverReceived} wrapping it),
    it timed out.
    """
    if isinstance(result, Failure):
        raise TimeoutError(timeout, "health check")
    return result


@attrs.define
class _State:
    """
    What is known of one source.

    @ivar failures: When its recent passive failures happened.
    @ivar out_until: While passively out of rotation, when it gets its trial.
    @ivar trial: Back after being out, and not yet proven: one failure takes
        it out again.
    @ivar down: While an active check holds it out, why; else L{None}.
    """

    failures: deque[float] = attrs.field(factory=deque)
    out_until: Optional[float] = None
    trial: bool = False
    down: Optional[str] = None


class SourceHealth:
    """
    Passive health of the sources of one proxy rule, plus the verdicts of its
    active checks (L{SourceHealth.mark}).

    A source whose time out of rotation is over is put back lazily, the next
    time anyone asks about it, so no timer is ever pending.
    """

    _log = Logger()

    def __init__(
        self,
        names: Sequence[str],
        max_fails: int,
        fail_timeout: float,
        clock: IReactorTime,
        rule: str = "",
    ) -> None:
        """
        @param names: The rule's source names, unique.
        @param max_fails: Failures within C{fail_timeout} that take a source
            out of rotation; 0 turns passive accounting off.
        @param fail_timeout: The counting window and the time out, seconds.
        @param clock: Tells the time.
        @param rule: The rule's name, for log messages.
        @raise ValueError: On duplicate names or negative limits.
        """
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate source names in {list(names)!r}")
        if isinstance(max_fails, bool) or not isinstance(max_fails, int) or max_fails < 0:
            raise ValueError(f"max_fails must be an integer >= 0, not {max_fails!r}")
        if not fail_timeout >= 0:
            raise ValueError(f"fail_timeout must be >= 0, not {fail_timeout!r}")
        self._states = {name: _State() for name in names}
        self._max_fails = max_fails
        self._fail_timeout = float(fail_timeout)
        self._clock = clock
        self._rule = rule

    def _about(self, name: str) -> dict[str, str]:
        """
        The log event fields naming source C{name}.
        """
        where = f"rule {self._rule}: " if self._rule else ""
        return {"where": where, "rule": self._rule, "source": name}

    def _state(self, name: str) -> _State:
        """
        The state of C{name}, with an expired time out turned into a trial.
        """
        state = self._states[name]
        if state.out_until is not None and self._clock.seconds() >= state.out_until:
            state.out_until = None
            state.trial = True
            if state.down is None:
                self._log.info(
                    "{where}source {source} back in rotation (trial)", **self._about(name)
                )
        return state

    def in_rotation(self, name: str) -> bool:
        """
        Whether the balancer may pick C{name}.

        @raise KeyError: If C{name} is not a source of this rule.
        """
        state = self._state(name)
        return state.out_until is None and state.down is None

    def candidates(self, untried: Sequence[str]) -> list[str]:
        """
        The names of C{untried} (configuration order) currently in rotation;
        if none of them is, C{untried} unchanged: when every source is out of
        rotation one is tried anyway, since an answer beats a certain 503.
        """
        live = [name for name in untried if self.in_rotation(name)]
        return live if live else list(untried)

    def failed(self, name: str, why: str) -> None:
        """
        Count a connect failure, connect timeout, or reset before any response
        byte on a new connection.  C{max_fails} of them within
        C{fail_timeout} seconds take the source out of rotation for
        C{fail_timeout} seconds; one failure during its trial takes it out
        again at once.  A failure while it is out (tried because everything
        was) restarts its time out, silently.

        @param why: What went wrong, for the log.
        """
        if self._max_fails == 0:
            return
        state = self._state(name)
        now = self._clock.seconds()
        if state.down is not None:
            return
        if state.out_until is not None:
            state.out_until = now + self._fail_timeout
            return
        if state.trial:
            detail = "failed its trial"
        else:
            state.failures.append(now)
            while state.failures and state.failures[0] < now - self._fail_timeout:
                state.failures.popleft()
            count = len(state.failures)
            if count < self._max_fails:
                return
            plural = "failure" if count == 1 else "failures"
            detail = f"{count} {plural} in {_seconds(self._fail_timeout)}"
        state.failures.clear()
        state.trial = False
        state.out_until = now + self._fail_timeout
        self._log.warn(
            "{where}source {source} out of rotation for {duration}: {why} ({detail})",
            duration=_seconds(self._fail_timeout),
            why=why,
            detail=detail,
            **self._about(name),
        )

    def succeeded(self, name: str) -> None:
        """
        A response head arrived from C{name}: its failure count starts over
        and a trial is passed.  It does not end a time out or an active
        check's verdict: a request sent earlier may answer late.
        """
        state = self._state(name)
        state.failures.clear()
        state.trial = False

    def mark(self, name: str, up: bool, why: str) -> None:
        """
        Record an active check's verdict.

        @param up: C{True} puts the source back in rotation at once (ending
            any time out); C{False} takes it out until a check passes.
        @param why: The check's outcome, for the log.
        """
        state = self._state(name)
        if up:
            back = state.down is not None or state.out_until is not None
            state.failures.clear()
            state.out_until = state.down = None
            state.trial = False
            if back:
                self._log.info(
                    "{where}source {source} back in rotation: {why}", why=why, **self._about(name)
                )
        elif state.down is None:
            state.down = why
            self._log.warn(
                "{where}source {source} out of rotation until a health check passes: {why}",
                why=why,
                **self._about(name),
            )


class HealthChecker(Service):
    """
    Active checks: each source is probed every C{interval} seconds, measured
    from the start of its previous probe (never two at once for a source),
    and the first probe goes out when the service starts.  A 2xx or 3xx
    status marks the source up, anything else, an error or no answer within
    the timeout marks it down.  Nothing is sent while the service is stopped.
    """

    _log = Logger()

    def __init__(
        self,
        health: SourceHealth,
        probes: Mapping[str, Probe],
        interval: float,
        clock: IReactorTime,
        timeout: Optional[float] = None,
    ) -> None:
        """
        @param health: Told each verdict.
        @param probes: For each source name, makes one probe, firing with the
            status code.
        @param interval: Seconds between two probes of a source, > 0.
        @param clock: Schedules the probes.
        @param timeout: How long a probe may take; C{min(interval, 5)} if
            L{None}.  A probe taking longer is cancelled.
        """
        if not interval > 0:
            raise ValueError(f"health check interval must be > 0, not {interval!r}")
        self._health = health
        self._probes = dict(probes)
        self._interval = float(interval)
        self._clock = clock
        self._timeout = min(self._interval, 5.0) if timeout is None else float(timeout)
        self._calls: dict[str, IDelayedCall] = {}
        self._inflight: dict[str, Deferred[Any]] = {}
        self._generation = 0

    def startService(self) -> None:
        super().startService()
        for name in self._probes:
            self._probe(name)

    def stopService(self) -> None:
        super().stopService()
        self._generation += 1
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call.cancel()
        inflight, self._inflight = self._inflight, {}
        for d in inflight.values():
            d.cancel()

    def _probe(self, name: str) -> None:
        self._calls.pop(name, None)
        generation, started = self._generation, self._clock.seconds()
        try:
            d = self._probes[name]()
        except Exception:
            d = fail()
        d.addTimeout(self._timeout, self._clock, _timed_out)

        def done(result: Any) -> None:
            self._inflight.pop(name, None)
            if generation != self._generation:
                return
            up, why = self._verdict(result)
            try:
                self._health.mark(name, up, why)
            finally:
                delay = max(0.0, started + self._interval - self._clock.seconds())
                self._calls[name] = self._clock.callLater(delay, self._probe, name)

        d.addBoth(done)
        d.addErrback(lambda f: self._log.failure("Health check of {source}", f, source=name))
        if not d.called:
            self._inflight[name] = d

    def _verdict(self, result: Any) -> tuple[bool, str]:
        if isinstance(result, Failure):
            if result.check(TimeoutError):
                return False, f"health check got no answer within {_seconds(self._timeout)}"
            return False, f"health check failed: {result.getErrorMessage() or result.type.__name__}"
        if 200 <= result < 400:
            return True, "health check passed"
        return False, f"health check answered {result}"


class _Discard(Protocol):
    """
    Reads a response body to its end and forgets it, so that the connection
    can go back to its pool; then C{done} fires with the status code.
    Cancelling C{done} closes the connection, which cannot be reused.
    """

    transport: Any  # the body's TransportProxyProducer

    def __init__(self, response: IResponse) -> None:
        self.code = response.code
        self.done: Deferred[int] = Deferred(lambda d: self.transport.stopProducing())
        response.deliverBody(self)

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return  # cancelled
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(self.code)
        else:
            self.done.errback(reason)


def http_probe(
    agent: IAgent, uri: bytes, host: bytes, timeout: float, clock: IReactorTime
) -> Probe:
    """
    A probe for L{HealthChecker}: a C{GET} of C{uri} with C{Host: host}
    through C{agent} (so over the source's own pool), firing with the status
    code once the body has been read and discarded, or failing with
    L{TimeoutError} if all that takes more than C{timeout} seconds.
    """

    def probe() -> Deferred[int]:
        headers = Headers({b"host": [host], b"user-agent": [b"txrevproxy-health-check"]})
        d: Deferred[Any] = agent.request(b"GET", uri, headers)
        d.addCallback(lambda response: _Discard(response).done)
        d.addTimeout(timeout, clock, _timed_out)
        return d

    return probe

# -*- test-case-name: tests.test_watchdog,tests.test_streams -*-
"""
One timeout that follows an exchange through its phases.

A proxied request waits for the backend's head, then for each piece of
its body, each wait bounded by C{read_timeout}.  Cancelling a timer and
making a new one for every phase and every piece costs more than the rest
of relaying a small response's head; a L{Watchdog} keeps one timer and
moves it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Watchdog"]


class Watchdog:
    """
    Calls an action once C{seconds} pass without being pushed back.

    @ivar seconds: The timeout.
    """

    def __init__(self, clock: IReactorTime, seconds: float) -> None:
        self._clock = clock
        self.seconds = seconds
        self._call: Optional[IDelayedCall] = None
        self._action: Optional[Callable[[], None]] = None

    def watch(self, action: Callable[[], None]) -> None:
        """
        Call C{action} after C{seconds} from now, instead of whatever was
        watched for before.
        """
        self._action = action
        call = self._call
        if call is not None and call.active():
            call.reset(self.seconds)
        else:
            self._call = self._clock.callLater(self.seconds, self._fire)

    def kick(self) -> None:
        """
        Something happened: the time starts again.
        """
        if self._action is not None and self._call is not None and self._call.active():
            self._call.reset(self.seconds)

    def disarm(self) -> None:
        """
        Nothing is watched for now; the timer is kept to be moved by the
        next L{watch}.
        """
        self._action = None

    def stop(self) -> None:
        """
        Nothing will be watched for again.
        """
        self._action = None
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fire(self) -> None:
        self._call = None
        action, self._action = self._action, None
        if action is not None:
            action()

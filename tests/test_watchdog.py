"""
L{txrevproxy._watchdog.Watchdog}: one timer, moved rather than remade.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txrevproxy._watchdog import Watchdog


class WatchdogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.watchdog = Watchdog(self.clock, 10)
        self.fired: list[str] = []

    def test_fires(self) -> None:
        self.watchdog.watch(lambda: self.fired.append("a"))
        self.clock.advance(9.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.2)
        self.assertEqual(self.fired, ["a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_kickAndRewatch(self) -> None:
        """
        A kick restarts the time; watching something else moves the same
        timer (no second one is made) and replaces the action.
        """
        self.watchdog.watch(lambda: self.fired.append("a"))
        self.clock.advance(8)
        self.watchdog.kick()
        self.clock.advance(8)
        self.watchdog.watch(lambda: self.fired.append("b"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(9)
        self.assertEqual(self.fired, [])
        self.clock.advance(1)
        self.assertEqual(self.fired, ["b"])

    def test_disarmed(self) -> None:
        """
        Disarmed, it fires harmlessly, and a kick does not revive it.
        """
        self.watchdog.watch(lambda: self.fired.append("a"))
        self.watchdog.disarm()
        self.watchdog.kick()
        self.clock.advance(11)
        self.assertEqual(self.fired, [])

    def test_stop(self) -> None:
        self.watchdog.watch(lambda: self.fired.append("a"))
        self.watchdog.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.watchdog.watch(lambda: self.fired.append("b"))
        self.clock.advance(10)
        self.assertEqual(self.fired, ["b"])

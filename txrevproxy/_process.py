# -*- test-case-name: tests.test_interpreter -*-
"""
Small pieces for running child programs: finding the program without a
shell, splitting its output into bounded log lines, and the back-off
between restarts and probes.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import attrs
from twisted.python.procutils import which

__all__ = ["Backoff", "LineSplitter", "findExecutable"]


@attrs.frozen
class Backoff:
    """
    An exponential delay schedule. It is used both for restarting a program
    that exited and for probing a program that has not yet started listening.

    @ivar initial: the first delay, in seconds.
    @ivar maximum: no delay is longer than this.
    @ivar factor: each delay is this many times the previous one.
    """

    initial: float = attrs.field(converter=float, validator=attrs.validators.gt(0))
    maximum: float = attrs.field(converter=float)
    factor: float = attrs.field(
        default=2.0, converter=float, validator=attrs.validators.ge(1)
    )

    @maximum.validator
    def _checkMaximum(self, attribute: attrs.Attribute[float], value: float) -> None:
        if value < self.initial:
            raise ValueError(f"maximum {value!r} is below initial {self.initial!r}")

    def delay(self, attempt: int) -> float:
        """
        @param attempt: how many attempts came before this one (0 for the first).
        @return: the number of seconds to wait before that attempt.
        """
        try:
            return min(self.maximum, self.initial * self.factor**attempt)
        except OverflowError:
            return self.maximum


def findExecutable(command: str) -> str | None:
    """
    Find the program that C{command} names, so that no shell is needed.

    @param command: a path (if it contains a C{/}), or a name to look up on
        C{PATH} and then beside the Python running the proxy, where a
        virtual environment keeps its scripts (C{twist}, C{gunicorn} ...)
        even when it is not activated.
    @return: the program's path, or L{None} if nothing executable is found.
    """
    if os.sep in command:
        return command if os.access(command, os.X_OK) else None
    found = which(command)
    if found:
        return found[0]
    beside = os.path.join(os.path.dirname(sys.executable), command)
    return beside if os.access(beside, os.X_OK) else None


class LineSplitter:
    """
    Split a child's output stream into lines. Lines longer than a limit are
    cut, so that one long line cannot fill the log.
    """

    def __init__(self, emit: Callable[[bytes, bool], None], maximum: int) -> None:
        self._emit = emit
        self._maximum = maximum
        self._buffer = b""
        self._discarding = False

    def feed(self, data: bytes) -> None:
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            if self._discarding:
                self._discarding = False
            else:
                self._emit(line[: self._maximum], len(line) > self._maximum)
        if len(self._buffer) > self._maximum:
            if not self._discarding:
                self._emit(self._buffer[: self._maximum], True)
            self._discarding = True
            self._buffer = b""

    def flush(self) -> None:
        if self._buffer and not self._discarding:
            self._emit(self._buffer, False)
        self._buffer = b""
        self._discarding = False

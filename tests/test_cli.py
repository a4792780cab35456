# -*- test-case-name: tests.test_cli -*-
"""
The command lines as an operator runs them: C{python -m txrevproxy check}
and the real C{twistd -n revproxy} in a child process, with the shipped
C{conf/site.ini} (its two interpreter sources included).

C{conf/site.ini} listens on fixed ports (8080-8082); to run beside anything
else on the machine, the twistd tests use a copy whose ports are replaced
by free ones, started from the repository root as the file expects.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from itertools import pairwise

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.helpers import (
    REPO,
    Twistd,
    childEnvironment,
    childPids,
    commandLine,
    exchange,
    freePort,
    killProcess,
    poll,
    portAccepts,
    processAlive,
    spawn,
    startTwistd,
    twistdCommand,
    wait,
)

SITE_INI = os.path.join(REPO, "conf", "site.ini")

_ONE_LINE = re.compile(r"^[^:\n]+:\d+: \[[^\]]+\]( [a-z_]+)?: .+$")


def temporaryDirectory(case: SynchronousTestCase) -> str:
    directory = tempfile.mkdtemp(prefix="txrevproxy-cli-")
    case.addCleanup(shutil.rmtree, directory)
    return directory


def writeFile(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def check(*args: str) -> subprocess.CompletedProcess[str]:
    """
    Run C{python -m txrevproxy ARGS} from the repository root.
    """
    return subprocess.run(
        [sys.executable, "-m", "txrevproxy", *args],
        cwd=REPO,
        env=childEnvironment(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def siteIni(case: SynchronousTestCase) -> tuple[str, int, int, int]:
    """
    A copy of C{conf/site.ini} on free ports: returns its path and the
    proxy's, backend one's and backend two's ports.
    """
    with open(SITE_INI) as f:
        text = f.read()
    ports = (freePort(), freePort(), freePort())
    for old, new in zip((8080, 8081, 8082), ports):
        text = text.replace(str(old), str(new))
    path = os.path.join(temporaryDirectory(case), "site.ini")
    writeFile(path, text)
    return (path, *ports)


BROKEN = """[server]
listen = tcp:{port}:interface=127.0.0.1

[source:a]
type = interpreter
address = 127.0.0.1:{backend}
interpreter = /bin/sh -c 'touch {marker}; sleep 30'

[rule:r]
match = default
handler = proxy
sources = a
balancer = fastest
"""


class CheckTests(SynchronousTestCase):
    """
    C{python -m txrevproxy check CONFIG}.
    """

    def test_siteIni(self) -> None:
        """
        The shipped configuration is valid; the summary names its listener,
        sources, and rule.
        """
        result = check("check", "conf/site.ini")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, "")
        out = result.stdout
        for text in (
            "tcp:8080",
            "one",
            "two",
            "127.0.0.1:8081",
            "127.0.0.1:8082",
            "everything",
            "round_robin",
        ):
            self.assertIn(text, out)

    def test_broken(self) -> None:
        """
        A broken file: exit status 1, one line on stderr naming the file,
        line, section and key.
        """
        path = os.path.join(temporaryDirectory(self), "broken.ini")
        writeFile(
            path,
            BROKEN.format(port=freePort(), backend=freePort(), marker="/nonexistent/x"),
        )
        result = check("check", path)
        self.assertEqual(result.returncode, 1)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertRegex(lines[0], _ONE_LINE)
        self.assertTrue(
            lines[0].startswith(f"{path}:13: [rule:r] balancer: "), lines[0]
        )
        self.assertEqual(result.stdout, "")


def bodyOf(response_body: bytes) -> str:
    """
    Which demo backend answered.
    """
    for name in ("one", "two"):
        if f"Hello from backend {name}".encode() in response_body:
            return name
    return "?"


class TwistdTests(TestCase):
    """
    The real C{twistd -n revproxy} with the shipped configuration.
    """

    timeout = 40

    async def fetch(self, port: int) -> tuple[int, str]:
        [response] = await exchange(
            self,
            port,
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            timeout=15,
        )
        return response.status, bodyOf(response.body)

    def interpreters(self, process: Twistd, one: int, two: int) -> dict[str, int]:
        """
        The PIDs of the running interpreter children, by source name.
        """
        found = {}
        for pid in childPids(process.pid):
            line = " ".join(commandLine(pid))
            for name, port in (("one", one), ("two", two)):
                if f"tcp:{port}:" in line:
                    found[name] = pid
        return found

    async def test_roundRobinRestartAndStop(self) -> None:
        """
        twistd starts both interpreter sources and alternates between them;
        a killed interpreter is restarted and the service recovers without
        failing requests; SIGTERM stops twistd and its children.
        """
        path, port, one, two = siteIni(self)
        process = await startTwistd(self, path, port)
        self.assertTrue(
            await poll(lambda: len(self.interpreters(process, one, two)) == 2, 10),
            f"interpreters not started: {bytes(process.out)[-2000:]!r}",
        )
        answers = [await self.fetch(port) for _ in range(4)]
        self.assertEqual([status for status, _ in answers], [200] * 4)
        names = [name for _, name in answers]
        self.assertEqual(sorted(names), ["one", "one", "two", "two"], names)
        self.assertTrue(
            all(a != b for a, b in pairwise(names)), f"not alternating: {names}"
        )

        before = self.interpreters(process, one, two)
        killProcess(before["one"])
        # Requests right after the crash still get answers (they wait for
        # the restart or go to the other source).
        after_kill = [await self.fetch(port) for _ in range(4)]
        self.assertEqual([status for status, _ in after_kill], [200] * 4, after_kill)
        restarted = await poll(
            lambda: (
                self.interpreters(process, one, two).get("one")
                not in (None, before["one"])
            ),
            10,
        )
        self.assertTrue(restarted, "interpreter one was not restarted")
        self.assertEqual(self.interpreters(process, one, two)["two"], before["two"])
        self.assertTrue(await poll(lambda: portAccepts(one), 10))
        # A request that met the crash counts as a failure (max_fails = 1),
        # which keeps the source out of rotation for fail_timeout (10 s).
        deadline = time.monotonic() + 15
        while (await self.fetch(port))[1] != "one":
            self.assertLess(time.monotonic(), deadline, "backend one never came back")
            await wait(0.2)
        recovered = [await self.fetch(port) for _ in range(4)]
        self.assertEqual(
            sorted(name for _, name in recovered),
            ["one", "one", "two", "two"],
            recovered,
        )

        children = list(self.interpreters(process, one, two).values())
        self.assertEqual(len(children), 2)
        process.signal("TERM")
        self.assertTrue(
            await poll(lambda: process.code is not None, 15),
            "twistd did not stop on TERM",
        )
        # twistd re-raises the signal that stopped it, so a clean stop on
        # TERM exits "killed by SIGTERM" (or 0 where it does not).
        self.assertIn(process.code, (0, -signal.SIGTERM), bytes(process.err))
        self.assertTrue(
            await poll(lambda: not any(processAlive(pid) for pid in children), 5),
            "interpreter children outlived twistd",
        )
        self.assertFalse(portAccepts(port))

    async def test_badConfiguration(self) -> None:
        """
        A bad configuration makes twistd exit non-zero with the one-line
        error, before it listens or starts an interpreter.
        """
        directory = temporaryDirectory(self)
        marker = os.path.join(directory, "started")
        port = freePort()
        path = os.path.join(directory, "broken.ini")
        writeFile(path, BROKEN.format(port=port, backend=freePort(), marker=marker))
        process = spawn(self, twistdCommand(path))
        listened = False

        def ended() -> bool:
            nonlocal listened
            listened = listened or portAccepts(port)
            return process.code is not None

        self.assertTrue(await poll(ended, 20, 0.02), "twistd kept running")
        self.assertNotEqual(process.code, 0)
        self.assertFalse(listened)
        self.assertFalse(os.path.exists(marker), "an interpreter was started")
        lines = [
            line for line in bytes(process.err).decode().splitlines() if line.strip()
        ]
        self.assertEqual(len(lines), 1, bytes(process.err + process.out))
        self.assertRegex(lines[0], _ONE_LINE)
        self.assertIn("[rule:r] balancer", lines[0])
        self.assertNotIn("Traceback", bytes(process.out).decode())

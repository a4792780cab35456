"""
C{[server] workers}: several processes sharing the listeners.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import childEnvironment, twistdCommand
from txrevproxy import ConfigError, parse_config
from txrevproxy._workers import SharedPort, parse_tcp

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ParseTests(SynchronousTestCase):
    def test_tcp(self) -> None:
        self.assertEqual(parse_tcp("tcp:8080"), SharedPort(8080))
        self.assertEqual(
            parse_tcp("tcp:port=8080:interface=127.0.0.1:backlog=128"),
            SharedPort(8080, "127.0.0.1", 128),
        )
        self.assertEqual(parse_tcp("tcp6:8080"), SharedPort(8080, "::"))

    def test_refused(self) -> None:
        for description in ("ssl:8443:privateKey=k:certKey=c", "unix:/tmp/s", "tcp:0", "tcp:8080:x=1"):
            self.assertRaises(ValueError, parse_tcp, description)

    def test_configError(self) -> None:
        """
        A listener that cannot be shared is a configuration error naming
        [server] workers.
        """
        with self.assertRaises(ConfigError) as caught:
            parse_config("[server]\nlisten = unix:/tmp/x.sock\nworkers = 2\n", "w.ini")
        self.assertIn("[server] workers:", str(caught.exception))


class ProcessTests(SynchronousTestCase):
    """
    A real twistd with two workers: both processes serve, and the worker
    goes when the first process goes, however it goes.
    """

    def start(self) -> tuple[subprocess.Popen[bytes], int, str, Any]:
        directory = tempfile.mkdtemp()
        port, backend = _free_port(), _free_port()
        config = os.path.join(directory, "w.ini")
        with open(config, "w") as f:
            f.write(
                f"[server]\nlisten = tcp:{port}:interface=127.0.0.1\nworkers = 2\n"
                f"[source:one]\ntype = interpreter\naddress = 127.0.0.1:{backend}\n"
                f"interpreter = twist web --listen tcp:{backend}:interface=127.0.0.1 --path {directory}\n"
                "[rule:all]\nmatch = default\nhandler = proxy\nsources = one\n"
            )
        with open(os.path.join(directory, "index.html"), "w") as f:
            f.write("hello")
        log = open(os.path.join(directory, "log"), "w+")
        self.addCleanup(log.close)
        proxy = subprocess.Popen(
            twistdCommand(config), stdout=log, stderr=subprocess.STDOUT, env=childEnvironment(), cwd=directory
        )
        self.addCleanup(lambda: proxy.poll() is None and proxy.kill())
        self.addCleanup(self.kill_leftovers, directory)
        return proxy, port, config, log

    def kill_leftovers(self, directory: str) -> None:
        """
        Kill what this test started and the proxy did not stop (after a
        SIGKILL it cannot): processes whose command line names our
        directory.
        """
        listing = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
        for line in listing.splitlines():
            if directory in line:
                try:
                    os.kill(int(line.split()[0]), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass

    def serve(self, port: int, count: int) -> None:
        """
        Get C{count} answers, each on a new connection.
        """
        deadline = time.monotonic() + 20
        served = 0
        while time.monotonic() < deadline and served < count:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.sendall(b"GET /index.html HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    if s.recv(100).startswith(b"HTTP/1.1 200"):
                        served += 1
                        continue
            except OSError:
                pass
            time.sleep(0.1)
        self.assertEqual(served, count)

    def worker_pid(self, config: str) -> int:
        workers = [
            line
            for line in subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
            if "--worker" in line and config in line
        ]
        self.assertEqual(len(workers), 1, workers)
        return int(workers[0].split()[0])

    def assertGone(self, pid: int) -> None:
        # The worker looks for its first process every second, then stops;
        # on a loaded machine that can take a few seconds more.
        for _ in range(200):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        self.fail("the worker outlived the proxy")

    def test_twoProcessesServe(self) -> None:
        proxy, port, config, log = self.start()
        self.serve(port, 40)
        time.sleep(0.5)
        log.seek(0)
        text = log.read()
        # The access log lines of each process: the first process's own,
        # and those the worker printed (relayed with its name).
        access = re.compile(r'\[twisted\.python\.log#info\] "127\.0\.0\.1" .*"GET /index\.html ')
        lines = [line for line in text.splitlines() if access.search(line) and "[one]" not in line]
        by_worker = sum(1 for line in lines if "[worker-1]" in line)
        self.assertEqual(len(lines), 40, text[-2000:])
        self.assertGreater(by_worker, 0)
        self.assertGreater(len(lines) - by_worker, 0)
        worker = self.worker_pid(config)
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(15)
        self.assertGone(worker)

    def test_orphanStops(self) -> None:
        """
        A first process killed outright (no chance to stop its workers)
        does not leave a worker serving its ports.
        """
        proxy, port, config, log = self.start()
        self.serve(port, 1)
        worker = self.worker_pid(config)
        proxy.kill()
        proxy.wait(15)
        self.assertGone(worker)

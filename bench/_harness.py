"""
The bookkeeping of the benchmarks' processes: starting them with a log,
stopping every one by PID whatever happens, waiting until they serve, and
reading their CPU time and memory from C{/proc}.

Shared by C{run.py} (throughput) and C{memory.py} (memory under a slow
client) through C{_proxies.py}. Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Mapping, Sequence

__all__ = [
    "BENCH", "REPO", "Processes", "StartError", "cpu_seconds", "descendants",
    "free_port", "http_get", "install_signal_handlers", "rss_bytes", "wait_ready",
]

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
_TICK = os.sysconf("SC_CLK_TCK")


class StartError(Exception):
    """
    A process did not start serving; the message says why, with its log.
    """


class Processes:
    """
    Every process the benchmark started, with its log file, so that all can
    be stopped by PID (with their children) on exit, error or Ctrl-C.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """
        Start C{argv} in its own session (so Ctrl-C reaches only us), output
        to C{WORKDIR/NAME.log}.
        """
        with open(self.workdir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=REPO, env=env,
                start_new_session=True,
            )
        self._started.append((name, proc))
        return proc

    def pid(self, name: str) -> int:
        """
        The PID of the process started as C{name}.
        """
        for started, proc in self._started:
            if started == name:
                return proc.pid
        raise StartError(f"{name} was not started")

    def log_tail(self, name: str) -> str:
        """
        What a process wrote, to explain why it failed: all of it when
        short, else its first 5 lines (usage errors) and last 15 (tracebacks).
        """
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        text = path.read_text(errors="replace").splitlines()
        if len(text) > 30:
            text = text[:5] + ["..."] + text[-15:]
        return "\n".join("    " + line for line in text)

    def stop_all(self) -> None:
        """
        Stop every started process, newest first: TERM, then KILL after 5 s;
        then any child (an nginx worker) still alive, by its PID.
        """
        while self._started:
            _, proc = self._started.pop()
            children = descendants(proc.pid)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for pid in children:
                _kill_if_alive(pid)


def _kill_if_alive(pid: int) -> None:
    """
    Send SIGKILL to C{pid} if that process still exists.
    """
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def descendants(pid: int) -> list[int]:
    """
    The PIDs of every process below C{pid}, from C{/proc/PID/task/*/children}.
    """
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *descendants(kid)]
    return found


def cpu_seconds(pid: int) -> float:
    """
    User plus system CPU time used so far by C{pid} and its descendants.
    """
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def rss_bytes(pid: int) -> int:
    """
    The resident set size of C{pid} (C{VmRSS} in C{/proc/PID/status}).
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise StartError(f"process {pid} has no VmRSS (exited?)")


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that is free right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """
    One GET on a fresh connection to 127.0.0.1:C{port}: status and body.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(
    procs: Processes, name: str, proc: subprocess.Popen[bytes], port: int,
    path: str, timeout: float = 20.0,
) -> None:
    """
    Wait until C{GET path} through C{port} answers 200, or raise
    L{StartError} with the process's log if it exits or takes too long.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(
                f"{name} exited with status {proc.returncode}:\n"
                + procs.log_tail(name))
        try:
            status, _ = http_get(port, path, timeout=2.0)
            if status == 200:
                return
            last = f"status {status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.2)
    raise StartError(
        f"{name} not serving {path} after {timeout:.0f} s ({last}):\n"
        + procs.log_tail(name))


def install_signal_handlers() -> None:
    """
    Turn SIGTERM and SIGHUP into L{SystemExit}, so C{finally} blocks that
    stop the processes run on them as they do on Ctrl-C; and make SIGINT
    raise L{KeyboardInterrupt} even when started in the background, where
    the shell ignores it.
    """
    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)
    signal.signal(signal.SIGINT, signal.default_int_handler)


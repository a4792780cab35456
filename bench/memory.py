#!/usr/bin/env python
"""
Does txrevproxy's memory stay flat when the client is slower than the backend?

A backend serves one large body (200 MiB by default: a sparse file under
nginx, or generated chunk by chunk by the Twisted backend, so the backend holds
none of it). txrevproxy relays it to a client that reads at a fixed rate
(2 MiB/s by default) through a socket with a small receive buffer. A proxy
that honours backpressure pauses its backend read while the client is behind;
one that does not holds the backlog in memory. The proxy's resident set
(C{VmRSS} of it and any children) is sampled every 0.5 s; the check passes
when the growth over the baseline stays under the goal (32 MiB).

Quick run during development::

    python bench/memory.py --size 20m --rate 10m
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    Processes, StartError, descendants, install_signal_handlers, rss_bytes,
)
from _proxies import PROXIES, start_backend  # noqa: E402

MIB = 1024 * 1024
_TICK = 0.05  # seconds between reads of the slow client


def parse_size(text: str) -> int:
    """
    C{"200m"} → bytes; suffixes C{k}, C{m}, C{g} (powers of 1024).
    """
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)i?b?", text.strip().lower())
    if not found:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[found.group(2)]
    return int(float(found.group(1)) * scale)


def tree_rss(pid: int) -> int:
    """
    The resident set of C{pid} and its descendants (nginx's worker), bytes.
    """
    total = rss_bytes(pid)
    for child in descendants(pid):
        try:
            total += rss_bytes(child)
        except (OSError, StartError):
            pass
    return total


@attrs.define
class SlowClient:
    """
    Fetch one URL path over a socket with a small receive buffer, reading at
    most C{rate} bytes per second: C{rate * 0.05} bytes every 50 ms.

    @ivar received: body bytes read so far.
    @ivar status: the response status, once the head is read.
    @ivar length: the C{Content-Length} of the response, if it had one.
    @ivar error: what went wrong, if anything.
    @ivar seconds: how long the whole fetch took.
    """

    port: int
    path: str
    rate: int
    rcvbuf: int = 16 * 1024
    received: int = 0
    status: int = 0
    length: int | None = None
    error: str | None = None
    seconds: float = 0.0
    done: threading.Event = attrs.Factory(threading.Event)

    def run(self) -> None:
        """
        Read the whole response (the server closes after it), then set
        C{done}; any failure is kept in C{error}.
        """
        began = time.monotonic()
        try:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
                sock.settimeout(30)
                sock.connect(("127.0.0.1", self.port))
                sock.sendall(f"GET {self.path} HTTP/1.1\r\nHost: bench\r\n"
                             "Connection: close\r\n\r\n".encode("ascii"))
                self._read(sock)
        except OSError as e:
            self.error = f"client: {e}"
        finally:
            self.seconds = time.monotonic() - began
            self.done.set()

    def _read(self, sock: socket.socket) -> None:
        """
        Read the head, then the body, C{rate * _TICK} bytes per tick.
        """
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise OSError("connection closed before the response head")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        self.length = int(length.group(1)) if length else None
        self.received = len(rest)
        budget = max(int(self.rate * _TICK), 1)
        deadline = time.monotonic()
        while True:
            deadline += _TICK
            left = budget
            while left > 0:
                chunk = sock.recv(min(left, 65536))
                if not chunk:
                    return
                self.received += len(chunk)
                left -= len(chunk)
            time.sleep(max(0.0, deadline - time.monotonic()))


def measure(pid: int, client: SlowClient, limit: float) -> tuple[int, int, list[int]]:
    """
    Sample the proxy's RSS every 0.5 s for about a second before the client
    starts (the baseline: the largest of those samples) and until the client
    is done or C{limit} seconds have passed. Returns baseline, peak, samples.
    """
    samples = []
    for _ in range(3):
        time.sleep(0.5)
        samples.append(tree_rss(pid))
    baseline = max(samples)
    thread = threading.Thread(target=client.run, daemon=True)
    thread.start()
    stop_at = time.monotonic() + limit
    while not client.done.wait(0.5):
        samples.append(tree_rss(pid))
        if time.monotonic() > stop_at:
            client.error = f"gave up after {limit:.0f} s"
            break
    samples.append(tree_rss(pid))
    return baseline, max(samples), samples


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """
    The command line; see C{--help}.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=200 * MIB,
                        help="response size (default 200m)")
    parser.add_argument("--rate", type=parse_size, default=2 * MIB,
                        help="client read rate per second (default 2m)")
    parser.add_argument("--goal", type=parse_size, default=32 * MIB,
                        help="largest RSS growth that passes (default 32m)")
    parser.add_argument("--proxy", default="txrevproxy",
                        choices=[p for p in PROXIES if p != "direct"],
                        help="the proxy to check (default txrevproxy)")
    parser.add_argument("--python-backend", action="store_true",
                        help="use the Twisted backend even if nginx is installed")
    parser.add_argument("--verbose", action="store_true",
                        help="print every RSS sample")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    """
    Start the backend and the proxy, run the slow client, report; exit
    status 0 on PASS, 1 on FAIL or error.
    """
    args = parse_args(argv)
    install_signal_handlers()
    workdir = Path(tempfile.mkdtemp(prefix="txrevproxy-memory-"))
    procs = Processes(workdir)
    label, start = PROXIES[args.proxy]
    try:
        backend = start_backend(procs, {"100b": 100, "big": args.size},
                                use_nginx=not args.python_backend)
        port, pid = start(procs, backend)
        print(f"backend: {backend.kind}; {label} pid {pid}; "
              f"{args.size / MIB:.0f} MiB at {args.rate / MIB:.1f} MiB/s")
        client = SlowClient(port, "/big", args.rate)
        baseline, peak, samples = measure(
            pid, client, limit=2 * args.size / args.rate + 30)
        if args.verbose:
            print("RSS samples (MiB): " + " ".join(f"{s / MIB:.1f}" for s in samples))
        growth = peak - baseline
        print(f"client read {client.received / MIB:.1f} MiB (status {client.status}) "
              f"in {client.seconds:.1f} s")
        print(f"{label} RSS: baseline {baseline / MIB:.1f} MiB, "
              f"peak {peak / MIB:.1f} MiB, growth {growth / MIB:.1f} MiB")
        complete = client.status == 200 and client.received == args.size
        if client.error or not complete:
            print(f"FAIL: response incomplete ({client.error or 'short body'})")
            return 1
        verdict = "PASS" if growth < args.goal else "FAIL"
        print(f"{verdict}: goal is growth < {args.goal / MIB:.0f} MiB")
        return 0 if verdict == "PASS" else 1
    except StartError as e:
        print(f"!! {label} could not start: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping every process started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

#!/usr/bin/env python
"""
Throughput and latency of txrevproxy against its peers, in one run.

One backend (nginx with static files, else a Twisted server) serves 100 B,
64 KiB and 1 MiB bodies and counts the TCP connections it accepts. Each proxy
(txrevproxy, Twisted's C{ReverseProxyResource}, nginx, HAProxy) runs as its
own process in front of it. C{wrk} then drives each proxy in turn, one at a
time, for every (size, client connections) cell, the order rotating from cell
to cell so that drift of the machine hits all proxies alike. The figures that
matter are the ratios within the run; absolute req/s move between runs.

See C{bench/README.rst} for how to install the tools and read the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import attrs
import twisted

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    Processes, StartError, cpu_seconds, http_get, install_signal_handlers,
)
from _proxies import PROXIES, Backend, start_backend  # noqa: E402

SIZES = {"100b": 100, "64k": 64 * 1024, "1m": 1024 * 1024}
DEFAULT_PROXIES = "txrevproxy,stock,nginx,haproxy"
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


@attrs.frozen
class Result:
    """
    One proxy's figures for one (size, client connections) cell.
    """

    proxy: str
    size: str
    connections: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    non_2xx: int
    cpu_us_per_request: float
    backend_connections: int

    @property
    def backend_connections_per_1000(self) -> float:
        """
        Backend connections the proxy opened per 1000 requests it relayed.
        """
        return 1000.0 * self.backend_connections / max(self.requests, 1)


def _ms(text: str, label: str) -> float:
    """
    A latency from wrk's output (C{"  99%   3.21ms"}) in milliseconds.
    """
    found = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    if not found:
        raise ValueError(f"no {label} latency in wrk output:\n{text}")
    return float(found.group(1)) * _UNITS_MS[found.group(2)]


def parse_wrk(text: str) -> dict[str, float]:
    """
    The figures of a C{wrk --latency} report: req/s, p50, p99, requests,
    socket errors and non-2xx/3xx answers.
    """
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    count = re.search(r"(\d+) requests in", text)
    if not rps or not count:
        raise ValueError(f"cannot read wrk output:\n{text}")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "rps": float(rps.group(1)), "p50": _ms(text, "50%"), "p99": _ms(text, "99%"),
        "requests": int(count.group(1)),
        "errors": sum(map(int, errors.groups())) if errors else 0,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def run_wrk(port: int, size: str, connections: int, seconds: int) -> str:
    """
    Run C{wrk -t1 -cN -dD --latency} against C{/SIZE} and return its report.
    """
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
            "--timeout", "10s", f"http://127.0.0.1:{port}/{size}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def measure(
    name: str, port: int, pid: int, backend: Backend, size: str,
    connections: int, duration: int, warmup: int,
) -> Result:
    """
    Warm up, then measure one proxy in one cell, reading the backend's
    connection counter and the proxy's CPU time around the measured run.
    """
    if warmup:
        run_wrk(port, size, connections, warmup)
    before, cpu_before = backend.accepted(), cpu_seconds(pid)
    figures = parse_wrk(run_wrk(port, size, connections, duration))
    cpu_after, after = cpu_seconds(pid), backend.accepted()
    requests = int(figures["requests"])
    return Result(
        proxy=name, size=size, connections=connections,
        requests_per_s=figures["rps"], p50_ms=figures["p50"], p99_ms=figures["p99"],
        requests=requests, errors=int(figures["errors"]),
        non_2xx=int(figures["non2xx"]),
        cpu_us_per_request=1e6 * (cpu_after - cpu_before) / max(requests, 1),
        backend_connections=after - before - 1,  # the "after" reading's own
    )


def check_bodies(port: int, sizes: Sequence[str]) -> str | None:
    """
    Fetch every size once through a proxy; say what is wrong, if anything,
    so that a proxy answering fast with errors or short bodies is caught.
    """
    for size in sizes:
        status, body = http_get(port, f"/{size}")
        if status != 200 or len(body) != SIZES[size]:
            return f"/{size} gave status {status} and {len(body)} bytes"
    return None


def start_proxies(
    procs: Processes, backend: Backend, names: Sequence[str], sizes: Sequence[str]
) -> dict[str, tuple[int, int]]:
    """
    Start each proxy asked for; those that cannot start are reported and
    left out. Returns C{{name: (port, pid)}}.
    """
    running: dict[str, tuple[int, int]] = {}
    for name in names:
        label, start = PROXIES[name]
        try:
            port, pid = start(procs, backend)
            problem = check_bodies(port, sizes)
        except (StartError, OSError) as e:
            print(f"!! {label} left out: {e}", file=sys.stderr)
            continue
        if problem:
            print(f"!! {label} left out: {problem}", file=sys.stderr)
            continue
        print(f"   {label} on 127.0.0.1:{port} (pid {pid})")
        running[name] = (port, pid)
    return running


def _ratio(results: dict[str, Result], a: str, b: str) -> float | None:
    """
    req/s of proxy C{a} over proxy C{b} in one cell, if both were measured.
    """
    if a in results and b in results and results[b].requests_per_s:
        return results[a].requests_per_s / results[b].requests_per_s
    return None


def print_cell(size: str, connections: int, results: dict[str, Result]) -> None:
    """
    Print one cell's table and txrevproxy's ratios to each peer.
    """
    print(f"\n== /{size}, {connections} connection(s) ==")
    print(f"{'proxy':<22}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'errors':>8}{'CPU us/req':>12}{'backend conns/1000 req':>24}")
    for name, r in results.items():
        errors = r.errors + r.non_2xx
        print(f"{PROXIES[name][0]:<22}{r.requests_per_s:>10.0f}{r.p50_ms:>9.2f}"
              f"{r.p99_ms:>9.2f}{errors:>8}{r.cpu_us_per_request:>12.0f}"
              f"{r.backend_connections_per_1000:>24.1f}")
    for peer in ("stock", "nginx", "haproxy", "direct"):
        ratio = _ratio(results, "txrevproxy", peer)
        if ratio is not None:
            print(f"   txrevproxy / {PROXIES[peer][0]}: {ratio:.2f}x req/s")


def goals(table: dict[tuple[str, int], dict[str, Result]]) -> list[dict[str, object]]:
    """
    txrevproxy's standing against the project's goals, one entry per check:
    ≥ 2x ReverseProxyResource at 100 B / 32, ≥ 1x nginx at 1 MiB, and at
    most 20 backend connections per 1000 requests at 32 connections.
    """
    checks: list[dict[str, object]] = []

    def add(goal: str, value: float | None, ok: bool) -> None:
        shown = "n/a" if value is None else f"{value:.2f}"
        verdict = "n/a" if value is None else ("PASS" if ok else "FAIL")
        checks.append({"goal": goal, "measured": value, "verdict": verdict,
                       "text": f"{goal:<58} measured {shown:>7}  {verdict}"})

    cell = table.get(("100b", 32), {})
    ratio = _ratio(cell, "txrevproxy", "stock")
    add("100b, 32 conns: req/s >= 2x ReverseProxyResource", ratio,
        ratio is not None and ratio >= 2)
    for conns in (1, 32):
        ratio = _ratio(table.get(("1m", conns), {}), "txrevproxy", "nginx")
        add(f"1m, {conns} conn(s): req/s >= 1x nginx", ratio,
            ratio is not None and ratio >= 1)
    for size in SIZES:
        r = table.get((size, 32), {}).get("txrevproxy")
        value = None if r is None else r.backend_connections_per_1000
        add(f"{size}, 32 conns: backend conns per 1000 requests <= 20", value,
            value is not None and value <= 20)
    return checks


def versions(backend: Backend) -> dict[str, str]:
    """
    The versions of what was measured, for the record.
    """
    found = {"python": platform.python_version(), "twisted": twisted.__version__,
             "backend": backend.kind, "cpus": str(len(os.sched_getaffinity(0)))}
    for tool, flag in (("wrk", "-v"), ("nginx", "-v"), ("haproxy", "-v")):
        if shutil.which(tool):
            out = subprocess.run([tool, flag], capture_output=True, text=True)
            number = re.search(r"\d+\.\d+[.\d]*", out.stdout + out.stderr)
            found[tool] = number.group(0) if number else "?"
    return found


def run_cells(
    backend: Backend, running: dict[str, tuple[int, int]], args: argparse.Namespace
) -> dict[tuple[str, int], dict[str, Result]]:
    """
    Measure every running proxy in every (size, connections) cell, one at a
    time, starting each cell with the next proxy in turn, and print each
    cell's table. A proxy that fails a measurement is reported and dropped.
    """
    table: dict[tuple[str, int], dict[str, Result]] = {}
    order = list(running)
    cells = [(size, conns) for size in args.sizes for conns in args.conns]
    for index, (size, conns) in enumerate(cells):
        shift = index % len(order)
        cell: dict[str, Result] = {}
        for name in order[shift:] + order[:shift]:
            if name not in running:
                continue
            try:
                cell[name] = measure(name, *running[name], backend, size, conns,
                                     args.duration, args.warmup)
            except (OSError, RuntimeError, ValueError,
                    subprocess.TimeoutExpired) as e:
                print(f"!! {PROXIES[name][0]} dropped at /{size}, {conns} "
                      f"connection(s): {e}", file=sys.stderr)
                del running[name]
        table[(size, conns)] = {name: cell[name] for name in order if name in cell}
        print_cell(size, conns, table[(size, conns)])
    return table


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """
    The command line; see C{--help}.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8,
                        help="seconds measured per proxy per cell (default 8)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="seconds of unmeasured load before each (default 2)")
    parser.add_argument("--only", default=",".join(SIZES),
                        help="sizes to run, comma-separated: 100b,64k,1m")
    parser.add_argument("--connections", default="1,32",
                        help="client connections per cell (default 1,32)")
    parser.add_argument("--proxies", default=DEFAULT_PROXIES,
                        help=f"comma-separated, from {','.join(PROXIES)} "
                             f"(default {DEFAULT_PROXIES})")
    parser.add_argument("--python-backend", action="store_true",
                        help="use the Twisted backend even if nginx is installed")
    parser.add_argument("--json", type=Path, help="also save the results here")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (configs and logs)")
    args = parser.parse_args(argv)
    args.sizes = [s for s in args.only.split(",") if s]
    args.names = [p for p in args.proxies.split(",") if p]
    args.conns = [int(c) for c in args.connections.split(",") if c]
    for bad in set(args.sizes) - set(SIZES):
        parser.error(f"unknown size {bad!r}; choose from {', '.join(SIZES)}")
    for bad in set(args.names) - set(PROXIES):
        parser.error(f"unknown proxy {bad!r}; choose from {', '.join(PROXIES)}")
    return args


def main(argv: Sequence[str]) -> int:
    """
    Start everything, measure every cell, print and save, stop everything.
    """
    args = parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed; nothing measured. Install it with:\n"
              "    apt-get install wrk", file=sys.stderr)
        return 2
    install_signal_handlers()
    workdir = Path(tempfile.mkdtemp(prefix="txrevproxy-bench-"))
    procs = Processes(workdir)
    try:
        backend = start_backend(procs, SIZES, use_nginx=not args.python_backend)
        print(f"backend: {backend.kind} on 127.0.0.1:{backend.port}; work dir {workdir}")
        running = start_proxies(procs, backend, args.names, args.sizes)
        if not running:
            print("no proxy could start; nothing measured", file=sys.stderr)
            return 1
        meta = versions(backend) | {"duration_s": str(args.duration)}
        print("   " + ", ".join(f"{k} {v}" for k, v in meta.items()))
        table = run_cells(backend, running, args)
        checks = goals(table)
        print("\nGoals for txrevproxy:")
        for check in checks:
            print("   " + str(check["text"]))
        if args.json:
            results = [attrs.asdict(r) | {"backend_connections_per_1000":
                                          r.backend_connections_per_1000}
                       for cell in table.values() for r in cell.values()]
            args.json.write_text(json.dumps(
                {"meta": meta, "results": results, "goals": checks}, indent=2))
            print(f"\nsaved {args.json}")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping every process started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

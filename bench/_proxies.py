"""
The backend and the proxies the benchmarks compare, each started as its own
process on 127.0.0.1 with a generated configuration.

The backend serves fixed-size bodies and counts the connections it accepts
(C{/__conns}): nginx with C{stub_status} when installed, else the Twisted
server in C{_servers.py}. Each proxy's starter returns its port and PID once it
answers C{/100b}, or raises L{StartError} saying why not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Callable, Mapping

import attrs

from _harness import BENCH, REPO, Processes, StartError, free_port, http_get, wait_ready

__all__ = ["Backend", "PROXIES", "start_backend"]


@attrs.frozen
class Backend:
    """
    The origin server every proxy forwards to.

    @ivar kind: C{"nginx"} or C{"twisted"}, printed with the results.
    @ivar port: where it listens on 127.0.0.1.
    """

    kind: str
    port: int

    def accepted(self) -> int:
        """
        How many TCP connections the backend has accepted so far, counting
        the one used to ask (so two readings differ by one more than the
        connections made in between).
        """
        status, body = http_get(self.port, "/__conns")
        if status != 200:
            raise StartError(f"backend /__conns answered {status}")
        lines = body.decode("ascii").split("\n")
        if self.kind == "nginx":  # stub_status: "accepts handled requests"
            return int(lines[2].split()[0])
        return int(lines[0])


def nginx_has_stub_status() -> bool:
    """
    Whether the installed nginx was built with C{stub_status}.
    """
    if not shutil.which("nginx"):
        return False
    built = subprocess.run(["nginx", "-V"], capture_output=True, text=True)
    return "http_stub_status_module" in built.stderr + built.stdout


_NGINX = """\
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{body}
}}
"""


def _start_nginx(procs: Processes, name: str, body: str) -> subprocess.Popen[bytes]:
    """
    Start nginx in the foreground with its own prefix C{WORKDIR/NAME}, one
    worker, no access log, and the C{http} block contents C{body}.
    """
    prefix = procs.workdir / name
    prefix.mkdir(parents=True, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(_NGINX.format(d=prefix, user=user, body=body))
    return procs.start(
        name, ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"),
               "-c", str(conf)])


def start_backend(
    procs: Processes, bodies: Mapping[str, int], use_nginx: bool = True
) -> Backend:
    """
    Start the backend serving C{/NAME} for each C{NAME: size} in C{bodies},
    plus C{/__conns}: nginx with static files (large ones sparse) when it is
    installed with C{stub_status}, else the Twisted backend in C{_servers.py}.
    """
    port = free_port()
    if use_nginx and nginx_has_stub_status():
        www = procs.workdir / "www"
        www.mkdir(parents=True, exist_ok=True)
        os.chmod(procs.workdir, 0o755)
        for file, size in bodies.items():
            with open(www / file, "wb") as f:
                f.truncate(size)  # zeros; sparse when large
        proc = _start_nginx(procs, "backend", f"""
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        root {www};
        location = /__conns {{ stub_status; }}
    }}""")
        kind = "nginx"
    else:
        specs = [f"{file}={size}" for file, size in bodies.items()]
        proc = procs.start("backend", [
            sys.executable, str(BENCH / "_servers.py"), "backend", str(port), *specs])
        kind = "twisted"
    wait_ready(procs, "backend", proc, port, "/__conns")
    return Backend(kind, port)


def start_txrevproxy(procs: Processes, backend: Backend) -> tuple[int, int]:
    """
    Start txrevproxy (C{python -m twisted revproxy}) from the repository,
    with a generated configuration. Return its port and PID.
    """
    port = free_port()
    config = procs.workdir / "txrevproxy.ini"
    config.write_text(f"""\
[server]
listen = tcp:{port}:interface=127.0.0.1
access_log = off

[vserver:default]

[source:backend]
address = 127.0.0.1:{backend.port}

[rule:all]
match = default
handler = proxy
sources = backend
reuse_connections = 32
""")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = procs.start("txrevproxy", [
        sys.executable, "-m", "twisted", "revproxy", f"--config={config}"], env)
    try:
        wait_ready(procs, "txrevproxy", proc, port, "/100b")
    except StartError as e:
        raise StartError(
            f"txrevproxy did not start; check by hand with\n"
            f"    cd {REPO} && PYTHONPATH={REPO} {sys.executable} -m twisted "
            f"revproxy --config={config}\n{e}") from None
    return port, proc.pid


def start_stock(procs: Processes, backend: Backend) -> tuple[int, int]:
    """
    Start C{twisted.web.proxy.ReverseProxyResource}. Return port and PID.
    """
    port = free_port()
    proc = procs.start("stock", [
        sys.executable, str(BENCH / "_servers.py"), "stock", str(port),
        str(backend.port)])
    wait_ready(procs, "stock", proc, port, "/100b")
    return port, proc.pid


def start_nginx_proxy(procs: Processes, backend: Backend) -> tuple[int, int]:
    """
    Start nginx as a proxy: one worker, upstream keepalive 16, HTTP/1.1 to
    the upstream, default proxy buffering. Return port and master PID.
    """
    if not shutil.which("nginx"):
        raise StartError("nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    proc = _start_nginx(procs, "nginx", f"""
    upstream backend {{
        server 127.0.0.1:{backend.port};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}""")
    wait_ready(procs, "nginx", proc, port, "/100b")
    return port, proc.pid


def start_haproxy(procs: Processes, backend: Backend) -> tuple[int, int]:
    """
    Start HAProxy: one thread, C{mode http}, C{http-reuse safe}, no logging.
    Return port and PID.
    """
    if not shutil.which("haproxy"):
        raise StartError("haproxy is not installed (apt-get install haproxy)")
    port = free_port()
    config = procs.workdir / "haproxy.cfg"
    config.write_text(f"""\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    http-reuse safe
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server s1 127.0.0.1:{backend.port}
""")
    proc = procs.start("haproxy", ["haproxy", "-db", "-f", str(config)])
    wait_ready(procs, "haproxy", proc, port, "/100b")
    return port, proc.pid


def start_direct(procs: Processes, backend: Backend) -> tuple[int, int]:
    """
    No proxy: the backend itself, as the ceiling. Returns the backend's
    port and PID (nothing new is started).
    """
    return backend.port, procs.pid("backend")


#: The proxies the benchmarks know, by the name used in C{--proxies}: the
#: label printed, and the function that starts it.
PROXIES: dict[str, tuple[str, Callable[[Processes, Backend], tuple[int, int]]]] = {
    "txrevproxy": ("txrevproxy", start_txrevproxy),
    "stock": ("ReverseProxyResource", start_stock),
    "nginx": ("nginx", start_nginx_proxy),
    "haproxy": ("haproxy", start_haproxy),
    "direct": ("backend alone", start_direct),
}

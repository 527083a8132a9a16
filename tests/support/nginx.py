"""Debian's nginx as a local upstream for benchmarks: static files (sendfile, ETag, Range/If-Range), or a
reverse proxy in front of another local server, on 127.0.0.1, with per-request latency added inside nginx.

Usage::

    with Nginx(root) as up:                      # files under root, served as nginx serves them
        up.add("/a.bin", b"...")
        up.url("/a.bin")                         # straight from nginx
        up.url("/a.bin", delay=0.02)             # the same file, each request answered 20 ms later
        up.requests_served()                     # client requests so far (stub_status)

    with Nginx(proxy_to=moto.port, delay=0.02) as proxy:   # every request to moto 20 ms later, counted
        ...

The latency comes from the echo module's `echo_sleep` (Debian's libnginx-mod-http-echo; a timer in nginx's
event loop, no process of ours in the data path), followed by an internal redirect (`echo_exec`) to the
static files or the proxied server, so Range, If-Range, HEAD and ETag are nginx's own. Its cost is what
`url(path, delay=0)` adds over `url(path)`; the benchmarks measure and report it.

nginx runs in the foreground (`daemon off`) with a generated configuration in a temporary directory:
access log off, one worker process unless told otherwise. `install()` installs the Debian packages when
they are missing (as root: apt-get; otherwise it says what to install).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Final

import requests

from .live import free_port

DEBIAN_PACKAGES: Final[tuple[str, ...]] = ("nginx", "libnginx-mod-http-echo")
ECHO_MODULE: Final = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
DELAY_PREFIX: Final = "/_delay"
_TICK: Final = os.sysconf("SC_CLK_TCK")


def binary() -> str | None:
    """The nginx executable with the echo module beside it, or None."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    return found if found and ECHO_MODULE.exists() else None


def install() -> str:
    """The nginx executable, installing nginx and its echo module with apt-get first when missing (as root).

    Raises RuntimeError when they are missing and cannot be installed (not root, or apt-get failed).
    The packages' init scripts are not needed: nginx is started by `Nginx`, never as a system service.
    """
    found = binary()
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError(f"nginx is not installed: apt-get install -y {' '.join(DEBIAN_PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-qq", *DEBIAN_PACKAGES]
    if subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=False).returncode != 0:
        # A fresh machine has no package lists yet; fetch them once and try again.
        subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL, check=True)
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)
    found = binary()
    if not found:
        raise RuntimeError(f"apt-get installed {' '.join(DEBIAN_PACKAGES)} but nginx or {ECHO_MODULE} is missing")
    return found


class Nginx:
    """One nginx master (foreground) on free 127.0.0.1 ports, started by `start()` or `with`.

    Static mode (default): files under `root` (a temporary directory unless given). Proxy mode
    (`proxy_to=port`): every request goes to 127.0.0.1:port, Host header kept (SigV4 signs it).
    `delay`: seconds added to every request of `url(path)` (static mode: when `url` is given no
    delay of its own) and to every proxied request. A separate port answers stub_status.
    """

    def __init__(self, root: Path | None = None, *, delay: float | None = None, proxy_to: int | None = None,
                 workers: int = 1) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="zipstream-nginx-"))
        self.root = root if root is not None else self._tmp / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.delay = delay
        self.proxy_to = proxy_to
        self.workers = workers
        self.port = free_port()
        self.status_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._status_queries = 0

    # -- content ------------------------------------------------------------------------------
    def add(self, path: str, data: bytes) -> None:
        """Serve `data` at `path` (a file written under root)."""
        target = self._target(path)
        target.write_bytes(data)

    def add_file(self, path: str, source: Path) -> None:
        """Serve the file `source` at `path` (a symbolic link under root: no copy)."""
        target = self._target(path)
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(source.resolve())

    def _target(self, path: str) -> Path:
        if not path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"an absolute path without '..' is needed, not {path!r}")
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def url(self, path: str, delay: float | None = None) -> str:
        """The URL of `path`; `delay` seconds (0 included) pass it through `echo_sleep`, else `self.delay`."""
        seconds = self.delay if delay is None else delay
        if seconds is None or self.proxy_to is not None:
            return self.base_url + path
        return f"{self.base_url}{DELAY_PREFIX}/{seconds:.3f}{path}"  # echo_sleep: 3 decimals at most

    def direct(self, path: str) -> str:
        """The URL of `path` straight from nginx, whatever `self.delay` is."""
        return self.base_url + path

    # -- readings -----------------------------------------------------------------------------
    def requests_served(self) -> int:
        """Client requests nginx has read since it started (stub_status), not counting these queries."""
        text = requests.get(f"http://127.0.0.1:{self.status_port}/", timeout=10).text
        self._status_queries += 1
        # "Active connections: 1 \nserver accepts handled requests\n 7 7 7 \n..."
        total = int(text.splitlines()[2].split()[2])
        return total - self._status_queries

    def worker_pids(self) -> list[int]:
        if self.process is None:
            return []
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False)
        return [int(pid) for pid in out.stdout.split()]

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the worker processes so far (from /proc)."""
        total = 0.0
        for pid in self.worker_pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += (int(fields[11]) + int(fields[12])) / _TICK
        return total

    # -- life ---------------------------------------------------------------------------------
    def config(self) -> str:
        """The generated nginx.conf."""
        tmp = self._tmp
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read a 0700 temporary root
        if self.proxy_to is None:
            root = str(self.root.resolve())
            site = f"""
        root {root};
        location ~ ^{DELAY_PREFIX}/(?<delay>[0-9.]+)(?<rest>/.*)$ {{
            echo_sleep $delay;
            echo_exec /_static$rest;
        }}
        location ^~ /_static/ {{ internal; alias {root}/; }}"""
        else:
            delay = self.delay or 0.0
            site = f"""
        location / {{
            echo_sleep {delay:.3f};
            echo_exec @upstream;
        }}
        location @upstream {{
            proxy_pass http://127.0.0.1:{self.proxy_to};
            proxy_set_header Host $http_host;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
        }}"""
        return f"""load_module {ECHO_MODULE};
{user}daemon off;
worker_processes {self.workers};
worker_rlimit_nofile {resource.getrlimit(resource.RLIMIT_NOFILE)[1]};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    # No tcp_nopush: with it, a second response on a kept-alive connection waited ~40 ms (delayed ACK)
    # about one time in four here.
    tcp_nodelay on;
    etag on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_max_body_size 0;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;{site}
    }}
    server {{
        listen 127.0.0.1:{self.status_port};
        location / {{ stub_status; }}
    }}
}}
"""

    def start(self) -> Nginx:
        executable = install()
        conf = self._tmp / "nginx.conf"
        conf.write_text(self.config())
        log = self._tmp / "error.log"
        command = [executable, "-p", str(self._tmp), "-e", str(log), "-c", str(conf)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}: {self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.status_port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {self._log_tail()}") from None
                time.sleep(0.05)
        return self

    def _log_tail(self) -> str:
        log = self._tmp / "error.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else "(no error log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

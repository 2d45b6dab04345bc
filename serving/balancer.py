"""An L7 gRPC balancer in front of server replicas: HAProxy (Debian's `haproxy`, 2.6),
configured by the toolkit.

Why HAProxy: a balancer must route by readiness, and HAProxy checks every replica's
`/v2/health/ready` itself (open-source nginx only notices failures passively; Envoy is not
packaged in Debian). gRPC runs over HTTP/2 (cleartext, prior knowledge) on both sides, and
HAProxy balances each stream (each request), not each connection, so one client's
connection spreads over every replica. `leastconn` sends a new generation to the replica
running the fewest: a generation occupies a replica for seconds to minutes.

What it does when a replica fails:
- not ready (a stage reloading, a drain, a hung or cut-off replica): the check fails
  `fall` times in a row, every `check_interval` s, and the replica gets no new requests;
  it comes back after `rise` good checks;
- a connection it cannot open (a dead replica, a link down): the request is sent to
  another replica (`retry-on conn-failure`, `option redispatch`): it never started;
- a stream cut mid-way (a replica killed while generating): the client gets the error, and
  its retry policy decides (serving/client.py). Running streams are not cut when a
  replica merely turns not ready: a draining replica finishes its generations.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cinema_trt.serving.server import free_port, stop_process

LOG = logging.getLogger(__name__)
INSTALL = "apt-get install haproxy (Debian's HAProxy 2.6 or newer)"


class BalancerError(RuntimeError):
    """HAProxy is missing, refused its configuration, or did not start."""


@dataclass(frozen=True)
class Backend:
    """One replica: its name and where its gRPC and HTTP (health) endpoints listen."""

    name: str
    address: str
    grpc_port: int = 8001
    http_port: int = 8000


@dataclass(frozen=True)
class BalancerConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    check_interval: float = 0.5  # seconds between readiness checks of each replica
    fall: int = 2  # failed checks before a replica gets no new requests
    rise: int = 2  # good checks before it gets them again
    connect_timeout: float = 2.0
    # longest silence on a stream: above the clients' no-progress bound, so a client
    # reports a stalled replica itself (naming it) before the balancer cuts the stream
    idle_timeout: float = 1200.0
    retries: int = 3  # other replicas tried for a request that could not be sent

    def __post_init__(self):
        if self.check_interval <= 0 or self.fall < 1 or self.rise < 1 or self.retries < 0:
            raise ValueError(f"{self}: need check_interval > 0, fall >= 1, rise >= 1, "
                             "retries >= 0")


def haproxy_config(backends: list[Backend], config: BalancerConfig, port: int,
                   stats_socket: Path) -> str:
    """The HAProxy configuration: one HTTP/2 frontend, one backend of every replica."""
    if not backends:
        raise ValueError("a balancer needs at least one replica")
    ms = lambda seconds: f"{round(seconds * 1000)}ms"  # noqa: E731
    servers = [f"    server {b.name} {b.address}:{b.grpc_port} proto h2 check port "
               f"{b.http_port} check-proto h1" for b in backends]
    return "\n".join([
        "global",
        f"    stats socket {stats_socket} mode 600 level admin",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode http",
        f"    timeout connect {ms(config.connect_timeout)}",
        f"    timeout client {ms(config.idle_timeout)}",
        f"    timeout server {ms(config.idle_timeout)}",
        f"    timeout check {ms(max(config.check_interval, 1.0))}",
        f"    retries {config.retries}",
        "    retry-on conn-failure empty-response",
        "    option redispatch 1",
        "",
        "frontend grpc",
        f"    bind {config.host}:{port} proto h2",
        "    default_backend replicas",
        "",
        "backend replicas",
        "    balance leastconn",
        "    option httpchk",
        "    http-check send meth GET uri /v2/health/ready",
        "    http-check expect status 200",
        f"    default-server inter {ms(config.check_interval)} fall {config.fall} "
        f"rise {config.rise}",
        *servers,
        "",
    ])


def find_haproxy() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if found is None:
        raise BalancerError(f"haproxy is not installed: {INSTALL}")
    return found


class Balancer:
    """A running HAProxy; a context manager that stops it on exit."""

    def __init__(self, backends: list[Backend], config: BalancerConfig = BalancerConfig()):
        self.backends, self.config = list(backends), config
        self.port = config.port or free_port(config.host)
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The gRPC address clients use (`CinemaClient(balancer.url)`)."""
        return f"{self.config.host}:{self.port}"

    @property
    def stats_socket(self) -> Path:
        assert self._workdir is not None, "start() first"
        return Path(self._workdir.name) / "stats.sock"

    @property
    def log(self) -> Path:
        """HAProxy's messages: replicas going DOWN and UP, with the reason."""
        assert self._workdir is not None, "start() first"
        return Path(self._workdir.name) / "haproxy.log"

    def start(self) -> Balancer:
        binary = find_haproxy()
        self._workdir = tempfile.TemporaryDirectory(prefix="cinema-haproxy-")
        path = Path(self._workdir.name) / "haproxy.cfg"
        path.write_text(haproxy_config(self.backends, self.config, self.port,
                                       self.stats_socket))
        checked = subprocess.run([binary, "-c", "-q", "-f", str(path)], capture_output=True,
                                 text=True, timeout=30)
        if checked.returncode != 0:
            raise BalancerError(f"haproxy refused {path}: {checked.stderr.strip()}")
        # -db: foreground, so the process is ours to stop. Its messages (each replica going
        # DOWN and UP) go to a file: an unread pipe would fill and block the balancer
        with open(self.log, "w") as log:
            self._process = subprocess.Popen([binary, "-db", "-f", str(path)],
                                             stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not self.stats_socket.exists() and time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BalancerError(f"haproxy exited: {self.log.read_text()}")
            time.sleep(0.05)
        LOG.info("balancer (HAProxy) on %s over %s", self.url,
                 ", ".join(f"{b.name} {b.address}" for b in self.backends))
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process, signal.SIGTERM, 10, "haproxy")
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> Balancer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _command(self, text: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(text.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """Replica name (and "BACKEND", the sum) -> HAProxy's statistics of it (`show stat`):
        status, scur (streams now), stot (streams so far), wretr (retries), wredis
        (requests redispatched to another replica), ..."""
        rows = csv.DictReader(io.StringIO(self._command("show stat").lstrip("# ")))
        return {row["svname"]: row for row in rows if row["pxname"] == "replicas"}

    def states(self) -> dict[str, str]:
        """Replica name -> HAProxy's state of it: "UP", "DOWN", "UP 1/2" (going down) ..."""
        return {name: row["status"] for name, row in self.stats().items() if name != "BACKEND"}

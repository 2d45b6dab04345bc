"""N server replicas on one machine, each a host of its own, behind the balancer: the
scale-out topology of the Kubernetes deployment (serving/kubernetes.py), runnable on one
machine as root.

    with ReplicaSet(ReplicaSetConfig(repository, replicas=3)) as replicas:
        CinemaClient(replicas.url).generate(...)

Each replica is `cinema-trt serve` (tritonserver with its stub watchdog, crash supervisor
and drain, as in a pod) inside a network namespace with its own address (serving/netns.py),
on Triton's standard ports 8000/8001/8002 there. HAProxy (serving/balancer.py) on loopback
routes each gRPC request to a ready replica. Faults: `Replica.signal` sends a signal to the
replica's tritonserver and its stubs (SIGKILL, SIGSTOP/SIGCONT), `Replica.set_link` cuts
its host off the network.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cinema_trt.serving import netns, protocol
from cinema_trt.serving.balancer import Backend, Balancer, BalancerConfig
from cinema_trt.serving.faults import wait_for
from cinema_trt.serving.server import http_ready
from cinema_trt.serving.watchdog import children

LOG = logging.getLogger(__name__)
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002  # Triton's own, as in a pod


@dataclass(frozen=True)
class ReplicaSetConfig:
    repository: Path
    replicas: int = 2
    startup_timeout: float = 300.0  # for every replica to be ready (they load at once)
    drain_timeout: float = protocol.GENERATION_TIMEOUT_S
    max_restarts: int = 5  # crashes a replica's supervisor restarts (cinema-trt serve)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    log_dir: Path | None = None  # each replica's log; None: a temporary folder

    def __post_init__(self):
        if self.replicas < 1:
            raise ValueError(f"replicas={self.replicas} must be >= 1")


@dataclass
class Replica:
    name: str
    host: netns.Host
    process: subprocess.Popen  # `cinema-trt serve` in the host's namespace
    log: Path

    @property
    def grpc(self) -> str:
        return f"{self.host.address}:{GRPC_PORT}"

    @property
    def http(self) -> str:
        return f"http://{self.host.address}:{HTTP_PORT}"

    def server_pid(self) -> int | None:
        """The replica's tritonserver (its process group holds the stubs), or None while
        its supervisor restarts it."""
        return next((pid for pid, name in children(self.process.pid)
                     if name == "tritonserver"), None)

    def signal(self, sig: int) -> int:
        """Send `sig` to the replica's tritonserver and its stubs; returns the server pid."""
        pid = self.server_pid()
        if pid is None:
            raise ProcessLookupError(f"replica {self.name} runs no tritonserver now")
        os.killpg(pid, sig)
        return pid

    def set_link(self, up: bool) -> None:
        netns.set_link(self.host, up)

    def is_ready(self, timeout: float = 2.0) -> bool:
        return http_ready(self.http, timeout)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class ReplicaSet:
    """Replicas on their own hosts behind HAProxy; a context manager that removes all."""

    def __init__(self, config: ReplicaSetConfig):
        if not Path(config.repository).is_dir():
            raise FileNotFoundError(f"model repository {config.repository} is not a folder; "
                                    "build one with `cinema-trt repo`")
        self.config = config
        self.admin_token = secrets.token_hex(16)
        self.replicas: list[Replica] = []
        self.balancer: Balancer | None = None
        self._network: netns.TestNetwork | None = None
        self._logs: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        """The balancer's gRPC address: what clients use."""
        assert self.balancer is not None, "start() first"
        return self.balancer.url

    def start(self) -> ReplicaSet:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        stale = netns.remove_stale()
        if stale:
            LOG.info("removed test hosts of runs that died: %s", ", ".join(stale))
        self._network = netns.create_network(self.config.replicas)
        log_dir = self.config.log_dir
        if log_dir is None:
            self._logs = tempfile.TemporaryDirectory(prefix="cinema-replicas-")
            log_dir = Path(self._logs.name)
        log_dir.mkdir(parents=True, exist_ok=True)
        for i, host in enumerate(self._network.hosts):
            self.replicas.append(self._launch(f"r{i}", host, log_dir / f"r{i}.log"))
        self._wait_ready()
        balancer = self.balancer = Balancer(
            [Backend(r.name, r.host.address, GRPC_PORT, HTTP_PORT) for r in self.replicas],
            self.config.balancer).start()
        # every replica must be UP in the balancer before the set counts as started
        if wait_for(lambda: set(balancer.states().values()) == {"UP"}, 30) is None:
            raise RuntimeError(f"the balancer sees {balancer.states()}")
        LOG.info("%d replicas ready behind %s", len(self.replicas), self.url)

    def _launch(self, name: str, host: netns.Host, log: Path) -> Replica:
        c = self.config
        argv = [sys.executable, "-m", "cinema_trt.cli", "serve",
                "--repository", str(Path(c.repository).resolve()), "--host", host.address,
                "--http-port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT),
                "--metrics-port", str(METRICS_PORT), "--replica", name,
                "--startup-timeout", str(c.startup_timeout),
                "--drain-timeout", str(c.drain_timeout), "--max-restarts", str(c.max_restarts)]
        env = {**os.environ, "CINEMA_ADMIN_TOKEN": self.admin_token}
        with open(log, "w") as out:  # the child keeps its own descriptor
            process = subprocess.Popen(host.command(argv), stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env,
                                       start_new_session=True)
        return Replica(name, host, process, log)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout + 30
        waiting = list(self.replicas)
        while waiting:
            for replica in list(waiting):
                if replica.process.poll() is not None:
                    raise RuntimeError(f"replica {replica.name} exited with code "
                                       f"{replica.process.returncode}:\n{replica.log_tail()}")
                if replica.is_ready():
                    waiting.remove(replica)
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"replicas {[r.name for r in waiting]} not ready after "
                                   f"{self.config.startup_timeout:.0f} s:\n"
                                   f"{waiting[0].log_tail()}")
            time.sleep(0.25)

    def stop(self) -> None:
        """Drain and stop every replica, then the balancer, then remove the hosts."""
        for replica in self.replicas:  # SIGTERM: each drains (quick when idle), then stops
            if replica.process.poll() is None:
                pid = replica.server_pid()
                if pid is not None:  # a stopped replica cannot drain
                    os.killpg(pid, signal.SIGCONT)
                replica.process.send_signal(signal.SIGTERM)
        for replica in self.replicas:
            try:
                replica.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                LOG.warning("replica %s did not stop in 60 s; killing it", replica.name)
                os.killpg(replica.process.pid, signal.SIGKILL)
                pid = replica.server_pid()
                if pid is not None:
                    os.killpg(pid, signal.SIGKILL)
                replica.process.wait()
        if self.balancer is not None:
            self.balancer.stop()
            self.balancer = None
        if self._network is not None:
            self._network.delete()
            self._network = None
        self.replicas = []
        if self._logs is not None:
            self._logs.cleanup()
            self._logs = None

    def __enter__(self) -> ReplicaSet:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

"""Launch Triton Inference Server on a model repository: `with TritonServer(cfg) as server:`.

The binary, its backend directory and its environment come from tritonserver_install.py.
Over 300 lines on purpose: one server process's whole life (ports, command line, start,
readiness with the stub watchdog, drain, stop, log forwarding) reads best in one place;
each step is a short method.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import secrets
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cinema_trt.serving import protocol
from cinema_trt.serving.tritonserver_install import (
    assemble_backends,
    find_tritonserver,
    server_environment,
)
from cinema_trt.serving.watchdog import ModelControl, StubWatchdog

LOG = logging.getLogger(__name__)
SERVER_LOG = logging.getLogger("cinema_trt.serving.tritonserver")
LOOPBACK = "127.0.0.1"
# error lines every CPU-only start prints (no CUDA driver, no NVML): not worth a warning
BENIGN_ERRORS = ("CudaDriverHelper has not been initialized", "Failed to initialize NVML")
# The header that unlocks the restricted APIs (over gRPC Triton expects it with the prefix
# `triton-grpc-protocol-`). Model control, shared-memory registration, trace and logging
# settings are admin-only; so is HTTP inference: our clients speak gRPC, and Triton 2.51's
# HTTP JSON parser allocates the declared shape before checking it (a 1.3 KB request
# declaring [1, 1e8, 64] FP32 aborts the server with std::bad_alloc).
ADMIN_HEADER = "cinema-admin"
ADMIN_APIS = ("model-repository", "shared-memory", "trace", "logging")


@dataclass(frozen=True)
class ServerConfig:
    """How to start the server. Ports of 0 are replaced by free loopback ports."""

    # a folder, or an object-store URL that Triton reads itself (REMOTE_REPOSITORY_SCHEMES;
    # credentials from Triton's variables: AWS_* for s3, GOOGLE_APPLICATION_CREDENTIALS)
    repository: Path | str
    host: str = LOOPBACK
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    # seconds for every model to load; the one default of `serve`, `demo` and the library.
    # The tiny preset loads in seconds (~35 s on a busy 2-core machine, Python stubs
    # included); the paper-scale stages read tens of GB of weights or engines and warm up,
    # which takes minutes. 300 s covers that, and a start that hangs still fails in 5 min
    startup_timeout: float = 300.0
    stop_timeout: float = 20.0
    log_verbose: int = 0
    log_level: int = logging.DEBUG  # level of forwarded server lines (errors: WARNING)
    # shared memory the Python backend grows per stub, in bytes; a tiny video fits in 1 MiB,
    # a 45-frame 480x720 one needs ~47 MB, so growth is generous to avoid many resizes
    shm_default_bytes: int = 4 << 20
    shm_growth_bytes: int = 64 << 20
    executable: str | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    # the value of the admin header; None: a random token per server (TritonServer.admin)
    admin_token: str | None = None
    http_inference: bool = False  # True: anyone may infer over HTTP (JSON included)
    watchdog: bool = True  # reload models whose stub died (serving/watchdog.py)
    model_load_timeout: float = 120.0  # seconds a watchdog reload may take
    # seconds a graceful stop (`drain`, SIGTERM to `cinema-trt serve`) lets the running
    # generations finish; no client waits longer for one
    drain_timeout: float = protocol.GENERATION_TIMEOUT_S
    # the name responses carry (protocol.REPLICA_VARIABLE); None: inherited, else the host's
    replica: str | None = None


@dataclass(frozen=True)
class Endpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


class ServerError(RuntimeError):
    """The server did not start, or died."""


REMOTE_REPOSITORY_SCHEMES = ("s3://", "gs://", "as://")  # what Triton downloads itself


def repository_location(text: str | os.PathLike) -> Path | str:
    """A repository argument: object-store URLs stay text (Path would fold `s3://` to
    `s3:/`), anything else is a folder."""
    return str(text) if str(text).startswith(REMOTE_REPOSITORY_SCHEMES) else Path(text)


def http_ready(http: str, timeout: float = 2.0) -> bool:
    """Whether the Triton server at `http` (`http://host:port`) answers ready now."""
    try:
        with urllib.request.urlopen(f"{http}/v2/health/ready", timeout=timeout) as response:
            return response.status == 200
    except OSError:  # refused, reset, timed out (urllib's URLError included)
        return False


PORT_RANGE_VARIABLE = "CINEMA_PORT_RANGE"  # "LOW-HIGH": free ports are taken from it


def _port_range() -> range | None:
    text = os.environ.get(PORT_RANGE_VARIABLE)
    if not text:
        return None
    try:
        low, high = (int(part) for part in text.split("-"))
    except ValueError:
        raise ValueError(f"${PORT_RANGE_VARIABLE}={text!r} must be LOW-HIGH, e.g. "
                         "18100-18299") from None
    if not 0 < low <= high < 65536:
        raise ValueError(f"${PORT_RANGE_VARIABLE}={text!r}: need 0 < LOW <= HIGH < 65536")
    return range(low, high + 1)


def free_port(host: str = LOOPBACK) -> int:
    """A port the OS considers free right now (another process may still take it); from
    $CINEMA_PORT_RANGE when set (machines shared by several users), else any."""
    ports = _port_range()
    if ports is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return sock.getsockname()[1]
    start = random.randrange(len(ports))  # two launchers rarely probe the same port first
    for port in (ports[(start + i) % len(ports)] for i in range(len(ports))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise ServerError(f"no free port in ${PORT_RANGE_VARIABLE}={ports.start}-{ports.stop - 1}")


def stop_process(process: subprocess.Popen | None, sig: int, timeout: float, name: str) -> None:
    """Send `sig` to a running `process` and wait `timeout` s for it to exit, then kill it."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        LOG.warning("%s did not stop in %.0f s; killing it", name, timeout)
        process.kill()
        process.wait()


def restriction_args(token: str, http_inference: bool) -> list[str]:
    """Admin-only APIs behind the `cinema-admin` header (ADMIN_APIS; see ADMIN_HEADER)."""
    http = ",".join((*ADMIN_APIS, *(() if http_inference else ("inference",))))
    return [f"--http-restricted-api={http}:{ADMIN_HEADER}={token}",
            f"--grpc-restricted-protocol={','.join(ADMIN_APIS)}:{ADMIN_HEADER}={token}"]


def server_command(config: ServerConfig, binary: Path, backends: Path,
                   ports: Endpoints, admin_token: str) -> list[str]:
    shm_prefix = f"cinema_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
    remote = str(config.repository).startswith(REMOTE_REPOSITORY_SCHEMES)
    return [
        str(binary),
        f"--model-repository={config.repository if remote else Path(config.repository).resolve()}",
        f"--backend-directory={backends}",
        f"--http-address={ports.host}", f"--http-port={ports.http_port}",
        f"--grpc-address={ports.host}", f"--grpc-port={ports.grpc_port}",
        f"--metrics-address={ports.host}", f"--metrics-port={ports.metrics_port}",
        # our configs are complete: skip the extra stub launch per model that auto-complete costs
        "--disable-auto-complete-config",
        "--exit-on-error=true",
        # explicit control (every model loaded at start) lets the watchdog reload one model
        "--model-control-mode=explicit", "--load-model=*",
        *restriction_args(admin_token, config.http_inference),
        f"--exit-timeout-secs={max(1, int(config.stop_timeout) - 2)}",
        f"--log-verbose={config.log_verbose}",
        # unique shared-memory names: other servers may run on the same machine
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        f"--backend-config=python,shm-default-byte-size={config.shm_default_bytes}",
        f"--backend-config=python,shm-growth-byte-size={config.shm_growth_bytes}",
        *config.extra_args,
    ]


class TritonServer:
    """A running tritonserver process; a context manager that stops it on exit."""

    def __init__(self, config: ServerConfig):
        remote = str(config.repository).startswith(REMOTE_REPOSITORY_SCHEMES)
        if not remote and not Path(config.repository).is_dir():
            raise FileNotFoundError(f"model repository {config.repository} is not a folder; "
                                    "build one with `cinema-trt repo`")
        self.config = config
        self._auto_ports = not (config.http_port or config.grpc_port or config.metrics_port)
        self.endpoints = self._pick_endpoints()
        self._process: subprocess.Popen | None = None
        self._log_tail: collections.deque[str] = collections.deque(maxlen=60)
        self._log_thread: threading.Thread | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None
        self.admin_token = config.admin_token or secrets.token_hex(16)
        self.watchdog: StubWatchdog | None = None

    def _pick_endpoints(self) -> Endpoints:
        c = self.config
        return Endpoints(c.host, c.http_port or free_port(c.host),
                         c.grpc_port or free_port(c.host), c.metrics_port or free_port(c.host))

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> TritonServer:
        binary = find_tritonserver(self.config.executable)
        self._workdir = tempfile.TemporaryDirectory(prefix="cinema-triton-")
        backends = assemble_backends(binary, Path(self._workdir.name) / "backends")
        # free ports can be taken by another process between our probe and the server's bind
        attempts = 3 if self._auto_ports else 1
        for attempt in range(1, attempts + 1):
            try:
                self._launch(binary, backends)
                break
            except ServerError:
                retry = attempt < attempts and "already in use" in self.log_tail
                self.stop(keep_workdir=retry)
                if not retry:
                    raise
                LOG.info("a port was taken meanwhile; retrying with new free ports")
                self.endpoints = self._pick_endpoints()
            except BaseException:  # Ctrl-C while waiting: never leave a server behind
                self.stop()
                raise
        LOG.info("Triton ready: grpc %s  http %s  metrics %s", self.endpoints.grpc,
                 self.endpoints.http, self.endpoints.metrics)
        return self

    def _launch(self, binary: Path, backends: Path) -> None:
        command = server_command(self.config, binary, backends, self.endpoints,
                                 self.admin_token)
        LOG.info("starting %s on %s", binary, self.config.repository)
        LOG.debug("command: %s", " ".join(command))
        self._log_tail.clear()
        # the server and its Python stubs run in the server's own folder (the one holding its
        # backends), never the caller's: a caller's folder may hold folders named like
        # packages (this repository's root has `kernels/`, Hugging Face's package name)
        env = server_environment(binary)
        if self.config.replica:
            env[protocol.REPLICA_VARIABLE] = self.config.replica
        self._process = subprocess.Popen(
            command, env=env, cwd=backends.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace",
            start_new_session=True)  # Ctrl-C in our terminal reaches us, we stop the server
        self._log_thread = threading.Thread(target=self._forward_logs, daemon=True,
                                            name="tritonserver-log")
        self._log_thread.start()
        if self.config.watchdog:
            # watching from the start: a stub that dies while the server loads, or in the
            # first second after it answers, is caught by the first check (watchdog.py)
            control = ModelControl(self.endpoints.grpc, self.admin_headers,
                                   self.config.model_load_timeout)
            self.watchdog = StubWatchdog(self._process.pid, control,
                                         on_unrecoverable=self._end_broken_server).start()
        self._wait_ready()

    def _end_broken_server(self, model: str, reason: str) -> None:
        """The watchdog cannot bring `model` back: end the server (its process group, stubs
        included) so that `serve_forever`, or a container's restart policy, starts it anew;
        a server that stays up with a stage that never returns would stay not ready forever."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        LOG.error("model %r cannot be restored (%s); ending tritonserver so that it is "
                  "restarted", model, reason)
        os.killpg(process.pid, signal.SIGKILL)

    @property
    def admin_headers(self) -> dict[str, str]:
        """gRPC headers for the admin-only protocols (model control: load_model, ...)."""
        return {f"triton-grpc-protocol-{ADMIN_HEADER}": self.admin_token}

    @property
    def admin_http_headers(self) -> dict[str, str]:
        """HTTP headers for the admin-only APIs (and HTTP inference, restricted by default)."""
        return {ADMIN_HEADER: self.admin_token}

    def models(self) -> tuple[str, ...]:
        """The models of the served repository: every stage and `cinema` (per-stage layout),
        or `cinema` alone (shared layout, serving/layouts.py)."""
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.endpoints.grpc)
        try:
            index = client.get_model_repository_index(headers=self.admin_headers,
                                                      client_timeout=10)
            return tuple(sorted(m.name for m in index.models))
        finally:
            client.close()

    def drain(self, timeout: float | None = None) -> bool:
        """Let the running generations finish, accepting no new ones; True when they did
        within `timeout` (default `drain_timeout`) s. Call `stop` after it.

        Triton's own stop (SIGINT) is no drain: it refuses the orchestrator's BLS calls at
        once, so every running generation fails ("Server not ready"). Unloading the
        orchestrator instead turns readiness red at once (balancers stop routing here), new
        requests get "not ready" (clients retry them elsewhere), and the unload completes
        when the last running request has sent its video.
        """
        import tritonclient.grpc as grpcclient

        timeout = self.config.drain_timeout if timeout is None else timeout
        if not self.running:
            return True
        client = grpcclient.InferenceServerClient(self.endpoints.grpc)
        begin = time.monotonic()
        try:
            index = client.get_model_repository_index(headers=self.admin_headers,
                                                      client_timeout=10)
            if protocol.ORCHESTRATOR not in {m.name for m in index.models}:
                return True
            LOG.info("draining: no new requests; waiting up to %.0f s for the running ones",
                     timeout)
            client.unload_model(protocol.ORCHESTRATOR, headers=self.admin_headers,
                                client_timeout=30)
            while time.monotonic() - begin < timeout and self.running:
                models = client.get_model_repository_index(headers=self.admin_headers,
                                                           client_timeout=10).models
                if all(m.state != "UNLOADING" for m in models
                       if m.name == protocol.ORCHESTRATOR):
                    LOG.info("drained in %.1f s", time.monotonic() - begin)
                    return True
                time.sleep(0.25)
        except Exception as error:  # the server is going anyway: stop it
            LOG.warning("drain failed: %s", error)
            return False
        finally:
            client.close()
        LOG.warning("drain: requests still running after %.0f s; stopping anyway", timeout)
        return False

    def stop(self, keep_workdir: bool = False) -> None:
        """SIGINT (Triton drains in-flight requests), then SIGKILL after `stop_timeout`."""
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        process, self._process = self._process, None
        stop_process(process, signal.SIGINT, self.config.stop_timeout, "tritonserver")
        if self._log_thread is not None:
            self._log_thread.join(timeout=5)
            self._log_thread = None
        if self._workdir is not None and not keep_workdir:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # --- state --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_tail(self) -> str:
        return "\n".join(self._log_tail)

    def is_ready(self) -> bool:
        return http_ready(self.endpoints.http)

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    @property
    def pid(self) -> int | None:
        """The server's process id, which is also its process group (stubs included)."""
        return None if self._process is None else self._process.pid

    def _wait_ready(self) -> None:
        process, log_thread = self._process, self._log_thread
        assert process is not None and log_thread is not None, "_launch starts both"
        deadline = time.monotonic() + self.config.startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log_thread.join(timeout=5)
                raise ServerError(f"tritonserver exited with code {process.returncode} "
                                  f"during startup; last log lines:\n{self.log_tail}")
            # ready, and (with the watchdog) one check of every model's stubs passed since
            # the server answered, so `start` never returns a server with a dead stage
            if self.is_ready() and (self.watchdog is None or self.watchdog.checked.is_set()):
                return
            time.sleep(0.25)
        raise ServerError(f"tritonserver not ready after {self.config.startup_timeout:.0f} s "
                          f"(raise startup_timeout for large models); last log lines:\n"
                          f"{self.log_tail}")

    def _forward_logs(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            line = line.rstrip()
            self._log_tail.append(line)
            # Triton prefixes its lines with the severity letter: surface errors
            error = line.startswith("E") and not any(b in line for b in BENIGN_ERRORS)
            SERVER_LOG.log(logging.WARNING if error else self.config.log_level, "%s", line)

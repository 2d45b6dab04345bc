"""`serve_forever`: run tritonserver until stopped, restarting it after a crash.

A crash (an abort in the server, an OOM kill) is followed by a restart on the same ports,
repository and admin token after a back-off that doubles per restart (1 s, 2 s, ... up
to 30 s). More than `max_restarts` crashes within `window` seconds means something is
broken for good (a bad repository, a port taken): the supervisor gives up with exit code 1
instead of restarting forever. Every exit and restart is logged.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cinema_trt.serving.server import ServerConfig, ServerError, TritonServer

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5  # crashes tolerated within `window` seconds
    window: float = 600.0
    backoff: float = 1.0  # seconds before the first restart, doubled per recent crash
    max_backoff: float = 30.0

    def __post_init__(self):
        if self.max_restarts < 0 or self.window <= 0 or self.backoff < 0 \
                or self.max_backoff < self.backoff:
            raise ValueError(f"{self}: need max_restarts >= 0, window > 0 and "
                             "0 <= backoff <= max_backoff")

    def delay(self, recent: int) -> float:
        return min(self.backoff * 2 ** recent, self.max_backoff)


def serve_forever(config: ServerConfig, stop: threading.Event | None = None,
                  on_ready: Callable[[TritonServer], None] | None = None,
                  policy: RestartPolicy = RestartPolicy()) -> int:
    """Run the server until `stop` is set, SIGTERM or Ctrl-C (0), or it crashes more often
    than `policy` allows (1). `on_ready(server)` runs after the first start. A stop by
    `stop` or SIGTERM (Kubernetes ending a pod) drains first: the running generations
    finish within `config.drain_timeout`; Ctrl-C stops at once."""
    stop = stop or threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        # `kill <pid>` must stop the server too, not orphan it
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = TritonServer(config)
    try:
        server.start()
        if on_ready is not None:
            on_ready(server)
        code = _supervise(server, stop, policy)
        if code == 0:
            server.drain()
        return code
    except KeyboardInterrupt:
        LOG.info("Ctrl-C: stopping tritonserver")
        return 0
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _supervise(server: TritonServer, stop: threading.Event, policy: RestartPolicy) -> int:
    crashes: collections.deque[float] = collections.deque()
    while True:
        while server.running and not stop.wait(0.5):
            pass
        if stop.is_set():
            return 0
        LOG.error("tritonserver exited on its own with code %s; last log lines:\n%s",
                  server.returncode, server.log_tail)
        server.stop()
        while True:  # until a restart succeeds, we are stopped, or we give up
            now = time.monotonic()
            while crashes and now - crashes[0] > policy.window:
                crashes.popleft()
            if len(crashes) >= policy.max_restarts:
                LOG.error("tritonserver failed %d times in %.0f s; giving up (fix the cause "
                          "in the log above, then serve again)", len(crashes) + 1,
                          policy.window)
                return 1
            delay = policy.delay(len(crashes))
            crashes.append(now)
            LOG.warning("restarting tritonserver in %.1f s (restart %d; at most %d in %.0f s)",
                        delay, len(crashes), policy.max_restarts, policy.window)
            if stop.wait(delay):
                return 0
            try:
                server.start()
            except ServerError as error:
                LOG.error("restart failed: %s", error)
                continue
            LOG.warning("tritonserver restarted: grpc %s", server.endpoints.grpc)
            break

"""Health that tells the truth: reload a model whose Python-backend stub died.

Triton 2.51 keeps a model READY after its stub process dies (an abort inside the stub, an
OOM kill, `kill -9`): every later request fails with "Stub process ... is not healthy" and
nothing restarts it. A reload in place is a no-op when the config is unchanged, so the
watchdog unloads the model (health turns not-ready at once; with strict readiness so does
`/v2/health/ready`) and loads it again, which starts fresh stubs.

A stub is found from the server's child processes: the stub's command line names its
model instance (`<model>_<group>_<index>`, argument 8). An instance that was seen alive
and has no live stub while its model is READY has died. A model someone unloaded through
the API is not READY, so it is left alone.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

LOG = logging.getLogger(__name__)
STUB_BINARY = "triton_python_backend_stub"
_INSTANCE_ARG = 8  # argv index of the instance name in the stub's command line


def live_stubs(server_pid: int) -> dict[str, int]:
    """Model instance name -> pid of every running (not zombie) stub of `server_pid`."""
    stubs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        state, parent = fields[0], int(fields[1])
        if parent != server_pid or state in "ZX" or not argv[0].endswith(STUB_BINARY.encode()):
            continue
        if len(argv) > _INSTANCE_ARG:
            stubs[argv[_INSTANCE_ARG].decode()] = int(entry)
    return stubs


def model_of(instance: str) -> str:
    """`connector_0_0` -> `connector` (Triton names instances <model>_<group>_<index>)."""
    return instance.rsplit("_", 2)[0]


class ModelControl:
    """The model-control calls the watchdog needs, over gRPC with the admin header."""

    def __init__(self, url: str, headers: dict[str, str], load_timeout: float):
        self.url, self.headers, self.load_timeout = url, headers, load_timeout

    def _client(self):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.url)

    def ready_models(self) -> set[str]:
        client = self._client()
        try:
            index = client.get_model_repository_index(headers=self.headers, client_timeout=5)
            return {m.name for m in index.models if m.state == "READY"}
        finally:
            client.close()

    def is_ready(self, model: str) -> bool:
        client = self._client()
        try:
            return bool(client.is_model_ready(model, client_timeout=5))
        finally:
            client.close()

    def reload(self, model: str) -> None:
        client = self._client()
        try:
            client.unload_model(model, headers=self.headers, client_timeout=30)
            client.load_model(model, headers=self.headers, client_timeout=self.load_timeout)
        finally:
            client.close()


class StubWatchdog:
    """A thread that reloads models whose stubs died; `events` records each recovery."""

    def __init__(self, server_pid: int, control: ModelControl, interval: float = 0.5,
                 on_recovered: Callable[[str, float], None] | None = None):
        self.server_pid, self.control, self.interval = server_pid, control, interval
        self.on_recovered = on_recovered
        self.seen: set[str] = set()
        self.pending: set[str] = set()  # unloaded by us, whose load failed: tried again
        self.events: list[tuple[str, float]] = []  # (model, seconds to serve again)
        self.detections: list[tuple[str, float]] = []  # (model, time.monotonic() seen dead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="stub-watchdog")

    def start(self) -> StubWatchdog:
        # the server is ready: every stub runs now; one killed before the first check
        # must still count as seen
        self.seen |= set(live_stubs(self.server_pid))
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as error:  # the server may be stopping: keep watching
                LOG.debug("watchdog check failed: %s", error)

    def dead_models(self) -> set[str]:
        """READY models with an instance seen alive before and without a live stub now."""
        ready = self.control.ready_models()
        live = live_stubs(self.server_pid)  # after the index: a stub loaded since is seen
        self.seen |= set(live)
        return {model_of(name) for name in self.seen - set(live)} & ready

    def check(self) -> None:
        for model in sorted(self.dead_models()):
            if self._stop.is_set() or not self.control.is_ready(model):
                continue  # unloaded through the API meanwhile: not ours to bring back
            self.recover(model)
        for model in sorted(self.pending):
            if not self._stop.is_set():
                self.recover(model)

    def recover(self, model: str) -> None:
        LOG.warning("model %r: a backend stub died; reloading the model (not ready until "
                    "it is back)", model)
        begin = time.monotonic()
        self.detections.append((model, begin))
        self.seen = {name for name in self.seen if model_of(name) != model}
        try:
            self.control.reload(model)
        except Exception as error:  # tried again at the next check
            LOG.error("model %r: reload after a stub death failed: %s", model, error)
            self.pending.add(model)
            return
        self.pending.discard(model)
        took = time.monotonic() - begin
        # the new stubs count as seen now: one that dies before the next check is caught
        self.seen |= {name for name in live_stubs(self.server_pid) if model_of(name) == model}
        self.events.append((model, took))
        LOG.warning("model %r serves again (reloaded in %.1f s)", model, took)
        if self.on_recovered is not None:
            self.on_recovered(model, took)

"""Health that tells the truth: reload a model whose Python-backend stub is dead or missing.

Triton 2.51 keeps a model READY after its stub process dies (an abort inside the stub, an
OOM kill, `kill -9`): every later request fails with "Stub process ... is not healthy" and
nothing restarts it. A reload in place is a no-op when the config is unchanged, so the
watchdog unloads the model (health turns not-ready at once; with strict readiness so does
`/v2/health/ready`) and loads it again, which starts fresh stubs.

The truth comes from the model's config, not from history: a READY Python-backend model
must have one live stub per instance (`count` per instance group, on each of its GPUs). A
stub is found from the server's child processes, whose command line names its instance
(`<group>_<index>`, argument 8). Comparing against what was *seen* alive missed every stub
that died before the watchdog first looked, such as one killed in the first second after a
restart: its model stayed READY, dead, for good (issue 21). The watchdog therefore starts
with the server process, checks as soon as the server answers, and `TritonServer.start`
returns only after one check passed. A model someone unloaded through the API is not
READY, so it is left alone.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable

LOG = logging.getLogger(__name__)
STUB_BINARY = "triton_python_backend_stub"
_INSTANCE_ARG = 8  # argv index of the instance name in the stub's command line


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of the running (not zombie) children of `pid`."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:  # the process ended while we looked
            continue
        fields = rest.split()
        if int(fields[1]) == pid and fields[0] not in "ZX":
            found.append((int(entry), head.split("(", 1)[1]))
    return found


def stub_processes(server_pid: int) -> list[tuple[str, int]]:
    """(instance name, pid) of every running (not zombie) stub of `server_pid`. A group on
    several GPUs has one stub per GPU under the same instance name, hence a list."""
    stubs = []
    for pid, _ in children(server_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        if argv[0].endswith(STUB_BINARY.encode()) and len(argv) > _INSTANCE_ARG:
            stubs.append((argv[_INSTANCE_ARG].decode(), pid))
    return stubs


def live_stubs(server_pid: int) -> dict[str, int]:
    """Model instance name -> pid of every running stub of `server_pid`."""
    return dict(stub_processes(server_pid))


def group_of(instance: str) -> str:
    """`connector_0_1` -> `connector_0`: an instance is `<group name>_<index>`."""
    return instance.rsplit("_", 1)[0]


def expected_stubs(config: dict) -> dict[str, int]:
    """Instance group name -> the stubs a loaded Python-backend model runs ({} for other
    backends, which have no stubs): `count` per group, times its GPUs for KIND_GPU."""
    if config.get("backend") != "python":
        return {}
    expected = {}
    for group in config.get("instance_group", []):
        devices = len(group.get("gpus", [])) if group.get("kind") == "KIND_GPU" else 0
        expected[group["name"]] = int(group.get("count", 1)) * max(devices, 1)
    return expected


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

    def config(self, model: str) -> dict:
        client = self._client()
        try:
            return client.get_model_config(model, as_json=True, client_timeout=5)["config"]
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


def _timed_out(error: Exception) -> bool:
    status = getattr(error, "status", None)
    return callable(status) and "DEADLINE_EXCEEDED" in str(status())


class StubWatchdog:
    """A thread that finds models whose stubs are dead or missing and reloads each in a
    thread of its own (a slow reload never delays noticing another death); `events`
    records each recovery, `checked` is set once a check ran against the answering server.

    A reload that outlives the load timeout means the server cannot bring the model back
    (Triton 2.51 waits forever for a stub killed before its first message): the model
    stays not ready, and `on_unrecoverable(model, reason)` is called, which the launcher
    answers by ending the server for its supervisor to restart.
    """

    def __init__(self, server_pid: int, control: ModelControl, interval: float = 0.5,
                 on_recovered: Callable[[str, float], None] | None = None,
                 on_unrecoverable: Callable[[str, str], None] | None = None):
        self.server_pid, self.control, self.interval = server_pid, control, interval
        self.on_recovered, self.on_unrecoverable = on_recovered, on_unrecoverable
        self.pending: set[str] = set()  # unloaded by us, whose load failed: tried again
        self.events: list[tuple[str, float]] = []  # (model, seconds to serve again)
        self.detections: list[tuple[str, float]] = []  # (model, time.monotonic() seen dead)
        self.checked = threading.Event()
        self._expected: dict[str, dict[str, int]] = {}  # model -> its stubs, while READY
        self._recovering: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="stub-watchdog")

    def start(self) -> StubWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the reloads in progress."""
        for thread in list(self._recovering.values()):
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
                self.checked.set()
            except Exception as error:  # not answering yet, or stopping: keep watching
                LOG.debug("watchdog check failed: %s", error)
            self._stop.wait(self.interval)

    def _stubs_of(self, model: str) -> dict[str, int]:
        with self._lock:
            known = self._expected.get(model)
        if known is None:  # read once per load: a reload may change it
            known = expected_stubs(self.control.config(model))
            with self._lock:
                self._expected[model] = known
        return known

    def dead_models(self) -> set[str]:
        """READY models with fewer live stubs than their config has instances."""
        ready = self.control.ready_models()
        with self._lock:
            for model in set(self._expected) - ready:  # unloaded: its next load is read anew
                del self._expected[model]
        expected = {model: self._stubs_of(model) for model in ready}
        # after the index: a model loaded since is not in `ready`, so its stubs do not count
        live = collections.Counter(group_of(name) for name, _ in stub_processes(self.server_pid))
        return {model for model, groups in expected.items()
                if any(live[group] < count for group, count in groups.items())}

    def check(self) -> None:
        dead = self.dead_models()
        with self._lock:
            pending = set(self.pending)
        for model in sorted(dead | pending):
            busy = self._recovering.get(model)
            if self._stop.is_set() or (busy is not None and busy.is_alive()):
                continue
            if model not in pending and not self.control.is_ready(model):
                continue  # unloaded through the API meanwhile: not ours to bring back
            self.detections.append((model, time.monotonic()))
            with self._lock:
                self._expected.pop(model, None)
            thread = threading.Thread(target=self.recover, args=(model,), daemon=True,
                                      name=f"stub-watchdog-{model}")
            self._recovering[model] = thread
            thread.start()

    def recover(self, model: str) -> None:
        LOG.warning("model %r: a backend stub is dead or missing; reloading the model (not "
                    "ready until it is back)", model)
        begin = time.monotonic()
        try:
            self.control.reload(model)
        except Exception as error:  # tried again at the next check
            LOG.error("model %r: reload after a stub death failed: %s", model, error)
            with self._lock:
                self.pending.add(model)
            if _timed_out(error) and self.on_unrecoverable is not None:
                self.on_unrecoverable(model, f"its reload outlived the load timeout "
                                             f"({self.control.load_timeout:.0f} s)")
            return
        with self._lock:
            self.pending.discard(model)
        took = time.monotonic() - begin
        self.events.append((model, took))
        LOG.warning("model %r serves again (reloaded in %.1f s)", model, took)
        if self.on_recovered is not None:
            self.on_recovered(model, took)

"""The stub watchdog keeps readiness true at every point of a (re)start (issue 21).

A READY model must have one live stub per configured instance, whenever the stub died: while
the server loaded, the moment it first answered, while the watchdog reloaded another model
or this one. The logic runs on a fake server first (no process), then on a real server with
probe models that load in about a second (numpy only), one of them slow on purpose so a
stub can be killed while the server is still loading.
"""

import os
import signal
import threading
import time

import numpy as np
import pytest

from cinema_trt.serving import watchdog
from cinema_trt.serving.faults import wait_for
from cinema_trt.serving.watchdog import StubWatchdog, expected_stubs, live_stubs

INTERVAL = 0.5  # the watchdog's default check interval
# readiness turns red within the interval plus one check (an index call, a /proc scan:
# 0.05-0.1 s measured on the 2-core machine); 0.5 s leaves room for a loaded CI machine
NOT_READY_S = INTERVAL + 0.5
SERVING_S = 10.0  # issue 21's acceptance: the stage serves again within 10 s


# --- the rule, on a fake server -------------------------------------------------------------


class FakeControl:
    """A server's model-control answers, from data: what the watchdog asks over gRPC."""

    def __init__(self, ready: set[str], configs: dict[str, dict]):
        self.ready, self.configs, self.reloaded = set(ready), configs, []

    def ready_models(self):
        return set(self.ready)

    def config(self, model):
        return self.configs[model]

    def is_ready(self, model):
        return model in self.ready

    def reload(self, model):
        self.reloaded.append(model)


def _python(*groups) -> dict:
    return {"backend": "python", "instance_group": list(groups)}


def test_expected_stubs_count_every_instance_on_every_gpu():
    config = _python({"name": "dit_0", "kind": "KIND_GPU", "count": 2, "gpus": [0, 1]},
                     {"name": "dit_1", "kind": "KIND_CPU", "count": 1})
    assert expected_stubs(config) == {"dit_0": 4, "dit_1": 1}
    assert expected_stubs({"platform": "tensorrt_plan", "instance_group": [
        {"name": "dit_0", "kind": "KIND_GPU", "count": 1, "gpus": [0]}]}) == {}


def test_a_ready_model_whose_stub_was_never_seen_alive_is_dead(monkeypatch):
    # the bug of issue 21: a stub dead before the watchdog first looked was never "seen",
    # so its model stayed READY and dead for good
    control = FakeControl({"connector", "dit"}, {
        "connector": _python({"name": "connector_0", "kind": "KIND_CPU", "count": 1}),
        "dit": _python({"name": "dit_0", "kind": "KIND_CPU", "count": 2})})
    monkeypatch.setattr(watchdog, "stub_processes", lambda pid: [("dit_0_0", 11), ("dit_0_1", 12)])
    dog = StubWatchdog(1, control)  # type: ignore[arg-type]
    assert dog.dead_models() == {"connector"}
    dog.check()
    dog.join(timeout=5)
    assert control.reloaded == ["connector"]


def test_one_missing_instance_of_several_makes_the_model_dead(monkeypatch):
    control = FakeControl({"dit"}, {"dit": _python({"name": "dit_0", "kind": "KIND_CPU",
                                                    "count": 2})})
    monkeypatch.setattr(watchdog, "stub_processes", lambda pid: [("dit_0_1", 12)])
    assert StubWatchdog(1, control).dead_models() == {"dit"}  # type: ignore[arg-type]


def test_models_not_ready_and_other_backends_are_left_alone(monkeypatch):
    control = FakeControl({"dit"}, {
        "dit": {"platform": "tensorrt_plan", "instance_group": [{"name": "dit_0"}]},
        "vae": _python({"name": "vae_0", "kind": "KIND_CPU", "count": 1})})
    monkeypatch.setattr(watchdog, "stub_processes", lambda pid: [])
    dog = StubWatchdog(1, control)  # type: ignore[arg-type]
    assert dog.dead_models() == set()  # vae is unloaded (not READY); dit has no stubs
    dog.check()
    dog.join(timeout=5)
    assert control.reloaded == []


# --- a real server --------------------------------------------------------------------------

PROBE = '''
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        time.sleep({delay})

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy() * 2)]) for r in requests]
'''


def probe_repository(root, delays: dict[str, float], count: int = 1):
    """Probe models that double `x`; each sleeps `delays[name]` s in initialize."""
    import torch

    from cinema_trt.models.specs import StageSpec, TensorSpec
    from cinema_trt.serving.triton_config import Placement, stage_config, to_text

    for name, delay in delays.items():
        spec = StageSpec(name, (TensorSpec("x", torch.float32, ("n",)),),
                         (TensorSpec("y", torch.float32, ("n",)),))
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(
            to_text(stage_config(spec, "python", Placement(count=count))))
        (root / name / "1" / "model.py").write_text(PROBE.format(delay=delay))
    return root


def _serves(server, model: str) -> bool:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.endpoints.grpc)
    try:
        x = grpcclient.InferInput("x", [2], "FP32")
        x.set_data_from_numpy(np.array([1, 2], dtype=np.float32))
        return list(client.infer(model, [x], client_timeout=10).as_numpy("y")) == [2, 4]
    except Exception:  # not ready, stub dead, server restarting: it does not serve
        return False
    finally:
        client.close()


def _kill(server, instance: str) -> float:
    os.kill(live_stubs(server.pid)[instance], signal.SIGKILL)
    return time.monotonic()


def _detected_after(server, model: str, since: float) -> float | None:
    times = [t - since for m, t in server.watchdog.detections if m == model and t >= since]
    return min(times) if times else None


def assert_restored(server, model: str, killed: float) -> None:
    """Red within the interval (the watchdog unloaded it), serving within SERVING_S."""
    assert wait_for(lambda: _detected_after(server, model, killed) is not None, SERVING_S), \
        f"{model}: the watchdog never noticed its dead stub"
    red = _detected_after(server, model, killed)
    assert red is not None and red <= NOT_READY_S, f"{model}: not ready only after {red:.2f} s"
    assert wait_for(lambda: _serves(server, model), SERVING_S) is not None, \
        f"{model} did not serve again within {SERVING_S} s"


@pytest.fixture
def start_server(tritonserver_binary, tmp_path):
    from cinema_trt.serving.server import ServerConfig, TritonServer

    servers = []

    def start(delays, count=1, before_start=None):
        repo = probe_repository(tmp_path / f"repo{len(servers)}", delays, count)
        server = TritonServer(ServerConfig(repo, startup_timeout=120, stop_timeout=10))
        servers.append(server)
        if before_start is not None:
            before_start(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def _in_background(target, server) -> threading.Thread:
    thread = threading.Thread(target=target, args=(server,), daemon=True)
    thread.start()
    return thread


@pytest.mark.server
def test_a_stub_killed_while_the_server_still_loads_is_restored_before_start_returns(
        start_server):
    killed = []

    def kill_when_fast_is_loaded(server):
        # `fast` is READY while `slow` still sleeps in initialize: the server is not ready
        wait_for(lambda: "successfully loaded 'fast'" in server.log_tail, 60)
        killed.append(_kill(server, "fast_0_0"))

    server = start_server({"fast": 0, "slow": 4},
                          before_start=lambda s: _in_background(kill_when_fast_is_loaded, s))
    assert killed, "the stub was not killed while the server loaded"
    assert _detected_after(server, "fast", killed[0]) is not None
    assert "fast_0_0" in live_stubs(server.pid) and _serves(server, "fast")


@pytest.mark.server
def test_a_stub_killed_the_moment_the_server_answers_is_red_within_the_interval(start_server):
    killed = []

    def kill_when_ready(server):
        wait_for(lambda: server.pid is not None and server.is_ready(), 60)
        killed.append(_kill(server, "fast_0_0"))

    server = start_server({"fast": 0}, before_start=lambda s: _in_background(kill_when_ready, s))
    assert killed
    assert_restored(server, "fast", killed[0])


def _stubs_of(server, model: str) -> set[int]:
    # Triton names instances <model>_<group>_<index>: `connector_0_0` -> `connector`
    return {pid for name, pid in watchdog.stub_processes(server.pid)
            if name.rsplit("_", 2)[0] == model}


@pytest.mark.server
def test_stubs_killed_during_a_reload_are_restored(start_server):
    # `slow` takes 2 s to load, so its reload is long enough to kill things meanwhile
    server = start_server({"slow": 2, "other": 0}, count=2)
    before = _stubs_of(server, "slow")
    first = _kill(server, "slow_0_1")  # one instance of two: the model is dead
    assert wait_for(lambda: _detected_after(server, "slow", first) is not None, NOT_READY_S)
    # while the watchdog reloads `slow`: another model's stub dies (noticed at once, not
    # after the reload), then a new stub of `slow` in its initialize (the load fails with
    # "not healthy" and is tried again)
    other = _kill(server, "other_0_0")
    assert_restored(server, "other", other)
    assert wait_for(lambda: _stubs_of(server, "slow") - before, SERVING_S) is not None
    time.sleep(0.5)  # in initialize (which sleeps 2 s), past the stub's first message
    for pid in _stubs_of(server, "slow") - before:
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: _serves(server, "slow") and len(_stubs_of(server, "slow")) == 2,
                 2 * SERVING_S) is not None, "a stub killed during its own reload"


@pytest.mark.server
def test_a_stub_killed_at_birth_during_a_reload_ends_in_a_restart_that_serves(
        tritonserver_binary, tmp_path):
    """Triton 2.51 waits forever for a stub killed before its first message (a load that
    never ends, seen > 200 s): the model stays not ready, the watchdog's reload outlives
    the load timeout, and the launcher ends the server for its supervisor to restart."""
    from cinema_trt.serving.server import ServerConfig
    from cinema_trt.serving.supervisor import RestartPolicy, serve_forever

    repo = probe_repository(tmp_path, {"slow": 1})
    config = ServerConfig(repo, startup_timeout=120, stop_timeout=10, model_load_timeout=8)
    started, stop, codes = [], threading.Event(), []
    thread = threading.Thread(target=lambda: codes.append(serve_forever(
        config, stop, started.append, RestartPolicy(backoff=0.5))), daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: started, 120) is not None
        server = started[0]
        first_pid, before = server.pid, _stubs_of(server, "slow")
        killed = _kill(server, "slow_0_0")
        births = []
        while time.monotonic() - killed < SERVING_S and not births:
            births = list(_stubs_of(server, "slow") - before)
            for pid in births:  # the reload's new stub, within ~10 ms of its start
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        assert births, "the watchdog started no new stub"
        assert not _serves(server, "slow")
        # restored by a retried load, or by the restart after the load timeout (8 s)
        bound = config.model_load_timeout + 30
        assert wait_for(lambda: server.pid is not None and server.is_ready()
                     and _serves(server, "slow"), bound) is not None, "never restored"
        restarted = server.pid != first_pid
        print(f"restored {'by a restart' if restarted else 'by a retried load'} after "
              f"{time.monotonic() - killed:.1f} s")
    finally:
        stop.set()
        thread.join(timeout=60)
    assert codes == [0]


@pytest.mark.server
def test_a_model_unloaded_through_the_api_stays_unloaded(start_server):
    import tritonclient.grpc as grpcclient

    server = start_server({"fast": 0})
    client = grpcclient.InferenceServerClient(server.endpoints.grpc)
    try:
        client.unload_model("fast", headers=server.admin_headers)
        time.sleep(4 * INTERVAL)
        assert not client.is_model_ready("fast")
        assert server.watchdog.detections == []
    finally:
        client.close()

"""Server-side faults on a server of our own (explicit model control, fixed ports):

- a stage whose weights are swapped for an incompatible model is refused at reload by its
  warm-up request, and the serving version stays;
- a pickle swapped into a stage folder is refused at (re)load;
- the DiT is unloaded while requests are running and queued;
- the server is stopped mid-request and started again on the same repository and ports.

Each call returns or raises within a timeout with an error naming the stage, and the
server serves a valid request once the fault is repaired. The repository copies its
weights, so swapping files here never touches the shared weights folder.
"""

import dataclasses
import logging
import os
import pickle
import threading
import time

import pytest

from cinema_trt.models.dit import create_dit
from cinema_trt.models.factory import CONFIG_FILE, read_weights_config
from cinema_trt.models.weights import save_stage
from cinema_trt.serving.client import CinemaClient, CinemaRequestError, ClientOptions

pytestmark = [pytest.mark.server, pytest.mark.slow]
log = logging.getLogger(__name__)

SMALL = dict(frames=5, height=32, width=32, steps=2, guidance=4.0)
CALL_TIMEOUT = 120.0  # seconds; a call taking longer counts as hung


@pytest.fixture(scope="module")
def server(tritonserver_binary, tiny_weights, tmp_path_factory):
    from cinema_trt.serving.repo import RepositoryOptions, build_repository
    from cinema_trt.serving.server import ServerConfig, TritonServer, free_port

    repo = build_repository(None, tmp_path_factory.mktemp("faults") / "models", tiny_weights,
                            options=RepositoryOptions(copy_weights=True))
    # explicit model control is the launcher's default; the admin header unlocks it.
    # fixed ports: the restart must come back where the client looks; short stop timeout:
    # a stop with a request in flight waits for it at most that long
    config = ServerConfig(repo, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), startup_timeout=240, stop_timeout=10)
    with TritonServer(config) as running:
        yield running


class AdminClient:
    """Model control with the launcher's admin header (model control is admin-only)."""

    def __init__(self, server):
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(server.endpoints.grpc)
        self.headers = server.admin_headers

    def load_model(self, name: str) -> None:
        self.client.load_model(name, headers=self.headers)

    def unload_model(self, name: str) -> None:
        self.client.unload_model(name, headers=self.headers)

    def is_model_ready(self, name: str) -> bool:
        return self.client.is_model_ready(name)


@pytest.fixture
def triton(server):
    admin = AdminClient(server)
    yield admin
    admin.client.close()


class StageFiles:
    """A stage's version folder whose original files can be put back and reloaded."""

    def __init__(self, server, triton, stage: str):
        self.folder = server.config.repository / stage / "1"
        self.stage, self.triton = stage, triton
        self.saved = {p.name: p.read_bytes() for p in self.folder.iterdir() if p.is_file()}
        self.changed = False

    def write(self, name: str, data: bytes) -> None:
        self.changed = True
        (self.folder / name).write_bytes(data)

    def restore(self) -> None:
        if self.changed:
            for name, data in self.saved.items():
                (self.folder / name).write_bytes(data)
            self.triton.load_model(self.stage)
            self.changed = False


@pytest.fixture
def dit_files(server, triton):
    files = StageFiles(server, triton, "dit")
    yield files
    files.restore()


def _generate(server, png, **params):
    client = CinemaClient(server.endpoints.grpc, ClientOptions(timeout=CALL_TIMEOUT))
    return client.generate("a toy", [png], **{**SMALL, **params})


def test_an_incompatible_stage_is_refused_at_load_by_its_warmup(server, triton, png,
                                                                dit_files, tmp_path):
    from tritonclient.utils import InferenceServerException

    # a DiT built for a 64-wide text encoder: before warm-up existed it loaded and then
    # failed every call; now its first (warm-up) execution refuses the repository's
    # 48-wide features and the load fails naming the dim (a real failure, no mock)
    config = read_weights_config(dit_files.folder)
    wrong = dataclasses.replace(config, dit=dataclasses.replace(config.dit, text_dim=64))
    save_stage(create_dit(wrong.dit, seed=0), tmp_path / "dit.safetensors")
    dit_files.write("dit.safetensors", (tmp_path / "dit.safetensors").read_bytes())
    dit_files.write(CONFIG_FILE, wrong.to_json().encode())
    refused = (r"failed to run warmup sample 'first_request': invalid request: dit: input "
               r"'text_states' declares shape \[2, 16, 48\]; dim 2 must be 64")
    with pytest.raises(InferenceServerException, match=refused):
        triton.load_model("dit")
    # Triton keeps the version that was serving when a reload fails
    assert server.is_ready()
    assert _generate(server, png).shape == (5, 32, 32, 3)


class _Canary:
    """Unpickling this creates a folder: proof that a pickle was (or was not) executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_pickle_swapped_into_a_stage_is_refused_at_load(server, triton, png, dit_files,
                                                          tmp_path):
    from tritonclient.utils import InferenceServerException

    marker = tmp_path / "pickle-was-executed"
    dit_files.write("dit.safetensors", pickle.dumps({"blocks.0.weight": _Canary(marker)}))
    with pytest.raises(InferenceServerException, match="not the safetensors layout"):
        triton.load_model("dit")
    assert not marker.exists()
    # Triton keeps the version that was serving when a reload fails
    assert _generate(server, png).shape == (5, 32, 32, 3)


def test_unloading_the_dit_fails_running_and_queued_requests_clearly(server, triton, png):
    started, outcomes = threading.Event(), []

    def generate(seed):
        client = CinemaClient(server.endpoints.grpc, ClientOptions(timeout=CALL_TIMEOUT))
        try:
            client.generate("a toy", [png], progress=lambda i, n: started.set(), seed=seed,
                            **{**SMALL, "steps": 1000})
            outcomes.append("finished")
        except (CinemaRequestError, ConnectionError) as error:
            outcomes.append(str(error))

    # the orchestrator runs 2 at once: 2 requests are running and 2 queued at the unload
    threads = [threading.Thread(target=generate, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert started.wait(timeout=60)
        triton.unload_model("dit")
        for thread in threads:
            thread.join(timeout=CALL_TIMEOUT)
        assert not any(thread.is_alive() for thread in threads), "a request hung"
        assert len(outcomes) == 4
        # running requests fail naming the stage; queued ones had not started, so the
        # client retried them and then gave up naming the unready stage (or server)
        for outcome in outcomes:
            assert "stage model 'dit' failed" in outcome or "is not ready" in outcome, outcome
        assert not triton.is_model_ready("dit")
    finally:
        triton.load_model("dit")
    assert triton.is_model_ready("dit")
    assert _generate(server, png).shape == (5, 32, 32, 3)


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[2]) == pgid:
                    pids.append(int(pid))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return pids


def test_a_restart_mid_request_ends_the_call_and_the_client_reconnects(server, png):
    client = CinemaClient(server.endpoints.grpc, ClientOptions(timeout=CALL_TIMEOUT,
                                                               connect_retries=10))
    started, outcome = threading.Event(), []

    def generate():
        try:
            client.generate("a toy", [png], progress=lambda i, n: started.set(),
                            **{**SMALL, "steps": 1000})
            outcome.append("finished")
        except (CinemaRequestError, ConnectionError, TimeoutError) as error:
            outcome.append(f"{type(error).__name__}: {error}")

    thread = threading.Thread(target=generate)
    thread.start()
    assert started.wait(timeout=60)
    pgid = server.pid
    begin = time.monotonic()
    server.stop()  # SIGINT; SIGKILL after stop_timeout
    thread.join(timeout=CALL_TIMEOUT)
    assert not thread.is_alive(), "the in-flight call hung when the server stopped"
    assert outcome and outcome[0].strip(), outcome  # finished, or a non-empty error
    log.info("stopped mid-request in %.1f s; the call ended with: %s",
             time.monotonic() - begin, outcome[0])
    assert time.monotonic() - begin < server.config.stop_timeout + 15
    deadline = time.monotonic() + 30  # stubs notice their server is gone within seconds
    while _group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _group_pids(pgid) == [], "backend stubs outlived the server"
    server.start()  # same repository, same ports
    assert client.generate("a toy", [png], **SMALL).shape == (5, 32, 32, 3)

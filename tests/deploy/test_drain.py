"""Graceful termination: SIGTERM to `cinema-trt serve` (what Kubernetes sends a pod) turns
readiness red at once, refuses new requests (clients retry them elsewhere) and lets the
running generation finish before the server stops. Triton's own stop does not: it refuses
the orchestrator's calls to the stages, and the running generation fails (checked here, so
the day Triton changes this is noticed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from cinema_trt.serving.client import CinemaClient, CinemaRequestError, ClientOptions

pytestmark = [pytest.mark.server, pytest.mark.slow]
LONG = dict(frames=5, height=32, width=32, steps=60, guidance=4.0)


@pytest.fixture(scope="module")
def repository(serve_extra, tiny_weights, tmp_path_factory):
    from cinema_trt.serving.repo import build_repository

    return build_repository(None, tmp_path_factory.mktemp("drain") / "models", tiny_weights)


def _ready(http: str) -> bool:
    try:
        with urllib.request.urlopen(f"{http}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _generate_in_background(url: str, png: str):
    steps, outcome = [], {}

    def generate():
        client = CinemaClient(url, ClientOptions(timeout=120, connect_retries=1))
        try:
            outcome["video"] = client.generate("a toy", [png], seed=3,
                                               progress=lambda i, n: steps.append(i), **LONG)
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=generate)
    thread.start()
    deadline = time.monotonic() + 60
    while len(steps) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert steps, "the generation did not start"
    return thread, steps, outcome


def test_sigterm_drains_the_running_generation_then_stops(tritonserver_binary, repository,
                                                         png, tmp_path):
    from cinema_trt.serving.server import free_port

    grpc, http, metrics = free_port(), free_port(), free_port()
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "cinema_trt.cli", "serve", "--repository", str(repository),
         "--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics)],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        url, health = f"127.0.0.1:{grpc}", f"http://127.0.0.1:{http}"
        deadline = time.monotonic() + 240
        while not _ready(health) and time.monotonic() < deadline:
            time.sleep(0.25)
        thread, steps, outcome = _generate_in_background(url, png)
        serve.send_signal(signal.SIGTERM)
        begin = time.monotonic()
        while _ready(health) and time.monotonic() - begin < 5:
            time.sleep(0.05)
        assert not _ready(health), "still ready after SIGTERM: balancers keep routing here"
        with pytest.raises(ConnectionError, match="not ready"):
            CinemaClient(url, ClientOptions(timeout=30, connect_retries=1)).generate(
                "a toy", [png], **dict(LONG, steps=2))
        thread.join(timeout=120)
        assert "error" not in outcome, outcome
        assert outcome["video"].shape == (5, 32, 32, 3) and steps[-1] == 60
        assert serve.wait(timeout=60) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        log.close()


def test_tritons_own_stop_fails_the_running_generation(tritonserver_binary, repository, png):
    from cinema_trt.serving.server import ServerConfig, TritonServer

    with TritonServer(ServerConfig(repository, stop_timeout=30)) as server:
        thread, _, outcome = _generate_in_background(server.endpoints.grpc, png)
        os.kill(server.pid, signal.SIGINT)
        thread.join(timeout=120)
    assert isinstance(outcome.get("error"), CinemaRequestError), outcome
    assert "not ready" in str(outcome["error"]).lower()

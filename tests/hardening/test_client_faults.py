"""Client-side faults against the shared server: a client process killed mid-generation,
and running plus queued requests cancelled together. Each call returns or raises within
a timeout, the server stops the abandoned work between denoising steps, and it serves
the next request."""

import logging
import subprocess
import sys
import threading

import pytest

from cinema_trt.serving.client import CinemaClient, ClientOptions, RequestCancelled
from cinema_trt.serving.latency import wait_until_stable

pytestmark = [pytest.mark.server, pytest.mark.slow]
log = logging.getLogger(__name__)

SMALL = dict(frames=5, height=32, width=32, guidance=4.0)
LONG_STEPS = 1000  # a request that would run for many seconds if nobody stopped it
CLIENT = """
import sys
from cinema_trt.serving.client import CinemaClient

def progress(step, total):
    if step == 1:
        print("started", flush=True)

CinemaClient(sys.argv[1]).generate("a toy", [sys.argv[2]], progress=progress, steps=1000,
                                   frames=5, height=32, width=32)
"""


def _dit_executions(url: str) -> int:
    import tritonclient.grpc as grpcclient

    triton = grpcclient.InferenceServerClient(url)
    try:
        return triton.get_inference_statistics("dit").model_stats[0].execution_count
    finally:
        triton.close()


def _settled_dit_executions(url: str, timeout: float = 60.0) -> int:
    """The DiT execution count once it stops changing for 2 s (no request is running)."""
    count, settled = wait_until_stable(lambda: _dit_executions(url), 2.0, timeout)
    assert settled, f"the DiT was still running after {timeout} s"
    return count


def test_a_killed_client_process_frees_its_request(served, png, tmp_path):
    url = served.endpoints.grpc
    ref = tmp_path / "ref.png"
    ref.write_bytes(png)
    before = _settled_dit_executions(url)
    process = subprocess.Popen([sys.executable, "-c", CLIENT, url, str(ref)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout.readline().strip() == "started"
    finally:
        process.kill()  # SIGKILL: no stream cancel, the kernel just closes the socket
        process.wait(timeout=10)
    ran = _settled_dit_executions(url) - before
    log.info("a killed client's request ran %d of %d steps", ran, LONG_STEPS)
    # one DiT call per step: Triton cancels the request of a vanished stream and the
    # orchestrator stops between steps, far before the 1000 steps asked for
    assert 1 <= ran < LONG_STEPS // 2, ran
    assert CinemaClient(url).generate("a toy", [png], steps=2, **SMALL).shape == (5, 32, 32, 3)


def test_cancelling_running_and_queued_requests_frees_the_server(served, png):
    url = served.endpoints.grpc
    before = _settled_dit_executions(url)
    cancel, started = threading.Event(), threading.Event()
    outcomes = []
    client = CinemaClient(url, ClientOptions(timeout=120))

    def generate(seed):
        try:
            client.generate("a toy", [png], progress=lambda i, n: started.set(), cancel=cancel,
                            seed=seed, steps=LONG_STEPS, **SMALL)
            outcomes.append("finished")
        except RequestCancelled:
            outcomes.append("cancelled")

    # 4 requests, the orchestrator runs 2 at once: 2 are running and 2 queued when cancelled
    threads = [threading.Thread(target=generate, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    assert started.wait(timeout=60)
    cancel.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a cancelled call hung"
    assert outcomes == ["cancelled"] * 4
    # the two running requests stop within a few steps each, the queued ones never start
    ran = _settled_dit_executions(url) - before
    log.info("4 cancelled requests ran %d steps in all", ran)
    assert ran < LONG_STEPS // 2
    assert client.generate("a toy", [png], steps=2, **SMALL).shape == (5, 32, 32, 3)

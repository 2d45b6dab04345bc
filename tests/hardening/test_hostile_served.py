"""Issue 13 replayed against a real server: hostile requests over HTTP (urllib, as curl)
and gRPC (tritonclient), killed stubs, and a client whose orchestrator dies.

Every hostile request gets a 4xx / INVALID_ARGUMENT and leaves the server and every model
serving; a killed stub turns its model not-ready within 5 s and serving within 30 s; no
client waits longer than its no-progress bound. One server serves the module (its stubs
are killed and brought back by the watchdog); the last test starts its own under
`serve_forever` because it crashes tritonserver on purpose.
"""

import contextlib
import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from cinema_trt.serving.client import (
    CinemaClient,
    CinemaRequestError,
    ClientOptions,
    ServerStalled,
)

pytestmark = [pytest.mark.server, pytest.mark.slow]
log = logging.getLogger(__name__)

MODELS = ("mllm", "connector", "vae_encoder", "dit", "vae_decoder", "cinema")
SMALL = dict(frames=5, height=32, width=32, steps=2, guidance=4.0)
HUGE = 100_000_000  # the 1.3 KB request: [1, 1e8, 64] FP32 declares 25.6 GB
WRAPS = 2 ** 62  # [1, 2**62, 64]: 2**68 elements wrap to 0 in Triton's int64 byte count
NOT_READY_S = 5.0  # the acceptance bounds
SERVING_S = 30.0


@pytest.fixture(scope="module")
def server(tritonserver_binary, tiny_weights, tmp_path_factory):
    from cinema_trt.serving.repo import build_repository
    from cinema_trt.serving.server import ServerConfig, TritonServer

    repo = build_repository(None, tmp_path_factory.mktemp("hostile") / "models", tiny_weights)
    with TritonServer(ServerConfig(repo, startup_timeout=240, stop_timeout=10)) as running:
        yield running


@pytest.fixture(scope="module")
def grpc(server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.endpoints.grpc)
    yield client
    client.close()


def connector_json(seq: int, values: list | None = None, mask: list | None = None) -> bytes:
    """The issue's request: `hidden_states` declared [1, seq, 64] with 320 JSON values."""
    mask = mask or [1] * 5
    return json.dumps({"inputs": [
        {"name": "hidden_states", "shape": [1, seq, 64], "datatype": "FP32",
         "data": values if values is not None else [0.5] * 320},
        {"name": "attention_mask", "shape": [1, len(mask)], "datatype": "INT64", "data": mask},
    ]}).encode()


def http_post(server, model: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"{server.endpoints.http}/v2/models/{model}/infer",
                                     data=body, headers={"Content-Type": "application/json",
                                                         **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def grpc_connector(grpc, shape: list[int], hidden: bytes, mask: np.ndarray):
    """One connector call with `hidden` as the raw bytes of a tensor declared `shape`."""
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("hidden_states", shape, "FP32")
    tensor._raw_content = hidden  # raw bytes of any length: Triton checks them, not we
    masked = grpcclient.InferInput("attention_mask", list(mask.shape), "INT64")
    masked.set_data_from_numpy(mask)
    return grpc.infer("connector", [tensor, masked], client_timeout=60)


def refused(call) -> tuple[str, str]:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def assert_all_serving(server, grpc, png) -> None:
    assert server.running and server.is_ready()
    assert all(grpc.is_model_ready(model) for model in MODELS)
    hidden = np.zeros((1, 5, 64), np.float32)
    result = grpc_connector(grpc, [1, 5, 64], hidden.tobytes(), np.ones((1, 5), np.int64))
    assert result.as_numpy("text_states").shape == (1, 16, 48)
    client = CinemaClient(server.endpoints.grpc, ClientOptions(timeout=120))
    assert client.generate("a toy", [png], **SMALL).shape == (5, 32, 32, 3)


# --- hostile requests ---------------------------------------------------------------------


@pytest.mark.parametrize("seq", [HUGE, WRAPS])
def test_hostile_http_requests_are_refused_before_their_json_is_parsed(server, grpc, png,
                                                                       seq):
    # HTTP inference is admin-only: Triton answers 403 before reading the body
    status, text = http_post(server, "connector", connector_json(seq))
    assert status == 403 and "restricted, expecting header 'cinema-admin'" in text, text
    assert_all_serving(server, grpc, png)


@pytest.mark.parametrize("seq", [HUGE, WRAPS])
def test_hostile_grpc_requests_get_invalid_argument(server, grpc, png, seq):
    # 320 values against a declared 25.6 GB (or a wrapped 0 B): Triton's byte-size check
    status, message = refused(lambda: grpc_connector(grpc, [1, seq, 64], bytes(1280),
                                                     np.ones((1, 5), np.int64)))
    assert status == "StatusCode.INVALID_ARGUMENT", message
    assert "input byte size mismatch for input 'hidden_states'" in message
    assert_all_serving(server, grpc, png)


def test_a_sequence_longer_than_any_request_needs_is_refused_by_the_stage(server, grpc):
    seq = 20_000  # 5 MB of consistent bytes: passes Triton, the stage bounds it
    status, message = refused(lambda: grpc_connector(
        grpc, [1, seq, 64], bytes(seq * 64 * 4), np.ones((1, seq), np.int64)))
    assert status == "StatusCode.INVALID_ARGUMENT", message
    assert "input 'hidden_states' declares shape [1, 20000, 64]; dim 1 (seq) must be in " \
           "1..16696" in message


@pytest.mark.parametrize("hidden,mask,message", [
    (np.full((1, 5, 64), np.nan, np.float32), [1] * 5, "'hidden_states' holds 320 non-finite"),
    (np.full((1, 5, 64), np.inf, np.float32), [1] * 5, "'hidden_states' holds 320 non-finite"),
    (np.zeros((1, 0, 64), np.float32), [],
     r"'hidden_states' declares shape \[1, 0, 64\]; dim 1 \(seq\) must be in 1\.\."),
    (np.zeros((1, 5, 64), np.float32), [2, -1, 7, 0, 1],
     r"'attention_mask' must hold only 0 and 1, got \[-1, 2, 7\]"),
    (np.zeros((1, 5, 64), np.float32), [0] * 5, "'attention_mask': row 0 is all zero"),
], ids=["nan", "inf", "empty-sequence", "mask-not-0-1", "mask-all-zero"])
def test_meaningless_values_get_invalid_argument_naming_the_input(server, grpc, hidden, mask,
                                                                  message):
    import re

    mask = np.array([mask], np.int64).reshape(1, -1)
    status, text = refused(lambda: grpc_connector(grpc, list(hidden.shape), hidden.tobytes(),
                                                  mask))
    assert status == "StatusCode.INVALID_ARGUMENT", text
    assert re.search("invalid request: connector: input " + message, text), text


def test_json_1e39_with_the_admin_header_gets_400_naming_the_input(server):
    # the 1e39 over HTTP JSON: FP32 overflows to +Inf; the stage answers 400
    status, text = http_post(server, "connector", connector_json(5, [1e39] * 320),
                             server.admin_http_headers)
    assert status == 400 and "'hidden_states' holds 320 non-finite values" in text, text


# --- killed stubs -------------------------------------------------------------------------


def _wait(predicate, timeout: float) -> float | None:
    """Seconds until `predicate()` holds, or None after `timeout`."""
    begin = time.monotonic()
    while time.monotonic() - begin < timeout:
        if predicate():
            return time.monotonic() - begin
        time.sleep(0.1)
    return None


def _ready(grpc, model: str) -> bool:
    from tritonclient.utils import InferenceServerException

    try:
        return bool(grpc.is_model_ready(model))
    except InferenceServerException:  # the server is gone
        return False


def _not_ready_after(server, grpc, model: str, since: float) -> float | None:
    """Seconds from `since` until `model` was seen not ready, by us or by the watchdog
    (which unloads it at once; a fast reload can end before our next look)."""
    def seen() -> bool:
        return not _ready(grpc, model) or any(
            m == model and t >= since for m, t in server.watchdog.detections)

    if _wait(seen, NOT_READY_S) is None:
        return None
    detected = [t for m, t in server.watchdog.detections if m == model and t >= since]
    return (min(detected) if detected else time.monotonic()) - since


def _kill_stub(server, model: str) -> float:
    from cinema_trt.serving.watchdog import live_stubs

    os.kill(live_stubs(server.pid)[f"{model}_0_0"], signal.SIGKILL)
    return time.monotonic()


def test_the_wrapping_shape_with_zero_bytes_kills_a_stub_and_the_watchdog_recovers(
        server, grpc, png):
    # Triton 2.51's element count wraps to 0, so 0 bytes pass its check and the stub
    # aborts building the numpy view before our `execute` runs ("array is too big")
    from cinema_trt.serving.faults import _reloads

    reloads, sent = _reloads(server, "connector"), time.monotonic()
    status, message = refused(lambda: grpc_connector(grpc, [1, WRAPS, 64], b"",
                                                     np.ones((1, 5), np.int64)))
    assert "Stub process 'connector_0_0' is not healthy" in message, (status, message)
    assert _not_ready_after(server, grpc, "connector", sent) is not None
    back = _wait(lambda: _reloads(server, "connector") > reloads
                 and grpc.is_model_ready("connector"), SERVING_S)
    assert back is not None, "the connector did not come back"
    log.info("connector serving again %.1f s after it was seen not ready", back)
    assert_all_serving(server, grpc, png)


@pytest.mark.parametrize("model", MODELS)
def test_a_killed_stub_is_not_ready_within_5_s_and_serves_within_30_s(server, grpc, png,
                                                                       model):
    from cinema_trt.serving.faults import _reloads

    reloads = _reloads(server, model)
    killed = _kill_stub(server, model)
    gone = _not_ready_after(server, grpc, model, killed)
    assert gone is not None, f"{model} still reported ready {NOT_READY_S} s after its stub died"
    # serving again: the watchdog's reload finished (a poll right after the kill would
    # still see the dead model READY)
    _wait(lambda: not server.running or (_reloads(server, model) > reloads
                                         and _ready(grpc, model)), SERVING_S)
    if not server.running:
        _restart_after_triton_abort(server)
    assert _ready(grpc, model)
    log.info("%s: not ready after %.1f s, serving after %.1f s", model, gone,
             time.monotonic() - killed)
    assert_all_serving(server, grpc, png)


def test_a_client_whose_orchestrator_dies_fails_within_its_no_progress_bound(server, grpc,
                                                                            png):
    bound = 10.0
    client = CinemaClient(server.endpoints.grpc, ClientOptions(timeout=None,
                                                               progress_timeout=bound))
    started, outcome = threading.Event(), []

    def generate():
        try:
            client.generate("a toy", [png], progress=lambda i, n: started.set(),
                            **{**SMALL, "steps": 1000})
            outcome.append("finished")
        except (ServerStalled, CinemaRequestError) as error:
            outcome.append(error)

    thread = threading.Thread(target=generate)
    thread.start()
    assert started.wait(timeout=60)
    killed = _kill_stub(server, "cinema")
    thread.join(timeout=bound + 20)
    assert not thread.is_alive(), "the client waited past its no-progress bound"
    waited = time.monotonic() - killed
    log.info("the client of a killed orchestrator ended after %.1f s with %r", waited, outcome)
    assert isinstance(outcome[0], ServerStalled | CinemaRequestError), outcome
    assert waited < bound + 5
    _wait(lambda: not server.running or _ready(grpc, "cinema"), SERVING_S)
    if not server.running:
        _restart_after_triton_abort(server)
    assert _ready(grpc, "cinema")
    assert_all_serving(server, grpc, png)


def _restart_after_triton_abort(server) -> None:
    """Triton 2.51 itself aborts now and then when the orchestrator's stub dies during or
    just after a request (issue 13 saw it once in 3 kills; here 2 in about 40): restart
    the module's server as `cinema-trt serve`'s supervisor would, and record it."""
    code, tail = server.returncode, server.log_tail.splitlines()[-8:]
    server.stop()
    server.start()
    pytest.xfail(f"tritonserver exited ({code}) after a stub was killed, a crash inside "
                 f"Triton 2.51 (restarted); last lines: {tail}")


def test_a_request_sent_while_a_stage_reloads_is_retried_and_succeeds(server, grpc, png):
    _kill_stub(server, "connector")
    client = CinemaClient(server.endpoints.grpc, ClientOptions(timeout=120, connect_retries=8))
    # the first attempt fails before any progress ("not healthy" or "not ready"): retried
    assert client.generate("a toy", [png], **SMALL).shape == (5, 32, 32, 3)
    assert _wait(lambda: grpc.is_model_ready("connector"), SERVING_S) is not None


# --- a crash inside Triton, and the supervisor ---------------------------------------------


@contextlib.contextmanager
def supervised_server(server):
    """`serve_forever` on the module's repository in a thread: yields its server, then
    stops it (drained) and checks it exited 0."""
    import queue

    from cinema_trt.serving.server import ServerConfig
    from cinema_trt.serving.supervisor import RestartPolicy, serve_forever

    config = ServerConfig(server.config.repository, startup_timeout=240, stop_timeout=10)
    started: queue.Queue = queue.Queue()
    stop, codes = threading.Event(), []
    thread = threading.Thread(target=lambda: codes.append(serve_forever(
        config, stop, started.put, RestartPolicy(backoff=0.5))))
    thread.start()
    try:
        yield started.get(timeout=300)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert codes == [0]


def test_triton_http_json_aborts_on_a_huge_declared_shape_and_serve_restarts_it(server, png,
                                                                                caplog):
    """A minimal reproduction of a Triton 2.51 bug, kept to notice when it is fixed: the
    HTTP JSON parser allocates the declared shape (25.6 GB) before checking the values, and
    std::bad_alloc aborts the server. Only an admin can send it (HTTP inference is admin-
    only); `serve_forever` restarts the server after the crash."""
    with supervised_server(server) as supervised:
        with caplog.at_level(logging.WARNING, logger="cinema_trt.serving.supervisor"):
            with pytest.raises((urllib.error.URLError, ConnectionError)):
                http_post(supervised, "connector", connector_json(HUGE),
                          supervised.admin_http_headers)
            assert _wait(lambda: "restarting tritonserver" in caplog.text, 60), caplog.text
            assert "exited on its own with code -6" in caplog.text  # SIGABRT
            assert _wait(supervised.is_ready, 240) is not None
        client = CinemaClient(supervised.endpoints.grpc, ClientOptions(timeout=120))
        assert client.generate("a toy", [png], **SMALL).shape == (5, 32, 32, 3)


def test_the_wrapping_shape_right_after_a_supervised_restart_is_red_at_once_and_serves_in_10_s(
        server, png):
    """Issue 21: sent in the first second after `serve_forever` restarted a crashed server,
    the wrapping request killed the connector's stub before the watchdog looked, and the
    stub was never restored while /v2/health/ready said 200. Now: readiness is red within
    the watchdog's interval (0.5 s, plus one check) and the connector serves within 10 s."""
    import tritonclient.grpc as grpcclient

    with supervised_server(server) as supervised:
        crashed = supervised.pid
        os.kill(crashed, signal.SIGKILL)  # a crash: the supervisor restarts the server
        assert _wait(lambda: supervised.pid not in (None, crashed) and supervised.is_ready(),
                     240) is not None, "the supervisor did not restart the server"
        grpc = grpcclient.InferenceServerClient(supervised.endpoints.grpc)
        sent = time.monotonic()
        status, message = refused(lambda: grpc_connector(grpc, [1, WRAPS, 64], b"",
                                                         np.ones((1, 5), np.int64)))
        died = time.monotonic() - sent  # the stub aborted before this answer
        assert "Stub process 'connector_0_0' is not healthy" in message, (status, message)
        red = _not_ready_after(supervised, grpc, "connector", sent)
        # the watchdog's interval (0.5 s) plus one check (0.05-0.1 s measured) and margin
        assert red is not None and red <= died + 0.5 + 0.5, f"red only after {red} s"
        back = _wait(lambda: _ready(grpc, "connector") and _connector_serves(grpc), 10.0)
        assert back is not None, "the connector did not serve within 10 s"
        log.info("after a supervised restart: connector red %.2f s after the request, "
                 "serving %.1f s after its answer", red, back)
        grpc.close()


def _connector_serves(grpc) -> bool:
    from tritonclient.utils import InferenceServerException

    try:
        hidden = np.zeros((1, 5, 64), np.float32)
        result = grpc_connector(grpc, [1, 5, 64], hidden.tobytes(), np.ones((1, 5), np.int64))
        return result.as_numpy("text_states").shape == (1, 16, 48)
    except InferenceServerException:
        return False

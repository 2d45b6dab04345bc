"""The launcher's policies, without a server: ports from $CINEMA_PORT_RANGE, the admin-only
APIs, the supervisor's back-off, the client's no-progress bound, which failures it retries
(requests the server never started) and which it may resubmit (a replica that failed)."""

import pytest

from cinema_trt.serving.client import (
    CinemaRequestError,
    ClientOptions,
    GenerationResult,
    ReplicaFailed,
    ServerStalled,
    _Attempts,
    _NotStarted,
    _raise_for,
    no_progress_timeout,
)
from cinema_trt.serving.server import free_port, restriction_args
from cinema_trt.serving.supervisor import RestartPolicy


def test_free_ports_come_from_the_configured_range(monkeypatch):
    monkeypatch.setenv("CINEMA_PORT_RANGE", "18290-18299")
    assert all(18290 <= free_port() <= 18299 for _ in range(20))


@pytest.mark.parametrize("text", ["18100", "a-b", "18200-18100", "0-10"])
def test_a_malformed_port_range_is_named(monkeypatch, text):
    monkeypatch.setenv("CINEMA_PORT_RANGE", text)
    with pytest.raises(ValueError, match="CINEMA_PORT_RANGE"):
        free_port()


def test_model_control_and_http_inference_are_admin_only():
    http, grpc = restriction_args("t0ken", http_inference=False)
    assert http == ("--http-restricted-api=model-repository,shared-memory,trace,logging,"
                    "inference:cinema-admin=t0ken")
    # gRPC inference stays open: the public `cinema` model is decoupled, gRPC only
    assert grpc == ("--grpc-restricted-protocol=model-repository,shared-memory,trace,"
                    "logging:cinema-admin=t0ken")
    assert "inference" not in restriction_args("t", http_inference=True)[0]


def test_restarts_back_off_doubling_up_to_the_cap():
    policy = RestartPolicy(backoff=1.0, max_backoff=30.0)
    assert [policy.delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    with pytest.raises(ValueError, match="backoff <= max_backoff"):
        RestartPolicy(backoff=5.0, max_backoff=1.0)


def test_the_no_progress_bound_grows_with_the_video():
    small = no_progress_timeout({"frames": 5, "height": 32, "width": 32})
    large = no_progress_timeout({"frames": 45, "height": 480, "width": 720})
    assert 60 < small < 61 and large == pytest.approx(60 + 60 * 45 * 480 * 720 / 1e6)
    assert no_progress_timeout({}) == large  # unset dims: the cinema preset's defaults


@pytest.mark.parametrize("message,status,started,retried", [
    ("failed to connect to all addresses", "StatusCode.UNAVAILABLE", False, True),
    ("stage model 'dit' failed: ... Model 'dit' is not ready.", "", False, True),
    ("Stub process 'cinema_0_0' is not healthy.", "StatusCode.INTERNAL", False, True),
    ("Request for unknown model: 'cinema' is not found", "", False, True),
    ("invalid request: steps=0 must be in 1..1000", "", False, False),
    # the balancer or the server cut the stream before any step
    ("Stream removed (RST_STREAM (Received RST_STREAM with error code 8))",
     "StatusCode.CANCELLED", False, True),
    # after progress the request ran: not retried (ReplicaFailed: resubmitted only when
    # ClientOptions.resubmit allows)
    ("stage model 'dit' failed: ... Model 'dit' is not ready.", "", True, False),
])
def test_only_requests_the_server_never_started_are_retried(message, status, started,
                                                            retried):
    state = GenerationResult(progress=[(1, 2)] if started else [])
    with pytest.raises(_NotStarted if retried else CinemaRequestError):
        _raise_for(message, status, state)


@pytest.mark.parametrize("message,status", [
    # a replica killed mid-stream, as the balancer (HAProxy) cuts the stream
    ("Stream removed (RST_STREAM (Received RST_STREAM with error code 8))",
     "StatusCode.UNKNOWN"),
    ("Socket closed", "StatusCode.UNAVAILABLE"),
    # a stage's stub died while the request ran on that replica
    ("stage model 'dit' failed: Stub process 'dit_0_0' is not healthy.", "StatusCode.INTERNAL"),
])
def test_a_started_request_whose_replica_failed_names_the_replica(message, status):
    state = GenerationResult(progress=[(1, 8), (2, 8), (3, 8)], replica="r1")
    with pytest.raises(ReplicaFailed, match=r"^replica r1, after step 3 of 8: the replica "
                                            r"failed: "):
        _raise_for(message, status, state)


def test_a_started_request_that_failed_on_its_own_is_not_the_replicas_fault():
    state = GenerationResult(progress=[(1, 8)], replica="r1")
    with pytest.raises(CinemaRequestError) as caught:
        _raise_for("stage model 'dit' returned non-finite values", "StatusCode.INTERNAL", state)
    assert not isinstance(caught.value, ReplicaFailed)


def test_resubmissions_are_counted_apart_from_retries_of_requests_never_started():
    attempts = _Attempts(ClientOptions(connect_retries=2, retry_backoff=0.5, resubmit=1),
                         "balancer:8001")
    assert attempts.wait_before_next(_NotStarted("not ready")) == 0.5
    failed = ReplicaFailed("replica r0, after step 4 of 40: the replica failed: Socket closed")
    assert attempts.wait_before_next(failed) == 0.5
    assert attempts.failures == [f"ReplicaFailed: {failed}"]
    with pytest.raises(ServerStalled):  # resubmit=1: the second failure is the answer
        attempts.wait_before_next(ServerStalled("no message from replica r1"))
    with pytest.raises(ConnectionError, match="did not start the request in 2 attempts"):
        attempts.wait_before_next(_NotStarted("not ready"))

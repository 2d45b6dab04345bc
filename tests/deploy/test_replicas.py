"""Replicas on test hosts of this machine behind HAProxy (serving/replicas.py), through the
unchanged gRPC client: requests spread over the replicas with streamed progress, and one
replica killed, stopped or cut off mid-generation (issue 21): the balancer stops routing to
it, new requests are served by the others, the generation it was running fails naming it
and is resubmitted by the client's retry policy, giving the same video (seeded), and no
call waits past the no-progress bound. Needs root (network namespaces) and haproxy."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from cinema_trt.serving.client import CinemaClient, ClientOptions
from cinema_trt.serving.faults import wait_for

pytestmark = [pytest.mark.server, pytest.mark.slow]
SMALL = dict(frames=5, height=32, width=32, steps=2, guidance=4.0)
LONG = dict(SMALL, steps=60)  # seconds of denoising: time to hit it mid-way
BOUND = 10.0  # the clients' no-progress bound here
# the balancer: checks every 0.5 s, 2 failures (a check waits up to 1 s) -> DOWN in ~3 s
DOWN_S = 6.0


@pytest.fixture(scope="module")
def replicas(tritonserver_binary, require_binary, missing, tiny_weights, tmp_path_factory):
    from cinema_trt.serving.replicas import ReplicaSet, ReplicaSetConfig
    from cinema_trt.serving.repo import RepositoryOptions, build_repository

    require_binary("haproxy", "apt-get install haproxy")
    require_binary("ip", "apt-get install iproute2")
    if os.geteuid() != 0:
        missing("root (test hosts are network namespaces)", "run the tests as root")
    repo = build_repository(None, tmp_path_factory.mktemp("replicas") / "models", tiny_weights,
                            options=RepositoryOptions(torch_threads=1))
    with ReplicaSet(ReplicaSetConfig(repo, replicas=2, startup_timeout=240)) as running:
        yield running


def _client(replicas, resubmit: int = 0) -> CinemaClient:
    return CinemaClient(replicas.url, ClientOptions(timeout=180, progress_timeout=BOUND,
                                                    connect_retries=6, resubmit=resubmit))


def test_requests_spread_over_the_replicas_with_streamed_progress(replicas, png):
    client = _client(replicas)
    results, threads = [], []
    for seed in range(4):
        threads.append(threading.Thread(target=lambda s=seed: results.append(
            client.stream("a toy", [png], seed=s % 2, **SMALL))))
        threads[-1].start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 4
    assert {r.replica for r in results} == {"r0", "r1"}, "the balancer used one replica"
    assert all(r.progress == [(1, 2), (2, 2)] for r in results)
    # the same weights on every host: a seed's video does not depend on the replica
    by_seed: dict[int, list] = {}
    for result in results:
        by_seed.setdefault(int(result.video.sum()) % 2**31, []).append(result.video)
    assert all(np.array_equal(v[0], w) for v in by_seed.values() for w in v)


def _diagnosis(replicas) -> str:
    balancer = replicas.balancer
    return "\n".join([f"balancer: {balancer.states()}", balancer.log.read_text()[-2000:],
                      *(f"{r.name}:\n{r.log_tail(15)}" for r in replicas.replicas)])


def _restore(replicas, kind: str, replica) -> None:
    if kind == "stop":
        replica.signal(signal.SIGCONT)
    elif kind == "link":
        replica.set_link(True)
    # killed: its supervisor (cinema-trt serve) restarts it
    assert wait_for(lambda: replicas.balancer.states()[replica.name] == "UP", 180) is not None, \
        f"{replica.name} did not come back:\n{replica.log_tail()}"


@pytest.mark.parametrize("kind", ["kill", "stop", "link"])
def test_a_replica_failing_mid_generation_is_resubmitted_elsewhere_with_the_same_video(
        replicas, png, kind):
    client = _client(replicas, resubmit=1)
    expected = client.generate("a toy", [png], seed=7, **LONG)
    steps, outcome = [], {}

    def generate():
        try:
            outcome["result"] = client.stream("a toy", [png], progress=lambda i, n:
                                              steps.append(i), seed=7, **LONG)
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=generate)
    thread.start()
    assert wait_for(lambda: len(steps) >= 3, 60) is not None
    victim = next(r for r in replicas.replicas
                  if int(replicas.balancer.stats()[r.name]["scur"] or 0) > 0)
    begin = time.monotonic()
    if kind == "kill":
        victim.signal(signal.SIGKILL)
    elif kind == "stop":
        victim.signal(signal.SIGSTOP)
    else:
        victim.set_link(False)
    try:
        down = wait_for(lambda: replicas.balancer.states()[victim.name].startswith("DOWN"),
                     DOWN_S)
        assert down is not None, f"the balancer still routes to {victim.name}"
        # a request started now never reaches the failed replica: served by the other
        try:
            fresh = _client(replicas).stream("a toy", [png], seed=1, **SMALL)
        except Exception as error:  # what the balancer and the replicas saw, for the record
            raise AssertionError(f"{error}\n{_diagnosis(replicas)}") from error
        assert fresh.replica != victim.name and fresh.failures == [], (victim.name, fresh)
        thread.join(timeout=3 * BOUND + 120)
        assert not thread.is_alive(), "the call hung"
        assert "error" not in outcome, outcome
        result = outcome["result"]
        (failure,) = result.failures  # one failed attempt, naming the replica, resubmitted
        assert f"replica {victim.name}, after step" in failure, failure
        assert result.replica != victim.name
        assert np.array_equal(result.video, expected), "the resubmission gave another video"
        # the failed attempt ended within the no-progress bound (cut or stalled streams)
        assert time.monotonic() - begin < BOUND + 60
    finally:
        _restore(replicas, kind, victim)


def test_deploy_local_serves_until_sigterm_and_removes_its_hosts(replicas, png):
    import subprocess
    import sys

    from cinema_trt.serving import netns

    repository = replicas.config.repository
    process = subprocess.Popen(
        [sys.executable, "-m", "cinema_trt.cli", "deploy", "local", "--repository",
         str(repository), "--replicas", "1"], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()  # printed once every replica is ready
        assert line.startswith("grpc: "), line
        url = line.split()[1]
        result = CinemaClient(url, ClientOptions(timeout=120)).stream("a toy", [png], **SMALL)
        assert result.replica == "r0" and result.video.shape == (5, 32, 32, 3)
        namespaces = [n for n in _namespaces() if n.startswith(f"{netns.PREFIX}{process.pid}-")]
        assert len(namespaces) == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
        assert not [n for n in _namespaces() if n in namespaces], "a test host was left"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _namespaces() -> list[str]:
    import subprocess

    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]

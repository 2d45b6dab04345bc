"""A short run of the replica fault bench (benchmarks/replica_faults.py): clients through
the balancer while replicas are killed, stopped and cut off. Nothing hangs, nothing is
lost (every video is its seed's), every failed attempt names its replica, every fault is
seen by the balancer, and the replicas serve at the end. The committed multi-minute run is
in benchmarks/results/replica-faults-*.md."""

import os

import pytest

from cinema_trt.benchmarks.replica_faults import (
    FaultRunConfig,
    fault_record,
    markdown,
    run_faults,
)

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_a_short_fault_run_loses_nothing_and_names_every_failed_replica(
        tritonserver_binary, require_binary, missing):
    from cinema_trt.benchmarks.machine import Provenance

    require_binary("haproxy", "apt-get install haproxy")
    if os.geteuid() != 0:
        missing("root (test hosts are network namespaces)", "run the tests as root")
    # one fault of each kind: kill (restart ~30-60 s here), stop and link (10 s outages)
    config = FaultRunConfig(duration=60.0, replicas=2, clients=2, fault_every=4.0,
                            outage_s=10.0, progress_timeout=8.0, seeds=2, seed=3)
    run = Provenance.start()
    result = run_faults(config)
    record = fault_record(config, result, run.block())
    print(markdown(record))
    assert result.counts["hung"] == 0, record
    assert result.counts["lost"] == 0, record
    assert result.unnamed_attempts == 0, record["failed_attempts"]
    assert result.counts["completed"] + result.counts["resubmitted"] > 0, record
    assert {f["kind"] for f in result.faults} >= {"kill", "stop"}, result.faults
    assert all(f["ok"] for f in result.faults), result.faults
    assert result.healthy_at_end

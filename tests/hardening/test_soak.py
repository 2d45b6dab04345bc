"""A short fault soak (benchmarks/soak.py): concurrent sync and asyncio clients while stubs are
killed and hostile requests arrive. No call hangs, no accepted request is lost, every
fault is answered as required, and the server is healthy at the end. The committed
multi-minute run is in benchmarks/results/soak-*.md (`python -m cinema_trt.benchmarks.soak`).
"""

import pytest

from cinema_trt.benchmarks.soak import SoakConfig, markdown, run_soak, soak_record

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_a_short_soak_loses_nothing_and_ends_healthy(tritonserver_binary, tmp_path):
    from cinema_trt.benchmarks.machine import Provenance

    config = SoakConfig(duration=45.0, clients=2, fault_every=4.0, progress_timeout=20.0,
                        seed=1)
    run = Provenance.start()
    result = run_soak(config)
    record = soak_record(config, result, run.block())
    print(markdown(record))
    assert result.counts["hung"] == 0, record
    assert result.counts["lost"] == 0, record
    assert result.counts["succeeded"] > 0, record
    assert result.faults, "the injector never ran"
    assert all(fault["ok"] for fault in result.faults), result.faults
    assert result.healthy_at_end

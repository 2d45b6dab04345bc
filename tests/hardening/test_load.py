"""A bounded concurrency sweep: 1, 2, 4 and 8 clients share a fixed 8 requests per level.

Every request must succeed, within a time cap, with the same video its seed gives when
served alone (concurrency must not mix requests). Throughput and latency percentiles per
level are logged and written to `load.json` in the test's tmp folder; they describe this
machine (2 shared CPU cores), so only failures, not speeds, are asserted.
"""

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cinema_trt.serving.client import CinemaClient, ClientOptions

pytestmark = [pytest.mark.server, pytest.mark.slow]
log = logging.getLogger(__name__)

LEVELS = (1, 2, 4, 8)
REQUESTS_PER_LEVEL = 8
LEVEL_CAP = 90.0  # seconds for one level; ~0.1 s a request alone, ~1 s on a busy machine
PARAMS = dict(frames=5, height=32, width=32, steps=2, guidance=4.0)


def _run_level(url: str, png: bytes, clients: int) -> dict:
    """`clients` threads, each with its own client, drain seeds 0..7; returns the stats."""
    seeds = list(range(REQUESTS_PER_LEVEL))
    lock = threading.Lock()
    latencies, videos, failures = {}, {}, []

    def worker():
        client = CinemaClient(url, ClientOptions(timeout=LEVEL_CAP))
        while True:
            with lock:
                if not seeds:
                    return
                seed = seeds.pop(0)
            start = time.perf_counter()
            try:
                videos[seed] = client.generate("a toy on a table", [png], seed=seed, **PARAMS)
            except Exception as error:  # every failure is reported, none may happen
                failures.append(f"seed {seed}: {type(error).__name__}: {error}")
            latencies[seed] = time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(worker) for _ in range(clients)]
        for future in futures:
            future.result(timeout=LEVEL_CAP)
    wall = time.perf_counter() - start
    ms = np.array(sorted(latencies.values())) * 1000
    return {"clients": clients, "requests": len(latencies), "failures": failures,
            "wall_s": round(wall, 3), "throughput_rps": round(len(latencies) / wall, 2),
            "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 1),
                           "p90": round(float(np.percentile(ms, 90)), 1),
                           "max": round(float(ms.max()), 1)},
            "videos": videos}


def test_concurrency_sweep_serves_every_request_correctly(served, png, tmp_path):
    url = served.endpoints.grpc
    CinemaClient(url).generate("warm-up", [png], **PARAMS)  # first calls build caches
    report, alone = [], None
    for clients in LEVELS:
        stats = _run_level(url, png, clients)
        videos = stats.pop("videos")
        report.append(stats)
        log.info("load: %d clients  %.2f req/s  p50 %.0f ms  p90 %.0f ms  max %.0f ms",
                 clients, stats["throughput_rps"], stats["latency_ms"]["p50"],
                 stats["latency_ms"]["p90"], stats["latency_ms"]["max"])
        assert stats["failures"] == [], stats
        assert stats["requests"] == REQUESTS_PER_LEVEL
        alone = alone or videos  # the 1-client level: every request ran by itself
        for seed, video in videos.items():
            np.testing.assert_array_equal(video, alone[seed], err_msg=f"seed {seed}")
    path = tmp_path / "load.json"
    path.write_text(json.dumps(report, indent=2))
    log.info("load sweep written to %s", path)
    assert served.is_ready()

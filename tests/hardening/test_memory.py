"""No leaked server memory over 50 requests.

RSS is summed over the server's process group: tritonserver plus its six Python-backend
stubs, read from /proc. It is sampled after 10 warm-up requests (allocator caches, the
shared-memory pool and the orchestrator's uncond-text cache fill up there), then after
50 more valid requests interleaved with 50 refused ones (the error path must not leak
either), from 2 concurrent clients.

The bound, 64 MB: measured growth here is +6 to +18 MB (tritonserver's and the
orchestrator's allocator arenas settling under 2 concurrent clients; 200 sequential
requests grow it by < 4 MB), while each valid request carries two 512x512 noise PNGs
(1.6 MB encoded, 1.6 MB decoded in the orchestrator), so leaking a request's inputs or its
decoded references would add >= 80 MB over 50 requests.
"""

import io
import logging
import os
import threading

import numpy as np
import pytest
from PIL import Image

from cinema_trt.serving.client import CinemaClient, CinemaRequestError

pytestmark = [pytest.mark.server, pytest.mark.slow]
log = logging.getLogger(__name__)

BOUND_MB = 64
PARAMS = dict(frames=5, height=32, width=32, steps=2, guidance=4.0)


def group_rss_mb(pgid: int) -> dict[str, float]:
    """VmRSS in MB of every live process in process group `pgid`, keyed by pid."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                # fields after "(comm)": state, ppid, pgrp, ...
                if int(f.read().rsplit(")", 1)[1].split()[2]) != pgid:
                    continue
            with open(f"/proc/{pid}/status") as f:
                rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue  # exited meanwhile, or a kernel thread without VmRSS
        found[pid] = rss_kb / 1024
    return found


def _noise_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    image = np.random.default_rng(seed).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _traffic(url: str, refs: list[bytes], pairs: int, clients: int = 2) -> list[str]:
    """`pairs` valid + `pairs` refused requests from `clients` threads; returns failures."""
    failures = []

    def worker(count):
        client = CinemaClient(url)
        for seed in range(count):
            try:
                client.generate("a toy", refs, seed=seed, **PARAMS)
            except Exception as error:  # collected: a valid request must not fail
                failures.append(f"{type(error).__name__}: {error}")
            try:
                client.generate("a toy", [refs[0], b"\x89PNG corrupt"], **PARAMS)
                failures.append("a corrupt reference was accepted")
            except CinemaRequestError:
                pass

    threads = [threading.Thread(target=worker, args=(pairs // clients,)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    return failures


def test_fifty_requests_do_not_grow_server_memory_beyond_the_bound(served):
    url, pgid = served.endpoints.grpc, served.pid
    refs = [_noise_png(0), _noise_png(1)]
    assert _traffic(url, refs, pairs=10) == []
    before = group_rss_mb(pgid)
    assert len(before) == 7, before  # tritonserver + 6 stubs
    assert _traffic(url, refs, pairs=50) == []
    after = group_rss_mb(pgid)
    assert set(after) == set(before), "a server process died or was replaced"
    growth = sum(after.values()) - sum(before.values())
    log.info("server RSS %.0f MB -> %.0f MB over 50 requests (%+.1f MB; per process %s)",
             sum(before.values()), sum(after.values()), growth,
             {pid: round(after[pid] - before[pid], 1) for pid in after})
    assert growth < BOUND_MB, growth

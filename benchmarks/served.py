"""The same request through a real Triton server, over gRPC, as a client would send it.

Serving overhead = served latency / in-process latency of the same variant: the server's
stage models run what the in-process pipeline ran (python backend with runtime torch, ort
or tensorrt, from the variant's `ServedSpec`), so the ratio isolates the serving path:
the client, gRPC, request decoding, BLS calls between processes and tensor hand-offs.

The served request streams its frames (`stream_frames`), as `cinema-trt generate --url`
does, and each call also records its time to first frame: the wait until the first decoded
chunk reaches the client, against the whole request's latency.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cinema_trt.models.pipeline import GenerationRequest
from cinema_trt.serving.protocol import PARAMETERS

from .config import BenchConfig
from .timing import NS_PER_MS
from .variants import ServedSpec

if TYPE_CHECKING:
    from cinema_trt.models.factory import CinemaModels
    from cinema_trt.serving.client import CinemaClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedSession:
    """A running server and one call that sends the benchmark request to it."""

    call: Callable[[], object]
    startup_s: float  # save weights + build repository + start the server until ready
    backend: str
    placement: str
    # ms from each call's start until its first frames arrived, in call order (warm-up
    # calls included: the timed ones are the last `runs`)
    first_frame_ms: list[float] = field(default_factory=list)

    def info(self) -> dict:
        return {"startup_s": round(self.startup_s, 1), "backend": self.backend,
                "placement": self.placement}


def _streaming_call(client: CinemaClient, request: GenerationRequest,
                    first_frame_ms: list[float]) -> Callable[[], object]:
    """One streamed request; appends its time to first frame to `first_frame_ms`."""
    params = {name: getattr(request, name) for name in PARAMETERS}  # what a client sends

    def call() -> object:
        start = time.perf_counter_ns()
        first: list[float] = []

        def on_frames(chunk) -> None:
            if not first:
                first.append((time.perf_counter_ns() - start) / NS_PER_MS)

        result = client.stream(request.prompt, request.refs, on_frames=on_frames, **params)
        first_frame_ms.append(first[0])
        return result

    return call


@contextlib.contextmanager
def served_session(models: CinemaModels, request: GenerationRequest, bench: BenchConfig,
                   spec: ServedSpec) -> Iterator[ServedSession]:
    """A Triton server on a fresh repository of `models` served as `spec`, stopped on exit.

    Time `session.call` with the host clock: the work happens in other processes, which
    CUDA events recorded here would not see. Warm-up calls also fill the orchestrator's
    cache of the unconditional text features, as the in-process pipeline's warm-up does.
    """
    from cinema_trt.models.factory import save_models
    from cinema_trt.serving.client import CinemaClient, ClientOptions
    from cinema_trt.serving.repo import RepositoryOptions, build_repository
    from cinema_trt.serving.server import ServerConfig, TritonServer
    from cinema_trt.serving.triton_config import Placement

    gpu = bench.device.startswith("cuda")
    index = int(bench.device.split(":")[1]) if ":" in bench.device else 0
    placement = Placement("gpu", 1, (index,)) if gpu else Placement()
    # one request at a time: the benchmark sends sequentially, and a second orchestrator
    # worker would keep its own (cold) cache of the unconditional branch
    options = RepositoryOptions(backend="python", runtime=spec.runtime,
                                stage_placement=placement, max_concurrency=1,
                                torch_threads=bench.threads)
    with tempfile.TemporaryDirectory(prefix="cinema-bench-serve-") as tmp:
        start = time.perf_counter()
        weights = save_models(models, Path(tmp) / "weights")
        repo = build_repository(models.config, Path(tmp) / "models", weights,
                                spec.artifacts, options, spec.export_dir)
        with TritonServer(ServerConfig(repo, startup_timeout=600)) as server:
            client = CinemaClient(server.endpoints.grpc, ClientOptions(timeout=3600))
            first_frame_ms: list[float] = []
            yield ServedSession(
                _streaming_call(client, request, first_frame_ms),
                time.perf_counter() - start, f"python/{spec.runtime}",
                placement.kind + (f":{index}" if gpu else ""), first_frame_ms)

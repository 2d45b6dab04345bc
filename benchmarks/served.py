"""The same request through a real Triton server, over gRPC, as a client would send it.

Serving overhead = served latency / in-process latency of the same variant: the server's
stage models run what the in-process pipeline ran (python backend with runtime torch, ort
or tensorrt, from the variant's `ServedSpec`), so the ratio isolates the serving path:
the client, gRPC, request decoding, BLS calls between processes and tensor hand-offs.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cinema_trt.models.pipeline import GenerationRequest

from .config import BenchConfig
from .variants import ServedSpec

if TYPE_CHECKING:
    from cinema_trt.models.factory import CinemaModels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedSession:
    """A running server and one call that sends the benchmark request to it."""

    call: Callable[[], object]
    startup_s: float  # save weights + build repository + start the server until ready
    backend: str
    placement: str

    def info(self) -> dict:
        return {"startup_s": round(self.startup_s, 1), "backend": self.backend,
                "placement": self.placement}


def _request_params(request: GenerationRequest) -> dict:
    return dict(frames=request.frames, height=request.height, width=request.width,
                steps=request.steps, guidance=request.guidance, seed=request.seed,
                fps=request.fps)


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
            params = _request_params(request)
            yield ServedSession(
                lambda: client.generate(request.prompt, request.refs, **params),
                time.perf_counter() - start, f"python/{spec.runtime}",
                placement.kind + (f":{index}" if gpu else ""))

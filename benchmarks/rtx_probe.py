"""The TensorRT-RTX builder's figures for an ONNX file that is no export folder (a graph
made by a benchmark: the chunked VAE decoder's step, the INT4 MLLM text graph), on a CPU.

`cinema-trt build` (engines/) builds exports, reading what they are from their manifests;
these graphs have none until the stage registry names them, so this builds the file as it
is: strongly typed, one profile, DETAILED verbosity, the same log parsing
(engines/report.py) for the memory figures and the layer precisions.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from cinema_trt.models.backends import TENSORRT_RTX
from cinema_trt.models.precision import Precision

# the memory plan's workspace limit (benchmarks/memory_run.py says why: the activation
# figure is the graph's need, and a graph needing more than the limit does not build)
WORKSPACE_BYTES = 80 * 2**30
# the oldest RTX architecture with FP8 (the cards the compressed plans are for)
TARGET = TENSORRT_RTX.targets_for(Precision.FP8)[0]


def rtx_build_memory(graph: Path, profiles: dict[str, tuple], target: str = TARGET
                     ) -> dict[str, Any]:
    """Build `graph` with TensorRT-RTX for `target` (no GPU needed), strongly typed, one
    profile {input: (min, opt, max)}; the builder's memory figures and layer precisions."""
    from cinema_trt.engines.deps import require_backend
    from cinema_trt.engines.progress import TENSORRT_LOG
    from cinema_trt.engines.report import parse_layers, parse_memory
    from cinema_trt.engines.trt_build import trt_logger

    trt = require_backend("tensorrt-rtx")
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):
        raise RuntimeError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.num_compute_capabilities = 1
    config.set_compute_capability(getattr(trt.ComputeCapability, target.upper()), 0)
    profile = builder.create_optimization_profile()
    for name, shapes in profiles.items():
        profile.set_shape(name, *shapes)
    config.add_optimization_profile(profile)
    with TENSORRT_LOG.capture() as messages:
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT-RTX could not build {graph}")
    layers = parse_layers(messages)
    return {**parse_memory(messages), "plan_bytes": len(memoryview(plan)),
            "layers_by_precision": dict(Counter(row.compute_dtype for row in layers))}

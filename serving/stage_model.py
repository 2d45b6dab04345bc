"""Python-backend stage model: one CINEMA stage behind Triton, on torch, ORT or TensorRT.

The generated `model.py` of every stage imports `TritonPythonModel` from here; the
`runtime` parameter of its config.pbtxt picks what runs the stage:

    torch      <v>/ is a partial weights folder (models/factory.py layout): cinema_config.json
               plus only the files this stage needs, so each stub loads one stage
    ort        <v>/onnx/<export stage>/ (model.onnx + manifest.json) served by ONNX Runtime;
               each graph's sha256 is checked against its manifest before loading
    tensorrt   <v>/engines/<export stage>/ (plan + manifest, checked by TensorRTRunner), and
               for a split stage <v>/onnx/<glue graph>/ with the glue between its engines;
               plans of either TensorRT backend (TensorRT-RTX plans are served only here:
               Triton's tensorrt_plan backend cannot load them)

A tensorrt stage's `weight_streaming_budget` parameter ({graph: bytes}, written by
`cinema-trt repo --memory-budget / --weight-streaming-budget`, serving/repo_memory.py) is the
weights an engine built with --weight-streaming keeps on the GPU; TensorRT streams the rest.

The shared layout (serving/layouts.py) lays every stage out the same way in the `cinema`
model's own version folder, and `load_runners` opens them all in its process.

The bundled server (nvidia-pytriton wheel) has only the Python backend, so `ort` and
`tensorrt` here are how it serves exported graphs and built engines.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from cinema_trt.models.backends import ORT, RUNTIMES, TENSORRT, TORCH
from cinema_trt.models.factory import read_weights_config, torch_stage_runner
from cinema_trt.models.presets import CinemaConfig
from cinema_trt.models.runner import Runner, compute_dtype
from cinema_trt.models.stages import STAGE_NAMES
from cinema_trt.models.stages import stage as get_stage
from cinema_trt.serving.bls import from_triton, log_to_stderr, pb_utils, to_triton
from cinema_trt.serving.stage_checks import (
    InvalidInput,
    check_declared,
    check_values,
    parse_limits,
)

log = logging.getLogger(__name__)

ONNX_FOLDER = "onnx"  # <v>/onnx/<export stage>/
ENGINE_FOLDER = "engines"  # <v>/engines/<export stage>/
# config.pbtxt parameter: {graph: bytes of its weights kept on the GPU} (weight streaming)
STREAMING_PARAMETER = "weight_streaming_budget"


def _ort_runners(folder: Path, stages: Sequence[str], config: CinemaConfig, device: str
                 ) -> dict[str, Runner]:
    from cinema_trt.export.manifest import ExportExpectation, check_export
    from cinema_trt.export.ort import ort_runners

    onnx = folder / ONNX_FOLDER
    for name in stages:
        for graph in get_stage(name).graphs:
            with _naming(name, onnx / graph.name):
                check_export(onnx / graph.name, ExportExpectation(config=config))
    # a CPU instance stays on the CPU even where onnxruntime-gpu could use CUDA; a GPU
    # instance takes ORT's default order (CUDA first). ORT picks CUDA device 0 by default.
    providers = ("CPUExecutionProvider",) if device == "cpu" else None
    with _naming(", ".join(stages), onnx):
        return ort_runners(onnx, providers)


def _tensorrt_runners(folder: Path, stages: Sequence[str], device: str,
                      budgets: Mapping[str, int] | None) -> dict[str, Runner]:
    from cinema_trt.engines.trt_runtime import tensorrt_runners

    if device == "cpu":
        raise ValueError(f"stages {list(stages)}: runtime tensorrt needs a GPU instance; build "
                         "the repository with a GPU placement (cinema-trt repo --gpus 0)")
    # TensorRTRunner checks each plan's sha256 and TensorRT version against its manifest;
    # the engines of one folder share one activation region (SharedDeviceMemory)
    return tensorrt_runners(folder / ENGINE_FOLDER, export_dir=folder / ONNX_FOLDER,
                            device=device, weight_streaming_budgets=budgets)


_WHERE = "cinema_load_context"  # the attribute `_naming` sets on a load failure


@contextlib.contextmanager
def _naming(stage: str, path: Path):
    """A load failure records the stage and the file it was loading (`load_failure` puts
    them in the message); the exception keeps its type, so callers catch what they did.
    (An attribute, not `add_note`: Python 3.10 is supported.)"""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as error:
        if not hasattr(error, _WHERE):  # the innermost stage and file
            setattr(error, _WHERE, f"stage {stage!r} failed to load from {path}")
        raise


def load_failure(error: BaseException) -> str:
    """The message of a `load_runners` failure, the stage and file first (Triton's model
    load error shows the message only)."""
    where = getattr(error, _WHERE, None)
    return "; ".join([*([where] if where else []), f"{type(error).__name__}: {error}"])


def load_runners(folder: str | Path, stages: Sequence[str] = STAGE_NAMES,
                 device: str | torch.device = "cpu", runtime: str = TORCH,
                 weight_streaming_budgets: Mapping[str, int] | None = None
                 ) -> dict[str, Runner]:
    """{stage: runner} of `stages` from one version folder (layouts: module doc): a stage
    model's (one stage) or, in the shared layout, the `cinema` model's (every stage, one
    process; TensorRT engines with one activation region). `weight_streaming_budgets`
    ({graph: bytes resident}) is for runtime tensorrt only."""
    folder = Path(folder)
    config = read_weights_config(folder)
    if weight_streaming_budgets and runtime != TENSORRT.name:
        raise ValueError(f"stages {list(stages)}: weight-streaming budgets are for runtime "
                         f"{TENSORRT.name}, not {runtime}")
    if runtime == ORT.name:
        runners = _ort_runners(folder, stages, config, str(device))
    elif runtime == TENSORRT.name:
        with _naming(", ".join(stages), folder / ENGINE_FOLDER):
            runners = _tensorrt_runners(folder, stages, str(device), weight_streaming_budgets)
    elif runtime == TORCH:
        runners = {}
        for name in stages:
            with _naming(name, folder / get_stage(name).weights_entry):
                runners[name] = torch_stage_runner(folder, name, config, device)
    else:
        raise ValueError(f"runtime={runtime!r} must be one of {list(RUNTIMES)}")
    missing = [name for name in stages if name not in runners]
    if missing:
        raise FileNotFoundError(f"stages {missing}: no complete {runtime} artifacts under "
                                f"{folder} (found {sorted(runners)}); rebuild the repository "
                                "(cinema-trt repo)")
    return {name: runners[name] for name in stages}


def load_stage_runner(folder: str | Path, stage: str, device: str | torch.device = "cpu",
                      runtime: str = TORCH,
                      weight_streaming_budgets: Mapping[str, int] | None = None) -> Runner:
    """The runner of `stage` from a stage model's version folder (`load_runners`)."""
    return load_runners(folder, (stage,), device, runtime, weight_streaming_budgets)[stage]


def parse_budgets(text: str) -> dict[str, int]:
    """The `weight_streaming_budget` parameter (serving/repo.py writes it): {graph: bytes}."""
    return {str(graph): int(budget) for graph, budget in json.loads(text).items()}


def instance_device(args: dict) -> str:
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{args['model_instance_device_id']}"
    return "cpu"


class TritonPythonModel:
    """Triton entry points; `parameters.stage` and `parameters.runtime` in config.pbtxt
    name the stage and what runs it (runtime defaults to torch)."""

    def initialize(self, args: dict) -> None:
        log_to_stderr()
        model_config = json.loads(args["model_config"])
        parameters = model_config.get("parameters", {})
        self.stage = parameters["stage"]["string_value"]
        runtime = parameters.get("runtime", {}).get("string_value", TORCH)
        threads = int(parameters.get("torch_threads", {}).get("string_value", "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        # written by the repository builder (serving/stage_checks.py symbol_limits)
        if "input_limits" not in parameters:
            raise ValueError(f"stage {self.stage!r}: config.pbtxt has no input_limits "
                             "parameter; rebuild the repository (cinema-trt repo)")
        self.limits = parse_limits(parameters["input_limits"]["string_value"])
        folder = Path(args["model_repository"]) / args["model_version"]
        device = instance_device(args)
        budgets = parse_budgets(parameters.get(STREAMING_PARAMETER, {}).get("string_value",
                                                                             "{}"))
        self.runner = load_stage_runner(folder, self.stage, device, runtime, budgets)
        config = read_weights_config(folder)
        # the graph's own I/O types, as config.pbtxt declares them (serving/repo.py): an
        # fp16/bf16 decoder takes its chunk state in its compute dtype
        self.spec = get_stage(self.stage).exported_spec(config, compute_dtype(self.runner))
        self.vocab_size = config.mllm.vocab_size
        log.info("stage %s loaded from %s (%s on %s)", self.stage, folder, runtime, device)

    def execute(self, requests):
        pb = pb_utils()
        responses = []
        for request in requests:
            try:
                tensors = {name: pb.get_input_tensor_by_name(request, name)
                           for name in self.spec.input_names}
                # shapes first: bounded before the data is read (serving/stage_checks.py)
                check_declared(self.spec, {n: t.shape() for n, t in tensors.items()},
                               self.limits)
                inputs = {name: from_triton(tensor) for name, tensor in tensors.items()}
                check_values(self.spec, inputs, self.vocab_size)
                outputs = self.runner.run(inputs)
                responses.append(pb.InferenceResponse(
                    [to_triton(name, outputs[name]) for name in self.spec.output_names]))
            except InvalidInput as error:  # the client's fault: 400 / INVALID_ARGUMENT
                responses.append(pb.InferenceResponse(error=pb.TritonError(
                    f"invalid request: {error}", pb.TritonError.INVALID_ARG)))
            except (ValueError, RuntimeError, KeyError) as error:
                # shape or content errors of this request: report them, keep serving
                responses.append(pb.InferenceResponse(
                    error=pb.TritonError(f"{self.stage}: {type(error).__name__}: {error}")))
        return responses

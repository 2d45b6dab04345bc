"""`TensorRTRunner`: a built engine behind the `Runner` protocol (models/runner.py), for
either TensorRT backend (models/backends.py; the manifest names it).

Lifecycle: load (the runner's GPU selected, manifest validated against the backend, its
version and the GPU's architecture, plan hash checked) -> allocate (one buffer per I/O
tensor at its largest shape, optional scratch memory shared with the other stages'
engines: engines/trt_memory.py) -> run (shapes checked
against the profile, inputs copied once into the buffers, `execute_async_v3` on the
runner's stream) -> optionally replay a CUDA graph captured once per input-shape bucket.

TensorRT-RTX JIT-compiles its kernels for this GPU on first run; an `IRuntimeConfig`
carries a runtime cache of them, loaded from and saved to `runtime.cache` beside the plan
(so a second process starts without compiling), and its own CUDA-graph strategy, used
instead of capturing graphs here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from cinema_trt.export.manifest import MANIFEST_FILE, Manifest, read_manifest, stage_folders
from cinema_trt.export.stage_runners import stage_runners
from cinema_trt.models.backends import BACKENDS, get_backend
from cinema_trt.models.dtypes import lookup
from cinema_trt.models.fileio import atomic_write
from cinema_trt.models.runner import Runner, Tensors
from cinema_trt.models.stages import STAGES, stage_of

from .deps import require_backend, runtime_info
from .manifest import (
    EngineMismatchError,
    built,
    check_streaming_budget,
    validate_manifest,
    verify_plan,
)
from .shape_check import check_input_shapes
from .trt_build import trt_logger
from .trt_memory import SharedDeviceMemory

log = logging.getLogger(__name__)

RUNTIME_CACHE_FILE = "runtime.cache"  # TensorRT-RTX's JIT-compiled kernels, beside the plan


@dataclass
class _Bucket:
    """Views of the preallocated buffers at one set of input shapes, and its CUDA graph."""

    inputs: Tensors
    outputs: Tensors
    graph: torch.cuda.CUDAGraph | None = None


class TensorRTRunner:
    """Runs `<engine_dir>/model.plan` built by `cinema-trt build`."""

    def __init__(self, engine_dir: str | os.PathLike, device: str | torch.device = "cuda",
                 cuda_graph: bool = False, shared_memory: SharedDeviceMemory | None = None,
                 weight_streaming_budget: int | None = None):
        folder = Path(engine_dir)
        self.manifest: Manifest = read_manifest(folder)
        self.name = self.manifest.stage
        self.build = built(self.manifest, folder)
        self.backend = get_backend(self.build.runtime)
        if not self.backend.plans:
            raise EngineMismatchError(
                f"{folder} holds an {self.backend.display} model, not a TensorRT engine; "
                f"open it with its own runner, or build an engine with --runtime "
                f"{' / '.join(b.name for b in BACKENDS.values() if b.plans)}")
        self._trt = require_backend(self.backend.name)
        self.device = torch.device(device)
        self.cuda_graph = cuda_graph
        self._shared = shared_memory
        self.runtime_cache_path = folder / RUNTIME_CACHE_FILE
        # the engine, its context and every buffer belong to this GPU: TensorRT uses the
        # current device, so select it before deserializing (and for the manifest check)
        with torch.cuda.device(self.device):
            self._load(folder, weight_streaming_budget)
        self._buckets: dict[tuple, _Bucket] = {}

    # --- setup --------------------------------------------------------------------------

    def _load(self, folder: Path, weight_streaming_budget: int | None) -> None:
        trt = self._trt
        validate_manifest(self.manifest, runtime_info(self.backend.name))
        plan = verify_plan(folder, self.manifest)
        self._runtime = trt.Runtime(trt_logger(trt))
        if self.build.extra.get("trt_plugins"):
            # plugin nodes (the Triton attention) must be registered before deserialising
            from cinema_trt.kernels.trt_plugin import register_plugins

            register_plugins(self.backend.module)
        self.engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{plan}: TensorRT could not deserialize the plan (see the "
                               f"log); rebuild with:\n  {self.build.rebuild_command}")
        if weight_streaming_budget is not None:
            check_streaming_budget(self.build, self.name, weight_streaming_budget)
            # bytes of weights kept on the GPU; TensorRT streams the rest from host memory
            # on every call. Set before the context: its scratch memory depends on it
            self.engine.weight_streaming_budget_v2 = weight_streaming_budget
        self._runtime_config = self._make_runtime_config()
        self._create_context()
        self._allocate()

    def _make_runtime_config(self):
        """TensorRT-RTX: the runtime cache (loaded from beside the plan when this GPU and
        driver match it) and, with cuda_graph, its whole-graph CUDA-graph strategy."""
        if not self.backend.runtime_cache:
            return None
        trt = self._trt
        config = self.engine.create_runtime_config()
        self.runtime_cache = config.create_runtime_cache()
        if self.runtime_cache_path.is_file():
            data = self.runtime_cache_path.read_bytes()
            if self.runtime_cache.deserialize(data):
                log.info("%s: loaded runtime cache %s (%d bytes)", self.name,
                         self.runtime_cache_path, len(data))
            else:  # another GPU, driver or TensorRT-RTX version: compile afresh
                log.warning("%s: runtime cache %s does not match this GPU/driver; "
                            "recompiling", self.name, self.runtime_cache_path)
        config.set_runtime_cache(self.runtime_cache)
        if self.cuda_graph:
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        if self._shared is not None:
            config.set_execution_context_allocation_strategy(
                trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        return config

    def save_runtime_cache(self) -> Path | None:
        """Write the kernels compiled so far to `runtime.cache` beside the plan (TensorRT-RTX;
        a read-only engine folder only warns)."""
        if self._runtime_config is None:
            return None
        try:
            return atomic_write(self.runtime_cache_path, memoryview(self.runtime_cache.serialize()))
        except OSError as error:
            log.warning("%s: could not save the runtime cache: %s", self.name, error)
            return None

    @property
    def captures_graphs(self) -> bool:
        """Whether this runner captures CUDA graphs itself (TensorRT-RTX does it inside)."""
        return self.cuda_graph and self._runtime_config is None

    def _create_context(self) -> None:
        trt, engine = self._trt, self.engine
        if self._runtime_config is not None:
            self.context = engine.create_execution_context(self._runtime_config)
        elif self._shared is None:
            self.context = engine.create_execution_context()
        else:
            self.context = engine.create_execution_context(
                trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        self.stream = torch.cuda.Stream(self.device) if self._shared is None \
            else self._shared.stream
        if self._shared is not None:
            # v2 (TensorRT >= 10.1) may legitimately be 0 for an engine without scratch
            size = getattr(engine, "device_memory_size_v2", None)
            if size is None:
                size = engine.device_memory_size
            self._shared.reserve(int(size))
            self._memory_generation = -1
        if self.context is None:
            raise RuntimeError(f"{self.name}: could not create a TensorRT execution context "
                               "(out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) != mode]
        self.dtypes = {n: lookup(engine.get_tensor_dtype(n)).torch for n in names}
        self.ignored_inputs = set(self.build.extra.get("unused_inputs", []))

    def _allocate(self) -> None:
        """One buffer per I/O tensor at its largest shape; buckets view into them."""
        for name in self.input_names:
            self.context.set_input_shape(name, self.build.profiles[name]["max"])
        self._max_buffers: Tensors = {}
        for name in self.input_names + self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            numel = int(torch.Size(shape).numel())
            self._max_buffers[name] = torch.empty(max(numel, 1), dtype=self.dtypes[name],
                                                  device=self.device)

    # --- running ------------------------------------------------------------------------

    def _prepare(self, inputs: Mapping[str, torch.Tensor]) -> Tensors:
        """The engine's inputs, in its order, shapes checked; not copied (run() copies each
        once, straight into its buffer, converting device and dtype on the way)."""
        feeds = {k: v for k, v in inputs.items() if k not in self.ignored_inputs}
        check_input_shapes(self.manifest, {k: tuple(v.shape) for k, v in feeds.items()})
        return {name: feeds[name] for name in self.input_names}

    def _bucket(self, feeds: Tensors) -> _Bucket:
        key = tuple(tuple(t.shape) for t in feeds.values())
        bucket = self._buckets.get(key)
        if bucket is None:
            for name, tensor in feeds.items():
                self.context.set_input_shape(name, tuple(tensor.shape))
            views = {}
            for name in self.input_names + self.output_names:
                shape = tuple(feeds[name].shape) if name in feeds \
                    else tuple(self.context.get_tensor_shape(name))
                views[name] = self._max_buffers[name][:torch.Size(shape).numel()].view(shape)
            bucket = self._buckets[key] = _Bucket(
                {n: views[n] for n in self.input_names}, {n: views[n] for n in self.output_names})
        return bucket

    def _point_memory(self) -> None:
        if self._shared is not None and self._memory_generation != self._shared.generation:
            if hasattr(self.context, "set_device_memory"):  # TensorRT >= 10.1
                self.context.set_device_memory(self._shared.pointer, self._shared.nbytes)
            else:
                self.context.device_memory = self._shared.pointer
            self._memory_generation = self._shared.generation
            for bucket in self._buckets.values():  # graphs captured the old address
                bucket.graph = None

    def _enqueue(self, bucket: _Bucket) -> None:
        for name, tensor in {**bucket.inputs, **bucket.outputs}.items():
            if name in bucket.inputs:
                self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"{self.name}: TensorRT execution failed (see the log)")

    @torch.inference_mode()
    def run(self, inputs: Mapping[str, torch.Tensor]) -> Tensors:
        with torch.cuda.device(self.device):  # the context's GPU, whatever is current
            feeds = self._prepare(inputs)
            new_shapes = tuple(tuple(t.shape) for t in feeds.values()) not in self._buckets
            bucket = self._bucket(feeds)
            caller = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(caller)  # inputs were produced on the caller's stream
            with torch.cuda.stream(self.stream):
                self._point_memory()
                for name, tensor in feeds.items():
                    bucket.inputs[name].copy_(tensor, non_blocking=True)
                if bucket.graph is not None:
                    bucket.graph.replay()
                else:
                    # also the first step of a capture: TensorRT finishes shape-dependent
                    # setup lazily, and that setup must not be recorded into the graph
                    self._enqueue(bucket)
                    if self.captures_graphs:
                        graph = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(graph, stream=self.stream):
                            self._enqueue(bucket)
                        bucket.graph = graph
            caller.wait_stream(self.stream)
            if new_shapes and self._runtime_config is not None:
                # TensorRT-RTX compiled kernels for these shapes: keep them for the next start
                self.stream.synchronize()
                self.save_runtime_cache()
            # copies: the buffers are reused by the next call (the pipeline keeps the MLLM's
            # conditional output while it runs the unconditional one)
            return {name: tensor.clone() for name, tensor in bucket.outputs.items()}


def tensorrt_runners(engine_dir: str | os.PathLike, export_dir: str | os.PathLike | None = None,
                     share_memory: bool = True, device: str | torch.device = "cuda",
                     weight_streaming_budgets: Mapping[str, int] | None = None
                     ) -> dict[str, Runner]:
    """A runner per built stage under `engine_dir`, keyed by pipeline stage name, with the
    CUDA graphs its stage asks for (models/stage.py `Stage.cuda_graph`).

    A split stage built as its graphs is composed into one runner with the glue the
    exporter saved in `<export_dir>/<stage.glue>` (embeddings, HF config).
    `weight_streaming_budgets`: {graph: bytes of its weights kept on the GPU} for engines
    built with --weight-streaming.
    """
    engine_dir = Path(engine_dir)
    found = {p.name: p for p in stage_folders(engine_dir)}
    if not found:
        raise FileNotFoundError(f"no engines (<stage>/{MANIFEST_FILE}) under {engine_dir}; "
                                "run `cinema-trt build` first")
    budgets = dict(weight_streaming_budgets or {})
    unknown = sorted(set(budgets) - set(found))
    if unknown:
        raise ValueError(f"weight-streaming budgets for {unknown}, which have no engine under "
                         f"{engine_dir} (engines: {sorted(found)})")
    shared = SharedDeviceMemory(device) if share_memory else None

    def load(graph: str) -> TensorRTRunner:
        return TensorRTRunner(found[graph], device, stage_of(graph).cuda_graph, shared,
                              weight_streaming_budget=budgets.get(graph))

    split = [s.name for s in STAGES if s.split and {g.name for g in s.graphs} <= set(found)]
    if split and export_dir is None:
        raise ValueError(f"{split} were built as their graphs; pass export_dir (the ONNX "
                         "folder) for the glue between them")
    return stage_runners(found, load, glue=export_dir)

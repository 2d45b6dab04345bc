"""ONNX Runtime runners: any exported stage behind the `Runner` interface.

`OrtRunner` validates every call against the stage's manifest (names, dtypes, ranks, fixed
dims) before ONNX Runtime sees it, so a wrong tensor fails with the stage and tensor named
instead of an ORT shape error deep inside the graph. `ort_runners` opens a whole export
folder, or the output of `cinema-trt build --runtime ort` (graphs optimized ahead of time,
same layout, its manifest the export's plus `build`), so `CinemaPipeline` runs entirely on
ONNX Runtime.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from cinema_trt.models.dtypes import lookup
from cinema_trt.models.precision import ORT_NO_BF16
from cinema_trt.models.runner import Runner, Tensors

from .manifest import MANIFEST_FILE, MODEL_FILE, Manifest, read_manifest, stage_folders

logger = logging.getLogger(__name__)

# CUDA before CPU when present. TensorRT is never picked implicitly: its execution provider
# builds an engine inside session creation (minutes for a large stage); engines/ is the
# TensorRT path. Ask for it explicitly with providers=("TensorrtExecutionProvider", ...).
CPU_PROVIDER = "CPUExecutionProvider"
AUTO_PROVIDERS = ("CUDAExecutionProvider", CPU_PROVIDER)
# `build --runtime ort` optimizes for the CPU provider (level ALL adds CPU-only layouts and
# fused ops), so a built graph runs there unless providers are given explicitly
BUILT_PROVIDERS = (CPU_PROVIDER,)


def _check_single_onnxruntime() -> None:
    """onnxruntime and onnxruntime-gpu install the same module: with both, whichever was
    installed last silently wins and provider lists lie. Say so once, at import."""
    installed = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(dist)
            installed.append(dist)
        except metadata.PackageNotFoundError:
            continue
    if len(installed) > 1:
        logger.warning("both onnxruntime and onnxruntime-gpu are installed; they ship the "
                       "same module and overwrite each other. Keep one: `pip uninstall "
                       "onnxruntime` for GPU use, or `pip uninstall onnxruntime-gpu`.")


_check_single_onnxruntime()


def available_providers(requested: Sequence[str] | None = None) -> list[str]:
    """`requested` if given (each must be available), else the AUTO_PROVIDERS present."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested is None:
        return [p for p in AUTO_PROVIDERS if p in available]
    missing = [p for p in requested if p not in available]
    if missing:
        raise ValueError(f"ONNX Runtime providers {missing} are not available here "
                         f"(available: {available}); install onnxruntime-gpu for CUDA / "
                         f"TensorRT, or pass providers=None for the default")
    return list(requested)


def _check_build(path: Path, manifest: Manifest, version: str) -> None:
    """A build folder ONNX Runtime can run: an ORT build, optimized by this ORT version (the
    rule engines/manifest.py's `validate_manifest` applies to every engine; ORT itself warns
    that a level-ALL graph belongs to the environment that optimized it)."""
    build = manifest.build
    assert build is not None, "OrtRunner checks build folders only"
    if not manifest.onnxruntime_runs:
        raise ValueError(f"{path} is a {build.runtime} engine, which ONNX Runtime cannot "
                         f"run; point at the export folder or a `cinema-trt build --runtime "
                         f"ort` folder (TensorRT engines load with "
                         f"cinema_trt.engines.trt_runtime.tensorrt_runners)")
    if build.runtime_version != version:
        raise ValueError(f"{path}: optimized by ONNX Runtime {build.runtime_version} but this "
                         f"process has {version}; saved optimized graphs may use that "
                         f"version's fused ops. Rebuild it here with:\n  "
                         f"{build.rebuild_command}")


class OrtRunner:
    """Runs a stage folder's graph with ONNX Runtime; torch tensors in and out.

    The folder is an export (`model.onnx`) or a `build --runtime ort` output (its optimized
    graph); either way its manifest (the export's record) describes the I/O.
    Inputs may live on any device; they are copied to host memory (numpy) and the outputs
    come back as CPU tensors. That copy is the price of a runtime-agnostic interface; the
    zero-copy GPU path is the TensorRT runner in engines/.
    """

    def __init__(self, stage_dir: str | os.PathLike, providers: Sequence[str] | None = None,
                 threads: int = 0, manifest: Manifest | None = None):
        """`manifest` defaults to the one in `<stage_dir>/manifest.json` (the exporter passes
        the one it is about to write, to validate the graph before the folder is complete)."""
        import onnxruntime as ort

        self.stage_dir = Path(stage_dir)
        self.manifest: Manifest = manifest or read_manifest(self.stage_dir)
        if self.manifest.build is not None:
            _check_build(self.stage_dir, self.manifest, ort.__version__)
            providers = BUILT_PROVIDERS if providers is None else providers
        self.model_path = self.stage_dir / self.manifest.model_file
        if not self.model_path.is_file():
            raise FileNotFoundError(f"{self.model_path} is missing beside its manifest; "
                                    f"re-export (or rebuild) the stage")
        self.name = self.manifest.stage
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ORT's default (one per physical core)
        options.log_severity_level = 3  # errors only: ORT warns about every unused initializer
        self.providers = available_providers(providers)
        if self.manifest.compute_dtype == "bfloat16" and self.providers[0] == CPU_PROVIDER:
            raise ValueError(f"{self.stage_dir}: a bf16 export, and {ORT_NO_BF16} (MatMul, "
                             f"Mul, Where); run it with TensorRT (`cinema-trt build "
                             f"--precision bf16`), or export with --dtype fp16 or fp32 for "
                             f"ONNX Runtime")
        self.session = ort.InferenceSession(str(self.model_path), options,
                                            providers=self.providers)
        self._check_session_io()

    def _check_session_io(self) -> None:
        graph_inputs = [i.name for i in self.session.get_inputs()]
        graph_outputs = [o.name for o in self.session.get_outputs()]
        expected_in = [e.name for e in self.manifest.inputs]
        expected_out = [e.name for e in self.manifest.outputs]
        if sorted(graph_inputs) != sorted(expected_in) or graph_outputs != expected_out:
            raise ValueError(f"{self.model_path}: graph I/O {graph_inputs} -> "
                             f"{graph_outputs} does not match its manifest {expected_in} -> "
                             f"{expected_out}; re-export the stage")

    def check_inputs(self, inputs: Mapping[str, torch.Tensor]) -> None:
        """Raise ValueError unless `inputs` has exactly the manifest's names, dtypes, ranks
        and fixed dims."""
        expected = {e.name: e for e in self.manifest.inputs}
        missing = sorted(set(expected) - set(inputs))
        unknown = sorted(set(inputs) - set(expected))
        if missing or unknown:
            raise ValueError(f"{self.name}: inputs must be exactly {sorted(expected)}; "
                             f"missing {missing}, unexpected {unknown}")
        for name, entry in expected.items():
            tensor = inputs[name]
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"{self.name}.{name}: expected a torch.Tensor, got "
                                 f"{type(tensor).__name__}")
            got = str(tensor.dtype).removeprefix("torch.")
            if got != entry.dtype:
                raise ValueError(f"{self.name}.{name}: dtype {got}, expected {entry.dtype} "
                                 f"(cast with .to(torch.{entry.dtype}))")
            if tensor.dim() != entry.rank:
                raise ValueError(f"{self.name}.{name}: shape {tuple(tensor.shape)} has rank "
                                 f"{tensor.dim()}, expected {entry.rank} with dims {entry.dims}")
            for axis, (size, dim) in enumerate(zip(tensor.shape, entry.dims, strict=True)):
                if isinstance(dim, int) and size != dim:
                    raise ValueError(f"{self.name}.{name}: dim {axis} is {size}, but this "
                                     f"export fixes it to {dim} (dims {entry.dims})")

    def run(self, inputs: Mapping[str, torch.Tensor]) -> Tensors:
        self.check_inputs(inputs)
        feed = {name: np.ascontiguousarray(t.detach().cpu().numpy())
                for name, t in inputs.items()}
        outputs = self.session.run([e.name for e in self.manifest.outputs], feed)
        return {e.name: torch.from_numpy(np.asarray(out, dtype=lookup(e.dtype).numpy))
                for e, out in zip(self.manifest.outputs, outputs, strict=True)}


def ort_runners(export_dir: str | os.PathLike, providers: Sequence[str] | None = None,
                threads: int = 0) -> dict[str, Runner]:
    """Runners for every stage under `export_dir`, keyed by pipeline stage name.

    `export_dir` is an export folder or a `cinema-trt build --runtime ort` folder (one
    `<stage>/` with manifest.json per graph; folders without a manifest are incomplete and
    skipped). A split stage exported as its graphs gets one runner that composes them
    (models/stage.py `Stage.compose`), reading its glue from the glue graph's folder.
    Every session gets `threads` intra-op threads (0: ORT's default, see OrtRunner).
    """
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise FileNotFoundError(f"folder {export_dir} does not exist; run `cinema-trt export "
                                f"--out {export_dir}` (or `cinema-trt build --runtime ort`)")
    manifests = {p: read_manifest(p) for p in stage_folders(export_dir)}
    found = {manifest.stage: folder for folder, manifest in manifests.items()}

    def runner(name: str) -> OrtRunner:  # each manifest read once
        return OrtRunner(found[name], providers, threads, manifests[found[name]])

    from .stage_runners import stage_runners

    runners = stage_runners(found, runner)
    if not runners:
        raise FileNotFoundError(f"no exported stages (<stage>/{MODEL_FILE} + {MANIFEST_FILE}) "
                                f"under {export_dir}; run `cinema-trt export` (optionally "
                                f"then `cinema-trt build --runtime ort`)")
    return runners

"""What serving a model repository takes, read from the repository itself: the GPUs its
models are placed on, the engines it holds (backend, version, targets: their manifests),
the Triton release that can load them and the image to run (serving/kubernetes.py writes
the manifests around it).

The image is NVIDIA's `tritonserver:<release>-py3` plus cinema-trt (the Python-backend
models import it: the orchestrator, the split MLLM, every `python` stage) and the wheels
the repository's Python-backend engines load: `tensorrt-cu12` of the plans' version for
`tensorrt` engines run by TensorRTRunner, `tensorrt-rtx-cu12` for TensorRT-RTX plans
(Triton has no native backend for them, so any release serves them, through Python), and
ONNX Runtime for runtime `ort`. `tensorrt_plan` models are loaded by the release's own
TensorRT, which is why the release must contain the plans' exact version
(serving/releases.py `triton_release`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from cinema_trt.export.manifest import MANIFEST_FILE
from cinema_trt.models.backends import BACKENDS
from cinema_trt.serving.releases import TritonRelease, triton_release

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineUse:
    model: str
    folder: str  # the engine's folder in the repository
    runtime: str  # the TensorRT backend that built it (models/backends.py)
    version: str
    targets: tuple[str, ...]  # the GPU architectures the plan runs on
    native: bool  # loaded by Triton's tensorrt_plan backend (else by a Python-backend model)


@dataclass(frozen=True)
class RepositoryNeeds:
    models: tuple[str, ...]
    gpus: tuple[int, ...]  # the GPU indices instance groups are placed on
    runtimes: frozenset[str]  # what runs the Python-backend stages (torch, ort, tensorrt)
    engines: tuple[EngineUse, ...]
    links: int  # symbolic links in it (weights linked, not copied)

    def version_of(self, runtime: str, native: bool | None = None) -> str | None:
        """The one version of `runtime` the engines were built by (None: no such engines);
        engines built by two versions cannot be served by one image."""
        versions = {e.version for e in self.engines
                    if e.runtime == runtime and native in (None, e.native)}
        if len(versions) > 1:
            raise ValueError(f"the repository holds {runtime} engines built by versions "
                             f"{sorted(versions)}; rebuild them with one")
        return next(iter(versions), None)

    @property
    def targets(self) -> tuple[str, ...]:
        """The GPU architectures every engine runs on (() without engines)."""
        common: set[str] | None = None
        for engine in self.engines:
            common = set(engine.targets) if common is None else common & set(engine.targets)
        if common is not None and not common:
            raise ValueError("no GPU architecture runs every engine of the repository: "
                             + "; ".join(f"{e.folder}: {','.join(e.targets)}"
                                         for e in self.engines))
        return tuple(sorted(common or (), key=lambda t: int(t[2:])))


def _engine(repository: Path, model: str, manifest: Path, native: bool) -> EngineUse | None:
    from cinema_trt.export.manifest import read_manifest

    build = read_manifest(manifest.parent).build
    if build is None or build.runtime not in BACKENDS:
        return None  # an export, or an ONNX Runtime build
    return EngineUse(model, str(manifest.parent.relative_to(repository)), build.runtime,
                     build.runtime_version, tuple(build.targets), native)


def read_repository(repository: str | Path) -> RepositoryNeeds:
    """Read every model's config.pbtxt and every manifest.json under `repository`."""
    from cinema_trt.serving.triton_config import model_config_pb2, parse_config

    repository = Path(repository)
    configs = sorted(repository.glob("*/config.pbtxt"))
    if not configs:
        raise FileNotFoundError(f"{repository} holds no model (no */config.pbtxt); build it "
                                "with `cinema-trt repo`")
    gpu_kind = model_config_pb2().ModelInstanceGroup.KIND_GPU
    gpus: set[int] = set()
    runtimes: set[str] = set()
    engines = []
    for path in configs:
        config = parse_config(path.read_text())
        for group in config.instance_group:
            if group.kind == gpu_kind:  # no list: every GPU Triton sees, at least one
                gpus.update(group.gpus or [0])
        if config.backend == "python" and "runtime" in config.parameters:
            runtimes.add(config.parameters["runtime"].string_value)
        native = config.platform == "tensorrt_plan"
        for manifest in sorted(path.parent.glob(f"*/**/{MANIFEST_FILE}")):
            engine = _engine(repository, path.parent.name, manifest, native)
            if engine is not None:
                engines.append(engine)
    links = sum(p.is_symlink() for p in repository.rglob("*"))
    return RepositoryNeeds(tuple(p.parent.name for p in configs), tuple(sorted(gpus)),
                           frozenset(runtimes), tuple(engines), links)


def _series(version: str) -> str:
    """`10.5.0.18` -> `10.5.0.*`: the pip pin of the release a plan loads in."""
    return ".".join(version.split(".")[:3]) + ".*"


@dataclass(frozen=True)
class ServingImage:
    release: TritonRelease
    tag: str  # the image the pods run
    wheels: tuple[str, ...]  # pip requirements beside cinema-trt

    def dockerfile(self) -> str:
        installs = " ".join(f'"{w}"' for w in ("/opt/cinema-trt", *self.wheels))
        return "\n".join([
            f"# {self.tag}: cinema-trt on Triton {self.release.triton} (NGC "
            f"{self.release.release}, TensorRT {self.release.tensorrt}).",
            "# Build from the cinema-trt checkout the repository was made with:",
            f"#   docker build -f <this file> -t {self.tag} <cinema-trt checkout>",
            f"FROM {self.release.image}",
            "# the Python-backend models import cinema_trt: install it into the Python",
            "# the container's backend stubs run (newer images mark it externally managed)",
            "ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1",
            "COPY . /opt/cinema-trt",
            f"RUN pip install {installs}",
            "USER triton-server",
            'ENTRYPOINT ["cinema-trt", "serve"]',
            "",
        ])


def serving_image(needs: RepositoryNeeds, repository: str = "cinema-triton",
                  release: str | None = None) -> ServingImage:
    """The image for `needs`: the release its `tensorrt` plans need (or `release`, checked
    against them), with the wheels its Python-backend engines and runtimes load."""
    chosen = triton_release(needs.version_of("tensorrt"), release)
    wheels, suffix = [], ""
    for backend in BACKENDS.values():
        version = needs.version_of(backend.name, native=False)
        if version is not None:
            wheels.append(f"{backend.wheel}=={_series(version)}")
            suffix += f"-{backend.name.replace('tensorrt', 'trt')}{version}"
    if "ort" in needs.runtimes:
        wheels += ["onnx", "onnxruntime-gpu" if needs.gpus else "onnxruntime"]
    version = metadata.version("cinema-trt")
    return ServingImage(chosen, f"{repository}:{chosen.release}-cinema{version}{suffix}",
                        tuple(wheels))

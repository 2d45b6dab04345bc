"""`config.pbtxt` for every model, built as Triton's `ModelConfig` protobuf from the specs.

Building the protobuf (instead of formatting text) means a config that serializes is a
config Triton can parse; `parse_config` reads one back for checks. Symbolic dims become -1.
"""

from __future__ import annotations

from dataclasses import dataclass

from cinema_trt.models.dtypes import lookup
from cinema_trt.models.specs import StageSpec, TensorSpec
from cinema_trt.serving import protocol

# backend name -> (platform, default model file name); python models need no platform
BACKENDS = {
    "python": ("", "model.py"),
    "onnxruntime": ("onnxruntime_onnx", "model.onnx"),
    "tensorrt": ("tensorrt_plan", "model.plan"),
}


@dataclass(frozen=True)
class Placement:
    """Where a model's instances run: `count` instances on the CPU or on each listed GPU."""

    kind: str = "cpu"  # "cpu" | "gpu"
    count: int = 1
    gpus: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in ("cpu", "gpu"):
            raise ValueError(f"placement kind={self.kind!r} must be 'cpu' or 'gpu'")
        if self.count < 1:
            raise ValueError(f"instance count={self.count} must be >= 1")
        if self.kind == "cpu" and self.gpus:
            raise ValueError(f"gpus={self.gpus} given for a CPU placement; use kind='gpu'")
        if any(gpu < 0 for gpu in self.gpus) or len(set(self.gpus)) != len(self.gpus):
            raise ValueError(f"gpus={self.gpus} must be distinct GPU indices >= 0 "
                             "(as nvidia-smi numbers them), e.g. (0, 1)")

    @classmethod
    def on(cls, gpus: tuple[int, ...] = (), count: int = 1) -> Placement:
        """`count` instances on each GPU in `gpus`, or on the CPU when `gpus` is empty."""
        return cls("gpu", count, tuple(gpus)) if gpus else cls("cpu", count)


def model_config_pb2():
    """Triton's model_config_pb2 module (from tritonclient)."""
    return _pb()


def _pb():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise ImportError("Triton configs need tritonclient: pip install 'cinema-trt[serve]'") \
            from None
    return model_config_pb2


def _tensor(spec: TensorSpec) -> dict:
    return {"name": spec.name, "data_type": lookup(spec.dtype).triton_type,
            "dims": [d if isinstance(d, int) else -1 for d in spec.dims]}


def _base(name: str, backend: str, placement: Placement, version: int):
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} must be one of {sorted(BACKENDS)}")
    pb = _pb()
    config = pb.ModelConfig(name=name, backend=backend, max_batch_size=0)
    platform, filename = BACKENDS[backend]
    if platform:
        config.platform = platform
        config.default_model_filename = filename
    config.version_policy.specific.versions.append(version)
    group = config.instance_group.add(count=placement.count)
    group.kind = pb.ModelInstanceGroup.KIND_GPU if placement.kind == "gpu" \
        else pb.ModelInstanceGroup.KIND_CPU
    group.gpus.extend(placement.gpus)
    return config


def _set_parameters(config, parameters: dict[str, str]) -> None:
    for key, value in sorted(parameters.items()):
        config.parameters[key].string_value = str(value)


def stage_config(spec: StageSpec, backend: str, placement: Placement = Placement(),
                 version: int = 1, parameters: dict[str, str] | None = None):
    """ModelConfig of one stage model; the batch dim is an ordinary -1 (max_batch_size 0)."""
    config = _base(spec.name, backend, placement, version)
    for tensor in spec.inputs:
        config.input.add(**_tensor(tensor))
    for tensor in spec.outputs:
        config.output.add(**_tensor(tensor))
    _set_parameters(config, {"stage": spec.name, **(parameters or {})})
    return config


def orchestrator_config(placement: Placement = Placement(), version: int = 1,
                        parameters: dict[str, str] | None = None):
    """ModelConfig of the decoupled `cinema` model (protocol.INPUTS / OUTPUTS)."""
    config = _base(protocol.ORCHESTRATOR, "python", placement, version)
    for field in protocol.INPUTS:
        config.input.add(name=field.name, data_type=lookup(field.datatype).triton_type,
                         dims=list(field.dims), optional=field.optional)
    for field in protocol.OUTPUTS:
        config.output.add(name=field.name, data_type=lookup(field.datatype).triton_type,
                          dims=list(field.dims))
    # decoupled: many responses per request (progress, then the video)
    config.model_transaction_policy.decoupled = True
    _set_parameters(config, parameters or {})
    return config


def to_text(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse_config(text: str):
    """Parse `config.pbtxt` text into a ModelConfig (raises text_format.ParseError)."""
    from google.protobuf import text_format

    return text_format.Parse(text, _pb().ModelConfig())

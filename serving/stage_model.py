"""Python-backend stage model: one CINEMA stage as a torch `TorchRunner` behind Triton.

The generated `model.py` of every stage imports `TritonPythonModel` from here. Its version
folder is a partial weights folder (models/factory.py layout): `cinema_config.json` plus
only the files this stage needs, so each stub loads one stage, not the whole model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from cinema_trt.models.factory import STAGE_FILES, read_weights_config
from cinema_trt.models.runner import TorchRunner
from cinema_trt.models.specs import stage_specs
from cinema_trt.serving.bls import from_triton, log_to_stderr, pb_utils, to_triton

log = logging.getLogger(__name__)

# stage -> the entries of a weights folder it loads
STAGE_WEIGHTS = {
    "mllm": ("mllm",),
    "connector": (STAGE_FILES["aligner"],),
    "vae_encoder": (STAGE_FILES["vae"],),
    "vae_decoder": (STAGE_FILES["vae"],),
    "dit": (STAGE_FILES["dit"],),
}


def _stage_module(folder: Path, stage: str, config) -> torch.nn.Module:
    from cinema_trt.models.aligner import AlignerNet
    from cinema_trt.models.dit import CinemaDiT
    from cinema_trt.models.mllm import load_mllm
    from cinema_trt.models.vae import VideoVAE
    from cinema_trt.models.weights import load_stage

    if stage == "mllm":
        return load_mllm(folder / "mllm", config.mllm)[0]
    if stage == "connector":
        return load_stage(AlignerNet(config.aligner), folder / STAGE_FILES["aligner"])
    if stage in ("vae_encoder", "vae_decoder"):
        vae = load_stage(VideoVAE(config.vae), folder / STAGE_FILES["vae"])
        return vae.encoder if stage == "vae_encoder" else vae.decoder
    if stage == "dit":
        return load_stage(CinemaDiT(config.dit), folder / STAGE_FILES["dit"])
    raise ValueError(f"stage {stage!r} has no PyTorch weights; stages with weights: "
                     f"{sorted(STAGE_WEIGHTS)}")


def load_stage_runner(folder: str | Path, stage: str,
                      device: str | torch.device = "cpu") -> TorchRunner:
    """The TorchRunner of `stage` from a (partial) weights folder."""
    folder = Path(folder)
    config = read_weights_config(folder)
    spec = stage_specs(config)[stage]
    return TorchRunner(stage, _stage_module(folder, stage, config), spec.output_names, device)


def _instance_device(args: dict) -> str:
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{args['model_instance_device_id']}"
    return "cpu"


class TritonPythonModel:
    """Triton entry points; `parameters.stage` in config.pbtxt names the stage."""

    def initialize(self, args: dict) -> None:
        log_to_stderr()
        model_config = json.loads(args["model_config"])
        parameters = model_config.get("parameters", {})
        self.stage = parameters["stage"]["string_value"]
        threads = int(parameters.get("torch_threads", {}).get("string_value", "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        folder = Path(args["model_repository"]) / args["model_version"]
        self.runner = load_stage_runner(folder, self.stage, _instance_device(args))
        self.spec = stage_specs(read_weights_config(folder))[self.stage]
        log.info("stage %s loaded from %s on %s", self.stage, folder, self.runner.device)

    def execute(self, requests):
        pb = pb_utils()
        responses = []
        for request in requests:
            try:
                inputs = {name: from_triton(pb.get_input_tensor_by_name(request, name))
                          for name in self.spec.input_names}
                outputs = self.runner.run(inputs)
                responses.append(pb.InferenceResponse(
                    [to_triton(name, outputs[name]) for name in self.spec.output_names]))
            except (ValueError, RuntimeError, KeyError) as error:
                # shape or content errors of this request: report them, keep serving
                responses.append(pb.InferenceResponse(
                    error=pb.TritonError(f"{self.stage}: {type(error).__name__}: {error}")))
        return responses

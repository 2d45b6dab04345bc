"""Server start time: every Python-backend stage model is a separate process that imports
serving/stage_model.py. transformers (~2-3 s of imports on 2 cores) belongs to the MLLM
only, so a connector, VAE or DiT stage model must load, on torch or on ONNX Runtime,
without importing it. Checked in fresh interpreters, with the MLLM as the positive control."""

from __future__ import annotations

import shutil
import subprocess
import sys

from cinema_trt.models.factory import CONFIG_FILE
from cinema_trt.models.stages import MLLM, STAGES

NON_MLLM = [s.name for s in STAGES if s is not MLLM]

# loads the given stages, then prints whether transformers was imported
PROBE = """
import sys
from cinema_trt.serving.stage_model import load_stage_runner
folder, runtime, *stages = sys.argv[1:]
for stage in stages:
    load_stage_runner(folder, stage, "cpu", runtime)
print("transformers" in sys.modules)
"""


def _imports_transformers(cwd, folder, runtime: str, stages: list[str]) -> bool:
    done = subprocess.run([sys.executable, "-c", PROBE, str(folder), runtime, *stages],
                          cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


def test_torch_stage_models_import_transformers_for_the_mllm_only(tiny_weights, tmp_path):
    assert not _imports_transformers(tmp_path, tiny_weights, "torch", NON_MLLM)
    assert _imports_transformers(tmp_path, tiny_weights, "torch", ["mllm"])


def test_an_ort_stage_model_does_not_import_transformers(tiny_weights, tiny_exports, tmp_path):
    from cinema_trt.serving.stage_model import ONNX_FOLDER

    # a stage model's version folder for runtime ort: the config + <v>/onnx/connector/
    version = tmp_path / "connector-1"
    tiny_exports.copy(["connector"], version / ONNX_FOLDER)
    shutil.copy(tiny_weights / CONFIG_FILE, version / CONFIG_FILE)
    assert not _imports_transformers(tmp_path, version, "ort", ["connector"])

"""OrtRunner: the Runner protocol over an exported stage, with inputs checked against the
manifest; ort_runners: a whole export folder as the pipeline's five stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cinema_trt.export.check import FP32_TOLERANCE
from cinema_trt.export.compare import error_stats
from cinema_trt.export.ort import OrtRunner, ort_runners
from cinema_trt.models.mllm import prepare_inputs
from cinema_trt.models.runner import Runner
from cinema_trt.models.stages import DIT, MLLM, STAGES

pytestmark = pytest.mark.slow  # needs the session export


@pytest.fixture(scope="module")
def dit_runner(fp32_export):
    return OrtRunner(fp32_export[0] / "dit")


@pytest.fixture()
def dit_inputs(tiny_models):
    case = {"batch": 2, "refs": 2, "lframes": 2, "lheight": 4, "lwidth": 4}
    return DIT.sample_inputs(tiny_models.config, case)


def test_runner_is_a_runner_with_torch_tensors_out(dit_runner, dit_inputs):
    assert isinstance(dit_runner, Runner) and dit_runner.name == "dit"
    out = dit_runner.run(dit_inputs)
    assert list(out) == ["velocity"]
    assert out["velocity"].dtype == torch.float32
    assert out["velocity"].shape == dit_inputs["latents"].shape


@pytest.mark.parametrize("change, message", [
    (lambda x: x.pop("timestep"), "missing \\['timestep'\\]"),
    (lambda x: x.update(extra=torch.zeros(1)), "unexpected \\['extra'\\]"),
    (lambda x: x.update(timestep=x["timestep"].double()), "dtype float64, expected float32"),
    (lambda x: x.update(latents=x["latents"][0]), "rank 4, expected 5"),
    (lambda x: x.update(text_states=torch.zeros(2, 7, 48)), "dim 1 is 7.*fixes it to 16"),
    (lambda x: x.update(latents=x["latents"].numpy()), "expected a torch.Tensor"),
])
def test_bad_inputs_fail_before_onnx_runtime(dit_runner, dit_inputs, change, message):
    change(dit_inputs)
    with pytest.raises(ValueError, match=message):
        dit_runner.run(dit_inputs)


def test_unavailable_provider_is_a_clear_error(fp32_export):
    with pytest.raises(ValueError, match="not available here"):
        OrtRunner(fp32_export[0] / "dit", providers=("NoSuchExecutionProvider",))


def test_folder_without_manifest_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a complete export"):
        OrtRunner(tmp_path)
    with pytest.raises(FileNotFoundError, match="no exported stages"):
        ort_runners(tmp_path)


def test_ort_runners_cover_the_pipeline_stages(fp32_export):
    runners = ort_runners(fp32_export[0])
    assert sorted(runners) == sorted(s.name for s in STAGES)  # mllm composed from its graphs
    assert all(runners[s.name].name == s.name for s in STAGES)


@pytest.mark.parametrize("num_images", [0, 1, 3])
def test_composed_mllm_matches_torch_mllm_stage(fp32_export, tiny_models, num_images):
    """Same contract as the torch "mllm" stage: raw processor outputs in, hidden states
    out; 0 images is the unconditional branch (the vision graph is skipped)."""
    rng = np.random.default_rng(num_images)
    images = [Image.fromarray(rng.integers(0, 255, (50 + 10 * i, 70, 3), dtype=np.uint8))
              for i in range(num_images)]
    prompt = "a red circle dances" if num_images else ""
    inputs = prepare_inputs(tiny_models.processor, tiny_models.config.mllm, prompt, images)
    mllm = ort_runners(fp32_export[0])["mllm"]
    got = mllm.run(inputs)["hidden_states"]
    with torch.inference_mode():
        ref = tiny_models.mllm(**inputs)
    assert error_stats(got, ref).rel_max <= FP32_TOLERANCE


def test_mllm_glue_is_checked_against_the_export_manifest(fp32_export, tmp_path):
    """The mllm_text manifest records the sha256 of its glue files (HF config, token
    embeddings); a swapped file is refused with the stage named, before any run."""
    import shutil

    from cinema_trt.export.manifest import check_sidecars, read_manifest
    from cinema_trt.models.fileio import sha256_file
    from cinema_trt.models.mllm_split import EMBEDDINGS_FILE, GLUE_FILES, load_glue

    folder = tmp_path / "export"
    for g in MLLM.graphs:
        shutil.copytree(fp32_export[0] / g.name, folder / g.name)
    text_dir = folder / MLLM.glue
    sidecars = read_manifest(text_dir).sidecars
    assert set(sidecars) == set(GLUE_FILES)
    assert all(sidecars[name] == sha256_file(text_dir / name) for name in GLUE_FILES)
    check_sidecars(text_dir)  # an intact copy passes
    embeddings = text_dir / EMBEDDINGS_FILE
    data = bytearray(embeddings.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    embeddings.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"does not match the sha256 .* recorded at export.*"
                                         f"--stages {MLLM.glue}"):
        ort_runners(folder)
    # a missing glue file is named, with the export that writes it
    embeddings.unlink()
    with pytest.raises(FileNotFoundError, match=f"missing.*--stages {MLLM.glue}"):
        load_glue(text_dir)

"""The VAE encoder runs once per reference (models/pipeline.py `_encode_references`), so its
profile's batch is 1 and a TensorRT build plans one reference's activations (paper scale:
0.58 GiB, against 2.31 GiB for 4 references in one batch; benchmarks/results/
cpu-2core-vae-chunks-20261206.md). The encoder normalises per sample and frame, so the
per-reference latents are the batched encode's, to fp32's last bits (SAME_ENCODE)."""

from collections import defaultdict

from cinema_trt.engines.shapes import default_shapes, profiles_for
from cinema_trt.models.factory import torch_pipeline
from cinema_trt.models.media import load_image, sample_references
from cinema_trt.models.pipeline import GenerationRequest, refs_to_video_tensor
from cinema_trt.models.presets import get_preset
from cinema_trt.models.stages import VAE_ENCODER

# max |per-reference - batched| / max |batched|, fp32: the encoder computes each sample on
# its own, but oneDNN picks its conv kernels by batch size, so the last bits differ
# (measured 2.4e-6 with 3 references at 32x48, 1.9e-6 with 4 at 48x32); 1e-5 of the output
# scale is the "equal" for fp32 decodes. A reference encoded with another's
# statistics, or dropped, differs by O(1).
SAME_ENCODE = 1e-5


def _references(count: int) -> tuple:
    return tuple(load_image(p) for p in sample_references()[:count])  # 4 bundled


def test_one_call_per_reference_equals_the_batched_encode():
    pipeline = torch_pipeline("tiny")
    pipeline.last_timings = defaultdict(float)  # what generate() starts with
    runner = pipeline.runners[VAE_ENCODER.name]
    for count, (height, width) in ((3, (32, 48)), (4, (48, 32))):
        request = GenerationRequest(prompt="p", refs=_references(count), frames=5,
                                    height=height, width=width, steps=1, guidance=4.0, seed=0)
        video = refs_to_video_tensor(request.refs, height, width)  # (K, 3, 1, H, W)
        batched = runner.run({"video": video})["latents"]
        split = pipeline._encode_references(request)
        error = ((split - batched).abs().max() / batched.abs().max()).item()
        assert split.shape == batched.shape and error <= SAME_ENCODE, (count, error)


def test_the_pipeline_calls_the_encoder_with_one_reference_at_a_time():
    pipeline = torch_pipeline("tiny")
    runner = pipeline.runners[VAE_ENCODER.name]
    batches = []

    class Recording:
        name = runner.name

        def run(self, inputs):
            batches.append(tuple(inputs["video"].shape))
            return runner.run(inputs)

    pipeline.runners[VAE_ENCODER.name] = Recording()
    pipeline.generate(GenerationRequest(prompt="p", refs=_references(3), frames=5, height=32,
                                        width=32, steps=1, guidance=4.0, seed=0))
    assert batches == [(1, 3, 1, 32, 32)] * 3


def test_the_encoder_profile_has_batch_one_whatever_the_reference_count():
    """tiny's deployment takes 1..4 references (engines/shapes.py); the encoder's engine
    is built for one."""
    config = get_preset("tiny")
    shapes = default_shapes(config)
    assert (shapes.refs.min, shapes.refs.max) == (1, 4)
    profile = profiles_for(VAE_ENCODER.spec(config), shapes, config)
    assert [shape[0] for shape in profile["video"]] == [1, 1, 1]

"""CINEMA generation: prompt + 1..K reference images -> uint8 video, over stage runners.

The pipeline only talks to `Runner`s (models/runner.py), so the same code drives PyTorch,
ONNX Runtime, TensorRT and the Triton orchestrator's BLS calls.
"""

from __future__ import annotations

import math
import numbers
import re
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .mllm import prepare_inputs
from .presets import CinemaConfig, check_num_refs, latent_frames, latent_size
from .runner import FunctionRunner, Runner, Tensors, compute_dtype
from .sampler import GenerationCancelled, ProgressFn, StopFn, denoise, initial_noise
from .stages import CONNECTOR, DIT, MLLM, STAGES, VAE_DECODER, VAE_ENCODER

if TYPE_CHECKING:
    from transformers import Qwen2VLProcessor

MAX_PROMPT_CHARS = 4096
MAX_REF_SIDE = 4096  # pixels; larger images are rejected before any resizing work
# Qwen2-VL's image processor refuses images whose long side exceeds 200x the short one;
# checked here so the request is refused up front with the reference's index
MAX_REF_ASPECT = 200
MAX_STEPS = 1000
# Upper bounds on the video, so one request cannot ask for an allocation that kills the
# process (height=2**30 passed every other check). Sides: 1.5x the long side of the largest
# resolution DiTs of this class are trained at (1360x768); frames: 1 + 4 * 64 latent frames
# (5.7x the 45-frame default);
# pixels: frames * height * width <= 2**27 keeps the uint8 video at 384 MiB and the
# decoder's float32 output at 1.5 GiB, well inside gRPC's 2 GiB message limit.
MAX_SIDE = 2048
MAX_FRAMES = 257
MAX_VIDEO_PIXELS = 2 ** 27
# Qwen2-VL's special tokens (<|image_pad|>, <|im_start|>, ...): in a prompt they would be
# parsed as markup (wrong image-token counts, chat-template injection), so they are refused
RESERVED_TOKEN = re.compile(r"<\|[^<>|\s]+\|>")
INT_FIELDS = ("frames", "height", "width", "steps", "seed", "fps")
# frames(chunk uint8 (f, H, W, 3), start): a decoded chunk's frames, its first frame's index
FramesFn = Callable[[np.ndarray, int], None]


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    refs: tuple[np.ndarray, ...]  # each uint8 (H, W, 3)
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    seed: int = 0
    fps: int = 8

    @classmethod
    def with_defaults(cls, config: CinemaConfig, prompt: str, refs: Sequence[np.ndarray],
                      **overrides: Any) -> GenerationRequest:
        """A request with the preset's sampler defaults for every field not given."""
        s = config.sampler
        fields: dict[str, Any] = dict(frames=s.frames, height=s.height, width=s.width,
                                      steps=s.steps, guidance=s.guidance, fps=s.fps, seed=0)
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(prompt=prompt, refs=tuple(refs), **fields)

    def validate(self, config: CinemaConfig) -> None:
        """Raise ValueError naming the first violated constraint."""
        _check_prompt(self.prompt)
        if not isinstance(self.refs, (tuple, list)):
            raise ValueError(f"refs must be a tuple of images, got {type(self.refs).__name__}")
        check_num_refs(len(self.refs), min(config.mllm.max_refs, config.dit.max_refs))
        for i, ref in enumerate(self.refs, start=1):  # 1-based: messages are for people
            _check_ref(i, ref)
        for name in INT_FIELDS:
            value = getattr(self, name)
            # bool is an int subclass, and a float would slip through range checks
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name}={value!r} must be an integer, got "
                                 f"{type(value).__name__}")
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, numbers.Real):
            raise ValueError(f"guidance={self.guidance!r} must be a number, got "
                             f"{type(self.guidance).__name__}")
        _check_video_size(self.frames, self.height, self.width, config)
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps={self.steps} must be in 1..{MAX_STEPS}")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ValueError(f"guidance={self.guidance} must be a finite number >= 0")
        if not 0 <= self.seed < 2 ** 63:
            raise ValueError(f"seed={self.seed} must be in [0, 2**63)")
        if not 1 <= self.fps <= 120:
            raise ValueError(f"fps={self.fps} must be in 1..120")


def _check_prompt(prompt) -> None:
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt must not be empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt has {len(prompt)} characters; "
                         f"at most {MAX_PROMPT_CHARS} are accepted")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:  # lone surrogates: the tokenizer would crash
        raise ValueError(f"prompt is not valid Unicode text ({error})") from None
    reserved = RESERVED_TOKEN.search(prompt)
    if reserved:
        raise ValueError(f"prompt contains the reserved token {reserved.group()!r}; the "
                         "pipeline adds the MLLM's special tokens itself, remove it")


def _check_video_size(frames: int, height: int, width: int, config: CinemaConfig) -> None:
    latent_frames(frames)
    latent_size(height, width, config.dit)
    if frames > MAX_FRAMES:
        raise ValueError(f"frames={frames} exceeds the maximum of {MAX_FRAMES}")
    for label, value in (("height", height), ("width", width)):
        if value > MAX_SIDE:
            raise ValueError(f"{label}={value} exceeds the maximum of {MAX_SIDE} pixels")
    if int(frames) * int(height) * int(width) > MAX_VIDEO_PIXELS:
        raise ValueError(f"frames*height*width={frames}*{height}*{width} exceeds the "
                         f"maximum of {MAX_VIDEO_PIXELS} pixels; lower the resolution or "
                         "the frame count")


def _check_ref(index: int, ref) -> None:
    if not isinstance(ref, np.ndarray) or ref.dtype != np.uint8 or ref.ndim != 3 \
            or ref.shape[2] != 3:
        shape = getattr(ref, "shape", None)
        raise ValueError(f"reference {index} must be a uint8 (H, W, 3) RGB array, got "
                         f"{type(ref).__name__} {getattr(ref, 'dtype', '')} {shape}")
    if min(ref.shape[:2]) < 1 or max(ref.shape[:2]) > MAX_REF_SIDE:
        raise ValueError(f"reference {index} is {ref.shape[1]}x{ref.shape[0]}; "
                         f"sides must be 1..{MAX_REF_SIDE} pixels")
    if max(ref.shape[:2]) > MAX_REF_ASPECT * min(ref.shape[:2]):
        raise ValueError(f"reference {index} is {ref.shape[1]}x{ref.shape[0]}; the long side "
                         f"may be at most {MAX_REF_ASPECT}x the short one (crop it)")


def fit_reference(ref: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (keeping aspect) and center-crop a reference to the video's frame size."""
    image = Image.fromarray(ref)
    scale = max(height / image.height, width / image.width)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)))


def refs_to_video_tensor(refs: tuple[np.ndarray, ...], height: int, width: int) -> torch.Tensor:
    """K references -> (K, 3, 1, H, W) float in [-1, 1]: one single-frame video each."""
    frames = np.stack([fit_reference(r, height, width) for r in refs])  # (K, H, W, 3)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return video.unsqueeze(2)


def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """(1, 3, F, H, W) in [-1, 1] -> uint8 (F, H, W, 3)."""
    frames = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


class CinemaPipeline:
    """Runs the five stages; `last_timings` holds seconds per stage of the last call."""

    def __init__(self, config: CinemaConfig, runners: Mapping[str, Runner],
                 processor: Qwen2VLProcessor):
        missing = [s.name for s in STAGES if s.name not in runners]
        if missing:
            raise ValueError(f"pipeline needs runners for stages {missing}")
        self.config = config
        self.runners = dict(runners)
        self.processor = processor
        self.last_timings: dict[str, float] = {}
        self._uncond_text: torch.Tensor | None = None

    def _run(self, stage: str, inputs: Mapping[str, torch.Tensor]) -> Tensors:
        start = time.perf_counter()
        outputs = self.runners[stage].run(inputs)
        self.last_timings[stage] += time.perf_counter() - start
        return outputs

    def _encode_references(self, request: GenerationRequest) -> torch.Tensor:
        """(K, C, 1, h, w) latents of the references, one encoder call each: the encoder's
        profile (models/stage_vae.py) has batch 1, so its activations are one reference's."""
        refs = refs_to_video_tensor(request.refs, request.height, request.width)
        return torch.cat([self._run(VAE_ENCODER.name, {"video": ref})["latents"].float().cpu()
                          for ref in refs.split(1)])

    def _text_states(self, prompt: str, refs: tuple[np.ndarray, ...]) -> torch.Tensor:
        images = [Image.fromarray(r) for r in refs]
        inputs = prepare_inputs(self.processor, self.config.mllm, prompt, images)
        hidden = self._run(MLLM.name, inputs)["hidden_states"]
        return self._run(CONNECTOR.name, {"hidden_states": hidden,
                                          "attention_mask": inputs["attention_mask"]}
                         )["text_states"].float().cpu()

    def _uncond_text_states(self) -> torch.Tensor:
        # the negative branch (empty prompt, no images) depends only on the weights
        if self._uncond_text is None:
            self._uncond_text = self._text_states("", ())
        return self._uncond_text

    def generate(self, request: GenerationRequest, progress: ProgressFn | None = None,
                 should_stop: StopFn | None = None, frames: FramesFn | None = None
                 ) -> np.ndarray:
        """The video, uint8 (F, H, W, 3). progress(step, total) after each denoising step;
        should_stop() is asked before each step and each decoded chunk (True: raise
        GenerationCancelled); frames(chunk, start) gets each decoded chunk's frames, uint8
        (f, H, W, 3), as soon as they exist, `start` the index of its first frame."""
        request.validate(self.config)
        self.last_timings = defaultdict(float)
        # 1. MLLM + connector: conditional and unconditional text features, (2, L, D)
        text = torch.cat([self._text_states(request.prompt, request.refs),
                          self._uncond_text_states()])
        # 2. VAE-encode each reference as a one-frame video, (1, K, C, h, w)
        ref_latents = self._encode_references(request)[:, :, 0].unsqueeze(0)
        # the unconditional branch drops the references (zeros) as well as the text
        ref_latents = torch.cat([ref_latents, torch.zeros_like(ref_latents)])
        # 3. denoise from seeded noise
        lh, lw = latent_size(request.height, request.width, self.config.dit)
        shape = (1, self.config.vae.latent_channels, latent_frames(request.frames), lh, lw)
        start = time.perf_counter()
        latents = denoise(self.runners[DIT.name], initial_noise(shape, request.seed), text,
                          ref_latents, request.steps, request.guidance,
                          self.config.sampler.shift, progress, should_stop)
        self.last_timings[DIT.name] += time.perf_counter() - start
        # 4. decode to frames, a chunk of latent frames per decoder call
        video = self._decode(latents, request.frames, should_stop, frames)
        self.last_timings = dict(self.last_timings)
        return video

    def _decode(self, latents: torch.Tensor, total: int, should_stop: StopFn | None,
                frames: FramesFn | None) -> np.ndarray:
        decoder = FunctionRunner(VAE_DECODER.name,
                                 lambda inputs: self._run(VAE_DECODER.name, inputs))
        chunks, start = [], 0
        compute = compute_dtype(self.runners[VAE_DECODER.name])  # its states' dtype
        for video in VAE_DECODER.decode(decoder, latents, self.config, compute):
            chunk = video_to_uint8(video)
            if frames is not None:
                frames(chunk, start)
            chunks.append(chunk)
            start += len(chunk)
            if should_stop is not None and should_stop() and start < total:
                raise GenerationCancelled(f"cancelled after {start} decoded frames")
        return np.concatenate(chunks)

    def __call__(self, prompt: str, refs: Sequence[np.ndarray], frames: int | None = None,
                 height: int | None = None,
                 width: int | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0) -> np.ndarray:
        request = GenerationRequest.with_defaults(
            self.config, prompt, refs, frames=frames, height=height, width=width,
            steps=steps, guidance=guidance, seed=seed)
        return self.generate(request)

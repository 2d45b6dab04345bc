"""Stage 1, the MLLM encoder: transformers' Qwen2-VL, read out as last-layer hidden states.

CINEMA conditions the video model on what Qwen2-VL "understands" of the prompt and the K
reference images: one prefill pass over the chat (system instruction, "Subject k: <image>"
for each reference, the prompt), no decoding. The output is the final-norm hidden states of
every token, (B, S, D), which the connector (AlignerNet) maps to the DiT's text width.

Everything is the real transformers code: `Qwen2VLConfig` built from an `MLLMConfig`, the
Qwen2-VL image processor (resize to whole patches within [min_pixels, max_pixels],
`image_grid_thw`, `<|image_pad|>` expansion), `Qwen2VLModel` and its M-RoPE position ids.
Only the tokenizer is local (tokenizer.py), because model hubs are unreachable.
Over 300 lines on purpose: one model a file, as diffusers keeps them (its config, processor,
module, create/save/load), the transformers 4.x/5.x differences included.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from packaging.version import Version
from PIL import Image
from torch import nn
from transformers import Qwen2VLConfig, Qwen2VLModel, Qwen2VLProcessor
from transformers import __version__ as transformers_version
from transformers.processing_utils import ProcessorMixin

from .presets import MLLMConfig
from .tokenizer import (
    ENDOFTEXT,
    IM_END,
    IMAGE_PAD,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    build_messages,
    build_tokenizer,
)
from .weights import CheckpointError

logger = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")  # specs.py
RMS_NORM_EPS = 1e-6  # Qwen2-VL's value
MAX_POSITIONS = 32768  # Qwen2-VL's max_position_embeddings
# transformers 5 moved rope settings from `rope_scaling` + `rope_theta` to `rope_parameters`
# and chooses image-processor backends itself (4.x asks for `use_fast`)
_TRANSFORMERS_5 = Version(transformers_version) >= Version("5.0.0.dev0")
# transformers 5 finds image tokens through `mm_token_type_ids`, 4.x through <|vision_start|>
_ROPE_INDEX_TAKES_TOKEN_TYPES = (
    "mm_token_type_ids" in inspect.signature(Qwen2VLModel.get_rope_index).parameters)
__all__ = ["ImageOnlyQwen2VLProcessor", "MLLMEncoder", "build_hf_config", "build_messages",
           "build_processor", "chat_text", "check_mllm_config", "create_mllm",
           "folder_mismatches", "load_mllm", "mllm_fields", "prepare_inputs", "save_mllm"]


# --- configuration ----------------------------------------------------------------------


def check_mllm_config(cfg: MLLMConfig) -> None:
    """Raise ValueError for an MLLMConfig that Qwen2-VL cannot be built from."""
    head_dim, rem = divmod(cfg.hidden_size, cfg.num_heads)
    problems = []
    if rem:
        problems.append(f"hidden_size={cfg.hidden_size} must be divisible by num_heads="
                        f"{cfg.num_heads}")
    elif sum(cfg.mrope_section) * 2 != head_dim:
        problems.append(f"mrope_section={cfg.mrope_section} must sum to head_dim / 2 = "
                        f"{head_dim // 2} (hidden_size / num_heads / 2)")
    if cfg.num_heads % cfg.num_kv_heads:
        problems.append(f"num_heads={cfg.num_heads} must be a multiple of num_kv_heads="
                        f"{cfg.num_kv_heads}")
    if cfg.vision_embed_dim % cfg.vision_heads:
        problems.append(f"vision_embed_dim={cfg.vision_embed_dim} must be divisible by "
                        f"vision_heads={cfg.vision_heads}")
    if cfg.vision_mlp_ratio != int(cfg.vision_mlp_ratio):
        problems.append(f"vision_mlp_ratio={cfg.vision_mlp_ratio} must be a whole number "
                        f"(Qwen2VLVisionConfig.mlp_ratio is an int)")
    if not 0 < cfg.min_pixels <= cfg.max_pixels:
        problems.append(f"need 0 < min_pixels <= max_pixels, got {cfg.min_pixels} and "
                        f"{cfg.max_pixels}")
    if cfg.max_refs < 1:
        problems.append(f"max_refs={cfg.max_refs} must be at least 1")
    if problems:
        raise ValueError("invalid MLLMConfig: " + "; ".join(problems))


def _rope_kwargs(cfg: MLLMConfig) -> dict[str, Any]:
    section = list(cfg.mrope_section)
    if _TRANSFORMERS_5:
        return {"rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta,
                                    "mrope_section": section}}
    return {"rope_theta": cfg.rope_theta,
            "rope_scaling": {"type": "mrope", "mrope_section": section}}


def _token_ids(tokenizer) -> dict[str, int]:
    tokens = (ENDOFTEXT, IM_END, IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END)
    return {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}


def build_hf_config(cfg: MLLMConfig, token_ids: Mapping[str, int] | None = None) -> Qwen2VLConfig:
    """The `Qwen2VLConfig` for `cfg`; special-token ids default to the offline tokenizer's."""
    check_mllm_config(cfg)
    ids = dict(token_ids) if token_ids is not None else _token_ids(build_tokenizer(cfg.vocab_size))
    vision = dict(depth=cfg.vision_depth, embed_dim=cfg.vision_embed_dim,
                  hidden_size=cfg.hidden_size,  # the merger projects straight to the LLM width
                  mlp_ratio=int(cfg.vision_mlp_ratio), num_heads=cfg.vision_heads,
                  in_channels=3, patch_size=cfg.patch_size,
                  spatial_merge_size=cfg.spatial_merge_size,
                  temporal_patch_size=cfg.temporal_patch_size)
    text = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                rms_norm_eps=RMS_NORM_EPS, max_position_embeddings=MAX_POSITIONS,
                bos_token_id=ids[ENDOFTEXT], eos_token_id=ids[IM_END], **_rope_kwargs(cfg))
    return Qwen2VLConfig(vision_config=vision, text_config=text,
                         image_token_id=ids[IMAGE_PAD], video_token_id=ids[VIDEO_PAD],
                         vision_start_token_id=ids[VISION_START],
                         vision_end_token_id=ids[VISION_END], tie_word_embeddings=False)


def _rope_settings(text_config) -> tuple[float, tuple[int, ...]]:
    """(rope_theta, mrope_section) from a text config of either transformers generation."""
    params = getattr(text_config, "rope_parameters", None) or {}
    scaling = getattr(text_config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(text_config, "rope_theta", None))
    section = params.get("mrope_section", scaling.get("mrope_section", ()))
    if theta is None:
        raise ValueError("the Qwen2-VL text config has no rope_theta (neither in "
                         "rope_parameters nor as an attribute); it is not a Qwen2-VL config")
    return float(theta), tuple(section)


def mllm_fields(hf_config: Qwen2VLConfig) -> dict[str, Any]:
    """The MLLMConfig fields a Qwen2VLConfig determines (the inverse of build_hf_config)."""
    # Any: the sub-configs' attributes differ between transformers 4.x and 5.x stubs
    v: Any = hf_config.vision_config
    t: Any = hf_config.text_config
    theta, section = _rope_settings(t)
    return {"vision_depth": v.depth, "vision_embed_dim": v.embed_dim,
            "vision_heads": v.num_heads, "vision_mlp_ratio": float(v.mlp_ratio),
            "patch_size": v.patch_size, "spatial_merge_size": v.spatial_merge_size,
            "temporal_patch_size": v.temporal_patch_size, "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size, "num_layers": t.num_hidden_layers,
            "num_heads": t.num_attention_heads, "num_kv_heads": t.num_key_value_heads,
            "vocab_size": t.vocab_size, "mrope_section": section, "rope_theta": theta}


# --- processor and inputs ---------------------------------------------------------------


def _image_processor_class():
    try:
        # transformers >= 5: the PIL backend, chosen explicitly so preprocessing is the same
        # with or without torchvision (and no fallback warning is logged)
        from transformers import Qwen2VLImageProcessorPil
        return Qwen2VLImageProcessorPil
    except ImportError:
        # transformers 4.x: the default class is the PIL/numpy one
        from transformers import Qwen2VLImageProcessor
        return Qwen2VLImageProcessor


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` without its video slot.

    Qwen2-VL's video processor needs torchvision, and CINEMA only feeds images, so this
    subclass drops that slot; everything else (chat template, image resize to patches,
    `image_grid_thw`, `<|image_pad|>` expansion, tokenization) is Qwen2VLProcessor's code.
    """

    # transformers 4.x reads the slots and their classes from these (5.x from __init__):
    # any tokenizer is accepted, since the offline one is not a Qwen2TokenizerFast
    attributes = ["image_processor", "tokenizer"]
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor: Any = None, tokenizer: Any = None,
                 chat_template: str | None = None, **kwargs: Any) -> None:
        self.image_token = IMAGE_PAD
        self.video_token = VIDEO_PAD
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template,
                                **kwargs)


def build_processor(cfg: MLLMConfig) -> ImageOnlyQwen2VLProcessor:
    """Qwen2-VL's processor with the offline tokenizer and `cfg`'s patch and pixel settings."""
    check_mllm_config(cfg)
    image_processor = _image_processor_class()(
        min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, patch_size=cfg.patch_size,
        temporal_patch_size=cfg.temporal_patch_size, merge_size=cfg.spatial_merge_size)
    tokenizer = build_tokenizer(cfg.vocab_size)
    return ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     chat_template=tokenizer.chat_template)


def chat_text(processor: Qwen2VLProcessor, cfg: MLLMConfig, prompt: str, num_refs: int) -> str:
    """The chat the MLLM reads, ending with the assistant's turn about to start."""
    messages = build_messages(prompt, num_refs, cfg.max_refs)
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _as_rgb(images: Sequence[Image.Image]) -> list[Image.Image]:
    if isinstance(images, Image.Image):
        raise TypeError("images must be a list of PIL images, got a single image; wrap it "
                        "in a list")
    rgb = []
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"images[{i}] must be a PIL.Image.Image, got "
                            f"{type(image).__name__}")
        try:
            rgb.append(image.convert("RGB"))
        except (ValueError, OSError) as err:
            raise ValueError(f"images[{i}] (mode {image.mode!r}) cannot be converted to "
                             f"RGB: {err}") from err
    return rgb


def prepare_inputs(processor: Qwen2VLProcessor, cfg: MLLMConfig, prompt: str,
                   images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
    """The "mllm" stage inputs for one prompt and its K reference images (batch of 1).

    No images (the unconditional branch) gives zero-row `pixel_values` and `image_grid_thw`.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    rgb = _as_rgb(images)
    text = chat_text(processor, cfg, prompt, len(rgb))
    batch = processor(text=[text], images=rgb or None, return_tensors="pt")
    if rgb:
        pixel_values = batch["pixel_values"].float()  # (patches, 3 * tp * ps * ps)
        grid = batch["image_grid_thw"].long()  # (K, 3)
    else:
        patch_dim = 3 * cfg.temporal_patch_size * cfg.patch_size ** 2
        pixel_values = torch.zeros(0, patch_dim, dtype=torch.float32)
        grid = torch.zeros(0, 3, dtype=torch.int64)
    tensors = (batch["input_ids"].long(), batch["attention_mask"].long(), pixel_values, grid)
    return dict(zip(INPUT_NAMES, tensors, strict=True))


# --- the encoder ------------------------------------------------------------------------


class MLLMEncoder(nn.Module):
    """Qwen2-VL without its LM head: (input_ids, attention_mask, pixel_values, image_grid_thw)
    -> last-layer hidden states after the final norm, (B, S, D), float32."""

    def __init__(self, model: Qwen2VLModel):
        super().__init__()
        self.model = model

    @property
    def config(self) -> Qwen2VLConfig:
        return self.model.config

    def position_ids(self, input_ids: torch.Tensor, image_grid_thw: torch.Tensor,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Qwen2-VL's M-RoPE position ids, (3, B, S): rows are (time, height, width).

        Text tokens share one position on all rows; image tokens get their patch's grid
        coordinates. Data-dependent Python, so exporters compute it outside the graph.
        """
        grid = image_grid_thw if image_grid_thw.shape[0] > 0 else None
        kwargs: dict[str, Any] = {"image_grid_thw": grid, "attention_mask": attention_mask}
        if _ROPE_INDEX_TAKES_TOKEN_TYPES:
            kwargs["mm_token_type_ids"] = (input_ids == self.config.image_token_id).int()
        # the stubs ask for the legacy LongTensor class; any int64 tensor is one at runtime
        positions, _ = self.model.get_rope_index(cast(torch.LongTensor, input_ids), **kwargs)
        return positions

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pixel_values: torch.Tensor, image_grid_thw: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        # 1. M-RoPE positions, unless precomputed (exported graphs take them as an input)
        if position_ids is None:
            position_ids = self.position_ids(input_ids, image_grid_thw, attention_mask)
        # 2. one prefill pass: vision tower -> image embeddings scattered into the
        #    <|image_pad|> slots -> decoder layers -> final norm; no cache, no LM head
        has_images = pixel_values.shape[0] > 0
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids,
                         pixel_values=pixel_values if has_images else None,
                         image_grid_thw=image_grid_thw if has_images else None,
                         use_cache=False)
        # the stage spec is float32 whatever dtype the weights compute in
        return out.last_hidden_state.float()  # (B, S, D)


# --- create, save, load -----------------------------------------------------------------


def create_mllm(cfg: MLLMConfig, seed: int = 0) -> tuple[MLLMEncoder, ImageOnlyQwen2VLProcessor]:
    """A randomly initialised Qwen2-VL (deterministic given `seed`) and its processor."""
    processor = build_processor(cfg)
    hf_config = build_hf_config(cfg, _token_ids(processor.tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLModel(hf_config)
    return MLLMEncoder(model.float().eval()), processor


def save_mllm(encoder: MLLMEncoder, processor: Qwen2VLProcessor, path: str | Path) -> Path:
    """Write a local Hugging Face folder: config.json, safetensors weights, processor files."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    encoder.model.save_pretrained(path)
    processor.save_pretrained(path)
    logger.info("saved the MLLM to %s", path)
    return path


def _pixel_range(image_processor) -> tuple[int, int]:
    if getattr(image_processor, "min_pixels", None) is not None:  # transformers 4.x
        return image_processor.min_pixels, image_processor.max_pixels
    size = image_processor.size
    return size["shortest_edge"], size["longest_edge"]


def folder_mismatches(hf_config: Qwen2VLConfig, processor: Qwen2VLProcessor,
                      cfg: MLLMConfig) -> list[str]:
    """Every way a saved folder disagrees with `cfg`, as 'field: folder has X, config expects Y'."""
    found = mllm_fields(hf_config)
    found["min_pixels"], found["max_pixels"] = _pixel_range(processor.image_processor)
    expected = dataclasses.asdict(cfg)
    problems = [f"{name}: folder has {value!r}, config expects {expected[name]!r}"
                for name, value in found.items() if value != expected[name]]
    if hf_config.image_token_id != processor.image_token_id:
        problems.append(f"image_token_id: model has {hf_config.image_token_id}, tokenizer "
                        f"has {processor.image_token_id}")
    return problems


def _shape_mismatches(path: Path, hf_config: Qwen2VLConfig) -> list[str]:
    """'shape mismatch NAME: checkpoint (a, b), model (c, d)' for every such tensor.

    Checkpoint names may carry a prefix (e.g. `model.` from the full VLM), so a model
    tensor matches the checkpoint name that ends with it.
    """
    from safetensors import safe_open

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Qwen2VLModel(hf_config).state_dict().items()}
    found = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            found.update({k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()})
    problems = []
    for name, shape in sorted(expected.items()):
        match = next((k for k in found if k == name or k.endswith("." + name)), None)
        if match is not None and found[match] != shape:
            problems.append(f"shape mismatch {name}: checkpoint {found[match]}, model {shape}")
    return problems


def _load_strict(path: Path, hf_config: Qwen2VLConfig, dtype: torch.dtype) -> Qwen2VLModel:
    """from_pretrained, but a missing or mis-shaped tensor is an error, not random init.

    transformers only logs missing keys and initialises them randomly; a checkpoint that
    silently loses a layer must fail like every other stage (weights.CheckpointError).
    `use_safetensors=True` refuses pickle (`pytorch_model.bin`) folders.
    """
    try:
        # output_loading_info=True returns (model, info), which the stubs do not express
        loaded: Any = Qwen2VLModel.from_pretrained(
            path, config=hf_config, local_files_only=True, dtype=dtype, use_safetensors=True,
            output_loading_info=True)
        model, info = loaded
    except OSError as error:
        raise CheckpointError(path, [f"no loadable safetensors weights ({error}); pickle "
                                     "checkpoints are refused: convert them to safetensors"]
                              ) from None
    except RuntimeError as error:  # size mismatches surface as a generic RuntimeError
        raise CheckpointError(path, _shape_mismatches(path, hf_config) or [str(error)]) from None
    problems = [f"missing tensor {k}" for k in sorted(info["missing_keys"])]
    # a checkpoint saved from Qwen2VLForConditionalGeneration also holds the LM head,
    # which the encoder does not use
    problems += [f"unexpected tensor {k}" for k in sorted(info["unexpected_keys"])
                 if not k.startswith("lm_head.")]
    problems += [f"shape mismatch {m}" for m in info["mismatched_keys"]]
    problems += list(info["error_msgs"])
    if problems:
        raise CheckpointError(path, problems)
    return model


def load_mllm(path: str | Path, cfg: MLLMConfig | None = None,
              dtype: torch.dtype = torch.float32) -> tuple[MLLMEncoder, ImageOnlyQwen2VLProcessor]:
    """Load a folder written by `save_mllm` (or a local Qwen2-VL checkpoint) without network.

    With `cfg`, the folder's config must match it field by field.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no MLLM folder at {path} (config.json is missing); write one "
                                f"with save_mllm() or point to a local Qwen2-VL checkpoint")
    hf_config = Qwen2VLConfig.from_pretrained(path, local_files_only=True)
    # the PIL processor on 4.x too, as build_processor uses (and no "slow processor" warning)
    backend: dict[str, Any] = {} if _TRANSFORMERS_5 else {"use_fast": False}
    processor = ImageOnlyQwen2VLProcessor.from_pretrained(path, local_files_only=True, **backend)
    if cfg is not None:
        problems = folder_mismatches(hf_config, processor, cfg)
        if problems:
            raise ValueError(f"MLLM folder {path} does not match the MLLMConfig: "
                             + "; ".join(problems)
                             + ". Load it with the config it was saved with, or re-create it.")
    model = _load_strict(path, hf_config, dtype)
    logger.info("loaded the MLLM from %s", path)
    return MLLMEncoder(model.eval()), processor

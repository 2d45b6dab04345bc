"""The MLLM stage split into two exportable graphs, and the glue that joins them again.

Qwen2-VL's forward mixes graph-friendly math with data-dependent bookkeeping: per-image
`cu_seqlens` and a Python loop of attention calls in the vision tower, `.tolist()` rope
indices, a `masked_scatter` whose size depends on the token ids. None of that traces with
dynamic shapes, so the bookkeeping moves out of the graphs:

- `mllm_vision`: the vision tower on flat patches. Rotary cos/sin tables and a per-patch
  segment id (which image, i.e. which `cu_seqlens` span, a patch belongs to) are inputs;
  per-image attention becomes one attention with a block-diagonal mask built in the graph
  from the segment ids (same result as HF's loop over images, one kernel).
- `mllm_text`: the LLM prefill from `inputs_embeds` and the 3-row M-RoPE `position_ids`
  to the final-norm hidden states.
- `SplitMLLM` (torch, outside any graph): token-embedding lookup from the saved embedding
  table, vision side inputs, M-RoPE position ids (transformers' own `get_rope_index`), and
  the scatter of image embeddings into the `<|image_pad|>` slots. Composed with two runners
  it honours the MLLM stage's contract (models/stage_mllm.py, which composes them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2VLConfig, Qwen2VLModel
from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    Qwen2VLVisionRotaryEmbedding,
    apply_rotary_pos_emb_vision,
)
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids

from .fileio import atomic_path, atomic_write, sha256_file
from .mllm import MLLMEncoder
from .runner import Runner, Tensors

HF_CONFIG_FILE = "qwen2vl_config.json"
EMBEDDINGS_FILE = "embeddings.safetensors"
GLUE_FILES = (HF_CONFIG_FILE, EMBEDDINGS_FILE)
EMBEDDINGS_KEY = "embed_tokens.weight"


class VisionTower(nn.Module):
    """Qwen2-VL's vision tower with the per-image attention written as one masked attention.

    forward(pixel_values (P, patch_dim), rotary_cos / rotary_sin (P, head_dim),
    segment_ids (P,)) -> image_embeds (P / merge**2, hidden). Weights are the HF modules'.
    """

    # Any: HF's modules reach mypy only through nn.Module.__getattr__ (Tensor | Module)
    def __init__(self, visual: Any):
        super().__init__()
        self.visual = visual
        self.heads = visual.config.num_heads

    def _attention(self, attn: Any, x: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """HF VisionAttention.forward with `mask` in place of the cu_seqlens split."""
        patches = x.shape[0]
        q, k, v = attn.qkv(x).reshape(patches, 3, self.heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)  # (P, H, D)
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # (1, H, P, D)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)
        return attn.proj(out.squeeze(0).transpose(0, 1).reshape(patches, -1))

    def forward(self, pixel_values: torch.Tensor, rotary_cos: torch.Tensor,
                rotary_sin: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        # 1. patch embedding (a Conv3d over each flattened patch)
        x = self.visual.patch_embed(pixel_values)  # (P, E)
        # 2. patches attend within their own image only: block-diagonal mask
        mask = segment_ids[:, None] == segment_ids[None, :]  # (P, P) bool
        blocks: Any = self.visual.blocks
        for block in blocks:
            x = x + self._attention(block.attn, block.norm1(x), rotary_cos, rotary_sin, mask)
            x = x + block.mlp(block.norm2(x))
        # 3. merge merge x merge neighbouring patches and project to the LLM width
        return self.visual.merger(x)  # (P / merge**2, hidden)


class TextPrefill(nn.Module):
    """forward(inputs_embeds (B, S, D), attention_mask (B, S), position_ids (3, B, S))
    -> last hidden states after the final norm, (B, S, D) float32."""

    def __init__(self, language_model: nn.Module):
        super().__init__()
        self.language_model = language_model

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=position_ids, use_cache=False)
        return out.last_hidden_state.float()


def vision_inputs(vision_config: Any,  # Qwen2-VL's vision config (4.x and 5.x classes)
                  pixel_values: torch.Tensor,
                  grid_thw: torch.Tensor) -> Tensors:
    """Everything `mllm_vision` needs besides the pixels, computed as transformers does.

    pixel_values (P, patch_dim), grid_thw (K, 3) -> the four mllm_vision inputs.
    """
    positions = get_vision_position_ids(grid_thw, vision_config.spatial_merge_size)  # (P, 2)
    # no weights in the rotary module: building it per call costs microseconds
    cos, sin = Qwen2VLVisionRotaryEmbedding(vision_config)(pixel_values, positions)
    cu_seqlens = get_vision_cu_seqlens(grid_thw).long()  # (segments + 1,)
    segments = torch.arange(cu_seqlens.numel() - 1)
    segment_ids = segments.repeat_interleave(cu_seqlens.diff())  # (P,)
    return {"pixel_values": pixel_values.float(), "rotary_cos": cos.float(),
            "rotary_sin": sin.float(), "segment_ids": segment_ids}


class SplitMLLM:
    """The torch glue around the two graphs (nothing here is a learned computation except
    the embedding lookup, a gather from the saved table)."""

    def __init__(self, hf_config: Qwen2VLConfig, embed_weight: torch.Tensor):
        # get_rope_index only reads the config: a meta-device model costs no memory
        with torch.device("meta"):
            self._positions = MLLMEncoder(Qwen2VLModel(hf_config))
        self.vision_config = hf_config.vision_config
        self.image_token_id = hf_config.image_token_id
        self.embed_weight = embed_weight  # (vocab, D)

    def text_inputs(self, inputs: Mapping[str, torch.Tensor],
                    image_embeds: torch.Tensor | None) -> Tensors:
        """inputs_embeds with the image embeddings in the <|image_pad|> slots, M-RoPE ids."""
        input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
        embeds = F.embedding(input_ids, self.embed_weight)  # (B, S, D)
        if image_embeds is not None:
            slots = input_ids == self.image_token_id  # (B, S)
            if int(slots.sum()) != image_embeds.shape[0]:
                raise ValueError(f"input_ids hold {int(slots.sum())} <|image_pad|> tokens but "
                                 f"the images give {image_embeds.shape[0]} embeddings; build "
                                 f"the inputs with models.mllm.prepare_inputs")
            embeds = embeds.masked_scatter(slots[..., None], image_embeds.to(embeds.dtype))
        positions = self._positions.position_ids(input_ids, inputs["image_grid_thw"], mask)
        return {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions}

    def run(self, vision: Runner, text: Runner, inputs: Mapping[str, torch.Tensor]) -> Tensors:
        """The "mllm" stage: (input_ids, attention_mask, pixel_values, image_grid_thw) ->
        hidden_states, with the vision tower skipped when there are no images."""
        image_embeds = None
        if inputs["pixel_values"].shape[0] > 0:
            side = vision_inputs(self.vision_config, inputs["pixel_values"],
                                 inputs["image_grid_thw"])
            image_embeds = vision.run(side)["image_embeds"]
        return text.run(self.text_inputs(inputs, image_embeds))


def save_glue(encoder: MLLMEncoder, text_dir: str | os.PathLike) -> dict[str, str]:
    """Write what `SplitMLLM` needs next to the mllm_text graph: HF config + embeddings.
    Returns {file name: sha256} for the stage manifest's `sidecars`."""
    from safetensors.torch import save_file

    text_dir = Path(text_dir)
    atomic_write(text_dir / HF_CONFIG_FILE, encoder.config.to_json_string())
    weight = encoder.model.language_model.embed_tokens.weight.detach().float().contiguous()
    with atomic_path(text_dir / EMBEDDINGS_FILE) as tmp:
        save_file({EMBEDDINGS_KEY: weight}, str(tmp))
    return {name: sha256_file(text_dir / name) for name in GLUE_FILES}


def load_glue(text_dir: str | os.PathLike) -> SplitMLLM:
    """The glue beside an mllm_text export (its manifest's sidecars, whose hashes the
    runners check: export/stage_runners.py)."""
    from safetensors.torch import load_file

    config_path, embeddings = (Path(text_dir) / name for name in GLUE_FILES)
    for path in (config_path, embeddings):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the mllm_text export writes it; "
                                    f"re-export with --stages mllm_text")
    hf_config = Qwen2VLConfig.from_dict(json.loads(config_path.read_text()))
    return SplitMLLM(hf_config, load_file(str(embeddings))[EMBEDDINGS_KEY])


def text_calibration(embed_weight: torch.Tensor, batch: int, seq: int,
                     seed: int = 0) -> dict[str, Any]:
    """Text-graph inputs of `batch` prompts of `seq` random in-vocabulary tokens: their rows
    of the token-embedding table (what the glue feeds the graph), a full mask and text
    positions on all three M-RoPE rows."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, embed_weight.shape[0], (batch, seq), generator=generator)
    return {"inputs_embeds": embed_weight[ids].float().numpy(),
            "attention_mask": torch.ones((batch, seq), dtype=torch.int64).numpy(),
            "position_ids": torch.arange(seq).expand(3, batch, seq).contiguous().numpy()}

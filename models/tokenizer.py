"""The MLLM's text side: an offline Qwen2-style tokenizer, its chat template, CINEMA's instruction.

Model hubs are unreachable, so the tokenizer is built here rather than downloaded: a byte-level
BPE (the 256 byte tokens, so any text encodes, plus merges trained deterministically on the
instruction below, which keeps prompts short) followed by Qwen2-VL's special tokens. Real
checkpoints bring their own tokenizer in their local folder; this one only has to be
self-consistent with the randomly initialised models built from presets.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

from .presets import check_num_refs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Qwen2-VL's special tokens, in Qwen's order (ids follow the byte tokens and merges)
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

BYTE_TOKENS = 256
MAX_MERGES = 128  # the instruction text saturates well before this

SYSTEM_PROMPT = (
    "You are a film director's assistant. You are given reference images of one or more "
    "subjects and a prompt for a video. Describe the video in detail: the scene, the motion "
    "and the camera. Keep the identity of every subject consistent with its reference image: "
    "the same face, body, clothing, colours and shape."
)
REQUEST = ("Describe the video for this prompt, keeping the identities of the subjects "
           "shown above.")

# Qwen2-VL's chat template (image and text parts; videos are not used by CINEMA)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_messages(prompt: str, num_refs: int, max_refs: int) -> list[dict[str, Any]]:
    """CINEMA's chat: the system instruction, then "Subject k: <image>" for each reference
    followed by the prompt and the request to describe the video.

    `num_refs=0` is only for the unconditional (negative) branch, whose prompt is empty.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if num_refs == 0:
        if prompt:
            raise ValueError(f"got a prompt ({prompt[:40]!r}) with 0 reference images; "
                             f"between 1 and {max_refs} are needed (0 only for the "
                             f"unconditional branch, whose prompt is empty)")
        return [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": [{"type": "text", "text": ""}]}]
    check_num_refs(num_refs, max_refs)
    content: list[dict[str, str]] = []
    for k in range(1, num_refs + 1):
        content.append({"type": "text", "text": f"Subject {k}: "})
        content.append({"type": "image"})
        content.append({"type": "text", "text": "\n"})
    content.append({"type": "text", "text": f"Prompt: {prompt}\n{REQUEST}"})
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


def _training_text() -> str:
    """The fixed corpus the merges are learnt from: what the tokenizer encodes most."""
    subjects = "".join(f"Subject {k}: \n" for k in range(1, 10))
    return "\n".join([SYSTEM_PROMPT, subjects, f"Prompt: {REQUEST}", "system", "user",
                      "assistant", "a person a dog a cat walking running in the street"])


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """The serialised `tokenizers.Tokenizer` (cached: training takes a few milliseconds,
    and serialising makes every caller get its own mutable copy)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BYTE_TOKENS + MAX_MERGES, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([_training_text()], trainer)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer.to_str()


def special_token_ids() -> dict[str, int]:
    """{special token: id} of the offline tokenizer."""
    vocab = json.loads(_tokenizer_json())
    return {t["content"]: t["id"] for t in vocab["added_tokens"]}


def tokenizer_size() -> int:
    return max(special_token_ids().values()) + 1


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """The offline tokenizer as a transformers fast tokenizer (what Qwen2VLProcessor takes)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    size = tokenizer_size()
    if size > vocab_size:
        raise ValueError(f"the offline tokenizer has {size} tokens but MLLMConfig.vocab_size="
                         f"{vocab_size}; set vocab_size >= {size}")
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        # Qwen2's roles: <|endoftext|> pads, <|im_end|> ends a turn
        eos_token=IM_END, pad_token=ENDOFTEXT, chat_template=CHAT_TEMPLATE,
        model_max_length=32768)

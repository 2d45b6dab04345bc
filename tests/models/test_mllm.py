"""MLLM encoder: transformers' Qwen2-VL read out as last-layer hidden states, built offline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2VLForConditionalGeneration

from cinema_trt.models import tokenizer as tok
from cinema_trt.models.mllm import (
    build_hf_config,
    build_processor,
    chat_text,
    create_mllm,
    load_mllm,
    mllm_fields,
    prepare_inputs,
    save_mllm,
)
from cinema_trt.models.stages import MLLM
from cinema_trt.models.weights import CheckpointError

# Same weights, same ops, same shapes: outputs that should agree come out bit-identical on
# CPU. Where two computations legitimately differ in summation order (batched vs single,
# a different key set under a causal mask), 1e-5 on O(1) hidden states is ~100x float32
# round-off yet far below the >= 1e-2 change any real dependency produces here.
ORDER_ATOL = 1e-5


@pytest.fixture(scope="module")
def cfg(tiny_config):
    return tiny_config.mllm


@pytest.fixture(scope="module")
def mllm(cfg):
    return create_mllm(cfg, seed=0)


def _image(seed: int, height: int = 64, width: int = 48) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _refs(k: int) -> list[Image.Image]:
    # awkward sizes on purpose: none is a multiple of the 28-pixel merged patch
    sizes = [(64, 48), (97, 61), (30, 200), (50, 50)]
    return [_image(i, *sizes[i % len(sizes)]) for i in range(k)]


def _image_token_positions(inputs, image_token_id: int) -> torch.Tensor:
    return (inputs["input_ids"][0] == image_token_id).nonzero().flatten()


# --- configuration and tokenizer --------------------------------------------------------


def test_hf_config_carries_every_model_field(cfg):
    hf = build_hf_config(cfg)
    model_fields = {k: v for k, v in dataclasses.asdict(cfg).items()
                    if k not in ("min_pixels", "max_pixels", "max_refs", "hf_id")}
    assert mllm_fields(hf) == model_fields
    # the vision merger projects straight into the language model's width
    assert hf.vision_config.hidden_size == cfg.hidden_size


def test_inconsistent_rope_sections_are_rejected(cfg):
    bad = dataclasses.replace(cfg, mrope_section=(2, 2, 2))  # head_dim / 2 is 8, not 6
    with pytest.raises(ValueError, match=r"mrope_section=\(2, 2, 2\) must sum to"):
        build_hf_config(bad)


def test_offline_tokenizer_is_deterministic_and_byte_complete(cfg):
    first, second = tok.build_tokenizer(cfg.vocab_size), tok.build_tokenizer(cfg.vocab_size)
    assert first.get_vocab() == second.get_vocab()
    text = "Ünïcödé 字 🎬 tabs\tand\nnewlines"  # byte-level BPE: nothing is unknown
    assert first.decode(first(text)["input_ids"]) == text
    ids = tok.special_token_ids()
    assert sorted(ids) == sorted(tok.SPECIAL_TOKENS)
    assert len(set(ids.values())) == len(ids) and max(ids.values()) < cfg.vocab_size


def test_vocab_too_small_for_the_tokenizer_is_rejected(cfg):
    small = dataclasses.replace(cfg, vocab_size=300)
    with pytest.raises(ValueError, match=f"{tok.tokenizer_size()} tokens but "
                                         r"MLLMConfig.vocab_size=300"):
        build_processor(small)


# --- the CINEMA instruction -------------------------------------------------------------


def test_chat_interleaves_subjects_with_images_then_the_prompt(mllm, cfg):
    _, processor = mllm
    text = chat_text(processor, cfg, "two friends dance", 3)
    image = f"{tok.VISION_START}{tok.IMAGE_PAD}{tok.VISION_END}"
    assert text.startswith(f"{tok.IM_START}system\n{tok.SYSTEM_PROMPT}{tok.IM_END}")
    marks = [text.index(f"Subject {k}: {image}") for k in (1, 2, 3)]
    assert marks == sorted(marks) and "Subject 4" not in text
    assert text.index("Prompt: two friends dance") > marks[-1]
    assert text.endswith(f"{tok.IM_START}assistant\n")


@pytest.mark.parametrize("prompt, num_refs, error, match", [
    ("a cat", 5, ValueError, "between 1 and 4"),
    ("a cat", 0, ValueError, "0 only for the unconditional branch"),
    (b"a cat", 1, TypeError, "prompt must be a str"),
])
def test_invalid_requests_are_rejected(mllm, cfg, prompt, num_refs, error, match):
    _, processor = mllm
    with pytest.raises(error, match=match):
        prepare_inputs(processor, cfg, prompt, _refs(num_refs))


def test_images_must_be_pil(mllm, cfg):
    _, processor = mllm
    with pytest.raises(TypeError, match=r"images\[1\] must be a PIL.Image.Image, got ndarray"):
        prepare_inputs(processor, cfg, "a cat", [_image(0), np.zeros((8, 8, 3), np.uint8)])


def test_grey_and_rgba_images_are_converted_to_rgb(mllm, cfg):
    _, processor = mllm
    rgb = _image(0)
    converted = prepare_inputs(processor, cfg, "a cat", [rgb.convert("L").convert("RGBA")])
    grey = prepare_inputs(processor, cfg, "a cat", [rgb.convert("L").convert("RGB")])
    torch.testing.assert_close(converted["pixel_values"], grey["pixel_values"], atol=0, rtol=0)


# --- inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize("num_refs", [1, 2, 3, 4])
def test_inputs_follow_the_stage_spec(mllm, cfg, tiny_config, num_refs):
    _, processor = mllm
    inputs = prepare_inputs(processor, cfg, "a cat", _refs(num_refs))
    spec = MLLM.spec(tiny_config)
    assert tuple(inputs) == spec.input_names
    for tensor_spec in spec.inputs:
        tensor = inputs[tensor_spec.name]
        assert tensor.dtype == tensor_spec.dtype, tensor_spec.name
        fixed = [(i, d) for i, d in enumerate(tensor_spec.dims) if isinstance(d, int)]
        assert all(tensor.shape[i] == d for i, d in fixed), tensor_spec.name
    assert inputs["image_grid_thw"].shape == (num_refs, 3)
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape
    assert inputs["attention_mask"].eq(1).all()


@pytest.mark.parametrize("num_refs", [1, 4])
def test_each_image_expands_to_its_merged_patch_count(mllm, cfg, num_refs):
    encoder, processor = mllm
    inputs = prepare_inputs(processor, cfg, "a cat", _refs(num_refs))
    grid = inputs["image_grid_thw"]
    pads = _image_token_positions(inputs, encoder.config.image_token_id)
    assert len(pads) == int(grid.prod(-1).sum()) // cfg.spatial_merge_size ** 2
    assert inputs["pixel_values"].shape[0] == int(grid.prod(-1).sum())
    # every image is resized to whole merged patches (28 x 28 pixels in the tiny preset)
    assert (grid[:, 1:] % cfg.spatial_merge_size == 0).all()


def test_unconditional_inputs_have_no_image_rows(mllm, cfg):
    encoder, processor = mllm
    inputs = prepare_inputs(processor, cfg, "", [])
    assert inputs["pixel_values"].shape == (0, 3 * cfg.temporal_patch_size * cfg.patch_size ** 2)
    assert inputs["image_grid_thw"].shape == (0, 3)
    assert len(_image_token_positions(inputs, encoder.config.image_token_id)) == 0
    hidden = encoder(**inputs)
    assert hidden.shape == (1, inputs["input_ids"].shape[1], cfg.hidden_size)
    assert torch.isfinite(hidden).all()


# --- the encoder ------------------------------------------------------------------------


@pytest.mark.parametrize("num_refs", [1, 2, 3, 4])
def test_hidden_states_are_one_row_per_token(mllm, cfg, num_refs):
    encoder, processor = mllm
    inputs = prepare_inputs(processor, cfg, "a cat", _refs(num_refs))
    hidden = encoder(**inputs)
    assert hidden.shape == (1, inputs["input_ids"].shape[1], 64)  # tiny: hidden_size 64
    assert hidden.dtype == torch.float32
    assert torch.isfinite(hidden).all()


def test_hidden_states_are_qwen2vl_last_layer_after_the_final_norm(mllm, cfg):
    encoder, processor = mllm
    inputs = prepare_inputs(processor, cfg, "a cat", _refs(2))
    full = Qwen2VLForConditionalGeneration(encoder.config).eval()
    full.model.load_state_dict(encoder.model.state_dict())
    positions = encoder.position_ids(inputs["input_ids"], inputs["image_grid_thw"],
                                     inputs["attention_mask"])
    with torch.no_grad():
        reference = full(**inputs, position_ids=positions, output_hidden_states=True)
    torch.testing.assert_close(encoder(**inputs), reference.hidden_states[-1], atol=0, rtol=0)


def test_same_inputs_give_identical_outputs(cfg, mllm):
    encoder, processor = mllm
    inputs = prepare_inputs(processor, cfg, "a cat", _refs(2))
    again, _ = create_mllm(cfg, seed=0)
    assert torch.equal(encoder(**inputs), encoder(**inputs))
    assert torch.equal(encoder(**inputs), again(**inputs))
    other, _ = create_mllm(cfg, seed=1)
    assert not torch.allclose(encoder(**inputs), other(**inputs), atol=ORDER_ATOL)


def test_changing_a_reference_changes_the_states_from_its_tokens_on(mllm, cfg):
    encoder, processor = mllm
    refs = _refs(2)
    before = prepare_inputs(processor, cfg, "a cat", refs)
    after = prepare_inputs(processor, cfg, "a cat", [refs[0], _image(99, 97, 61)])
    assert torch.equal(before["input_ids"], after["input_ids"])  # same size, new pixels
    first_changed = _image_token_positions(before, encoder.config.image_token_id)[
        int(before["image_grid_thw"][0].prod()) // cfg.spatial_merge_size ** 2]
    h_before, h_after = encoder(**before), encoder(**after)
    # causal attention: everything before the second image cannot see it
    torch.testing.assert_close(h_after[:, :first_changed], h_before[:, :first_changed],
                               atol=ORDER_ATOL, rtol=0)
    change = (h_after[:, first_changed:] - h_before[:, first_changed:]).abs().amax(-1)
    assert (change > 1e-3).all()  # every later token, the last (read by the DiT) included


def test_prompt_changes_the_states(mllm, cfg):
    encoder, processor = mllm
    refs = _refs(1)
    cat = encoder(**prepare_inputs(processor, cfg, "a cat", refs))
    dog = encoder(**prepare_inputs(processor, cfg, "a dog", refs))
    assert cat.shape == dog.shape and not torch.allclose(cat, dog, atol=1e-3)


def test_position_ids_are_mrope_grid_coordinates_for_image_tokens(mllm, cfg):
    encoder, processor = mllm
    inputs = prepare_inputs(processor, cfg, "a cat", _refs(1))  # 64x48 -> 2x2 merged tokens
    positions = encoder.position_ids(inputs["input_ids"], inputs["image_grid_thw"],
                                     inputs["attention_mask"])
    seq = inputs["input_ids"].shape[1]
    assert positions.shape == (3, 1, seq) and positions.dtype == torch.int64
    image = _image_token_positions(inputs, encoder.config.image_token_id)
    text = torch.ones(seq, dtype=torch.bool)
    text[image] = False
    assert (positions[:, 0, text] == positions[0, 0, text]).all()  # text: one 1D position
    start = positions[0, 0, image[0]]
    t, h, w = (positions[row, 0, image] - start for row in range(3))
    assert t.tolist() == [0, 0, 0, 0]
    assert h.tolist() == [0, 0, 1, 1] and w.tolist() == [0, 1, 0, 1]
    # the text after the image resumes after the image's largest coordinate
    assert positions[0, 0, image[-1] + 1] == start + 2


def test_precomputed_position_ids_give_the_same_states(mllm, cfg):
    encoder, processor = mllm
    inputs = prepare_inputs(processor, cfg, "a cat", _refs(3))
    positions = encoder.position_ids(inputs["input_ids"], inputs["image_grid_thw"],
                                     inputs["attention_mask"])
    assert torch.equal(encoder(**inputs, position_ids=positions), encoder(**inputs))


def test_right_padded_batch_matches_single_samples(mllm, cfg):
    encoder, processor = mllm
    samples = [prepare_inputs(processor, cfg, "a cat", _refs(2)),
               prepare_inputs(processor, cfg, "", [])]
    seq = max(s["input_ids"].shape[1] for s in samples)
    pad_id = processor.tokenizer.pad_token_id

    def pad(tensor, value):
        return torch.nn.functional.pad(tensor, (0, seq - tensor.shape[1]), value=value)

    batch = {"input_ids": torch.cat([pad(s["input_ids"], pad_id) for s in samples]),
             "attention_mask": torch.cat([pad(s["attention_mask"], 0) for s in samples]),
             "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
             "image_grid_thw": torch.cat([s["image_grid_thw"] for s in samples])}
    hidden = encoder(**batch)
    for row, sample in enumerate(samples):
        length = sample["input_ids"].shape[1]
        torch.testing.assert_close(hidden[row : row + 1, :length], encoder(**sample),
                                   atol=ORDER_ATOL, rtol=0)


# --- save and load ----------------------------------------------------------------------


def test_save_load_round_trip_is_bit_identical(mllm, cfg, tmp_path):
    encoder, processor = mllm
    folder = save_mllm(encoder, processor, tmp_path / "mllm")
    assert (folder / "config.json").is_file()
    assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))
    loaded, loaded_processor = load_mllm(folder, cfg)
    inputs = prepare_inputs(processor, cfg, "a cat", _refs(3))
    loaded_inputs = prepare_inputs(loaded_processor, cfg, "a cat", _refs(3))
    for name in inputs:
        assert torch.equal(inputs[name], loaded_inputs[name]), name
    assert torch.equal(loaded(**loaded_inputs), encoder(**inputs))


def test_folder_saved_with_another_hidden_size_is_rejected(cfg, tmp_path):
    # 32 / 4 heads = head_dim 8, so M-RoPE sections must sum to 4
    narrow = dataclasses.replace(cfg, hidden_size=32, mrope_section=(1, 1, 2))
    save_mllm(*create_mllm(narrow), tmp_path / "narrow")
    with pytest.raises(ValueError, match="hidden_size: folder has 32, config expects 64"):
        load_mllm(tmp_path / "narrow", cfg)


def test_missing_folder_is_reported(cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_mllm(tmp_path / "nowhere", cfg)


def test_full_qwen2vl_checkpoint_folder_loads_without_its_lm_head(mllm, cfg, tmp_path):
    # real checkpoints hold Qwen2VLForConditionalGeneration (LM head included)
    encoder, processor = mllm
    full = Qwen2VLForConditionalGeneration(encoder.config)
    full.model.load_state_dict(encoder.model.state_dict())
    full.save_pretrained(tmp_path / "full")
    processor.save_pretrained(tmp_path / "full")
    loaded, _ = load_mllm(tmp_path / "full", cfg)
    assert not any("lm_head" in name for name, _ in loaded.named_parameters())
    inputs = prepare_inputs(processor, cfg, "a cat", _refs(2))
    assert torch.equal(loaded(**inputs), encoder(**inputs))


def _rewrite_weights(folder, edit):
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_a_checkpoint_missing_a_tensor_fails_and_names_it(mllm, cfg, tmp_path):
    # transformers would initialise the missing layer randomly; we refuse instead
    folder = save_mllm(*mllm, tmp_path / "mllm")
    victim = "language_model.layers.0.mlp.gate_proj.weight"
    _rewrite_weights(folder, lambda t: t.pop(next(k for k in t if k.endswith(victim))))
    with pytest.raises(CheckpointError, match=r"missing tensor .*layers\.0\.mlp\.gate_proj"):
        load_mllm(folder, cfg)


def test_a_checkpoint_with_a_wrong_shape_fails_and_names_the_tensor(mllm, cfg, tmp_path):
    folder = save_mllm(*mllm, tmp_path / "mllm")
    victim = "language_model.norm.weight"

    def shrink(tensors):
        key = next(k for k in tensors if k.endswith(victim))
        tensors[key] = tensors[key][:-1].clone()

    _rewrite_weights(folder, shrink)
    with pytest.raises(CheckpointError, match=r"language_model\.norm\.weight"):
        load_mllm(folder, cfg)


def test_a_pickle_checkpoint_folder_is_refused(mllm, cfg, tmp_path):
    folder = save_mllm(*mllm, tmp_path / "mllm")
    from safetensors.torch import load_file

    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="pickle checkpoints are refused"):
        load_mllm(folder, cfg)

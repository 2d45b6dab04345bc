"""Stage checkpoints: safetensors only, atomic writes, strict loads that name every problem."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from torch import nn

from cinema_trt.models.aligner import create_aligner
from cinema_trt.models.fileio import sha256_file
from cinema_trt.models.weights import CheckpointError, load_stage, read_metadata, save_stage


def _small_net(seed: int = 0, hidden: int = 4) -> nn.Sequential:
    # BatchNorm brings buffers, including an int64 one (num_batches_tracked)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, hidden), nn.BatchNorm1d(hidden), nn.Linear(hidden, 2))
    net[1].running_mean.normal_()
    return net


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name  # bit-identical, not close


def test_small_module_round_trip_is_bit_identical(tmp_path):
    source, fresh = _small_net(seed=0), _small_net(seed=1)
    path = save_stage(source, tmp_path / "net.safetensors")
    assert load_stage(fresh, path) is fresh
    _assert_same_state(source, fresh)


def test_aligner_round_trip_gives_identical_outputs(tmp_path, tiny_config):
    cfg = tiny_config.aligner
    source, fresh = create_aligner(cfg, seed=0), create_aligner(cfg, seed=1)
    save_stage(source, tmp_path / "connector.safetensors")
    load_stage(fresh, tmp_path / "connector.safetensors")
    _assert_same_state(source, fresh)
    hidden, mask = torch.randn(2, 5, cfg.in_dim), torch.ones(2, 5, dtype=torch.int64)
    assert torch.equal(fresh(hidden, mask), source(hidden, mask))


def test_metadata_is_stored(tmp_path):
    path = save_stage(_small_net(), tmp_path / "net.safetensors", {"config": '{"width": 4}'})
    meta = read_metadata(path)
    assert meta["config"] == '{"width": 4}'
    assert meta["format"] == "pt"
    with pytest.raises(ValueError, match="str to str"):
        save_stage(_small_net(), tmp_path / "bad.safetensors", {"width": 4})


def test_wrong_shape_names_the_tensor_and_both_shapes(tmp_path):
    path = save_stage(_small_net(hidden=4), tmp_path / "net.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_stage(_small_net(hidden=5), path)
    message = str(info.value)
    assert "0.weight" in message and "(4, 3)" in message and "(5, 3)" in message
    assert "2.weight" in message and "(2, 4)" in message and "(2, 5)" in message


def test_missing_and_unexpected_keys_are_all_listed_at_once(tmp_path):
    path = save_stage(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
                      tmp_path / "net.safetensors")
    target = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 7), nn.Linear(7, 1))
    target[0] = nn.Linear(3, 4, bias=False)
    with pytest.raises(CheckpointError) as info:
        load_stage(target, path)
    message = str(info.value)
    assert "missing key 3.weight" in message and "missing key 3.bias" in message
    assert "unexpected key 0.bias" in message
    assert "shape mismatch 2.weight" in message and "shape mismatch 2.bias" in message
    assert len(info.value.problems) == 5
    assert isinstance(info.value, ValueError)


def test_dtype_mismatch_is_named(tmp_path):
    path = save_stage(nn.Linear(3, 4).half(), tmp_path / "half.safetensors")
    with pytest.raises(CheckpointError, match=r"dtype mismatch weight: checkpoint F16"):
        load_stage(nn.Linear(3, 4), path)


def test_failed_load_leaves_the_module_untouched(tmp_path):
    path = save_stage(_small_net(seed=0, hidden=4), tmp_path / "net.safetensors")
    target = _small_net(seed=1, hidden=4)
    target.append(nn.Linear(2, 2))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_stage(target, path)
    for name, value in target.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("name", ["net.pt", "net.bin", "net.ckpt", "net.pth", "net.npz"])
def test_non_safetensors_files_are_refused_even_if_they_exist(tmp_path, name):
    path = tmp_path / name
    torch.save(_small_net().state_dict(), path)
    with pytest.raises(CheckpointError, match="convert it"):
        load_stage(_small_net(), path)


def test_a_renamed_pickle_is_refused(tmp_path):
    path = tmp_path / "net.safetensors"
    torch.save(_small_net().state_dict(), path)
    with pytest.raises(CheckpointError, match="not the safetensors layout"):
        load_stage(_small_net(), path)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_stage(_small_net(), path)


def test_save_requires_the_safetensors_suffix(tmp_path):
    with pytest.raises(ValueError, match=".safetensors"):
        save_stage(_small_net(), tmp_path / "net.pt")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    path = tmp_path / "net.safetensors"
    save_stage(_small_net(seed=0), path)
    save_stage(_small_net(seed=1), path)  # overwrite in place
    assert os.listdir(tmp_path) == ["net.safetensors"]
    _assert_same_state(load_stage(_small_net(seed=2), path), _small_net(seed=1))


def test_failed_write_keeps_the_old_file_and_no_temp_files(tmp_path):
    path = tmp_path / "net.safetensors"
    save_stage(_small_net(seed=0), path)
    digest = sha256_file(path)
    # the rename fails after the temporary file was fully written: a directory is in the way
    blocked = tmp_path / "blocked.safetensors"
    blocked.mkdir()
    with pytest.raises(OSError):
        save_stage(_small_net(seed=1), blocked)
    assert sorted(os.listdir(tmp_path)) == ["blocked.safetensors", "net.safetensors"]
    assert os.listdir(blocked) == []
    # an unsupported dtype fails before anything is written
    bad = nn.Module()
    bad.register_buffer("x", torch.zeros(2, dtype=torch.complex128))
    with pytest.raises(ValueError, match="complex128"):
        save_stage(bad, path)
    assert sha256_file(path) == digest
    assert sorted(os.listdir(tmp_path)) == ["blocked.safetensors", "net.safetensors"]


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    data = os.urandom(2 * (1 << 20) + 123)  # spans three 1 MiB reads
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert sha256_file(path) != hashlib.sha256(data).hexdigest()

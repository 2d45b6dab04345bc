"""Integrity: only safetensors weights are ever loaded, and the server listens on loopback.

The pickles planted here are canaries: unpickling one creates a marker folder, so a test
sees not only that loading failed but that no pickle code ran on the way.
"""

import ipaddress
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from cinema_trt.models.factory import load_models
from cinema_trt.models.weights import CheckpointError
from cinema_trt.serving.server import LOOPBACK, ServerConfig
from cinema_trt.serving.stage_model import load_stage_runner


class _Canary:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _plant(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"weight": _Canary(marker)}))


@pytest.fixture
def weights(tiny_weights, tmp_path) -> Path:
    """A private copy of the tiny weights folder, free to tamper with."""
    return Path(shutil.copytree(tiny_weights, tmp_path / "weights"))


@pytest.mark.parametrize("filename", ["dit.safetensors", "vae.safetensors",
                                      "connector.safetensors"])
def test_load_models_refuses_a_pickle_renamed_to_safetensors(weights, tmp_path, filename):
    marker = tmp_path / "pickle-ran"
    _plant(weights / filename, marker)
    with pytest.raises(CheckpointError, match=f"{filename} has a .safetensors name but not "
                                              "the safetensors layout"):
        load_models(weights)
    assert not marker.exists()


def test_load_models_ignores_a_pickle_beside_a_missing_safetensors(weights, tmp_path):
    marker = tmp_path / "pickle-ran"
    (weights / "dit.safetensors").unlink()
    _plant(weights / "dit.bin", marker)
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*dit.safetensors"):
        load_models(weights)
    assert not marker.exists()


@pytest.mark.parametrize("stage,filename", [("dit", "dit.safetensors"),
                                            ("vae_encoder", "vae.safetensors"),
                                            ("vae_decoder", "vae.safetensors"),
                                            ("connector", "connector.safetensors")])
def test_the_serving_stage_refuses_a_pickle_in_its_version_folder(weights, tmp_path, stage,
                                                                  filename):
    from cinema_trt.models.factory import CONFIG_FILE

    # a stage's version folder, as serving/repo.py lays it out: config + its own weights
    folder = tmp_path / stage / "1"
    folder.mkdir(parents=True)
    shutil.copy(weights / CONFIG_FILE, folder / CONFIG_FILE)
    marker = tmp_path / "pickle-ran"
    _plant(folder / filename, marker)
    with pytest.raises(CheckpointError, match="not the safetensors layout"):
        load_stage_runner(folder, stage)
    assert not marker.exists()


def _pickle_only_mllm(weights: Path) -> None:
    """The MLLM folder with its safetensors replaced by an equivalent torch.save pickle."""
    from safetensors.torch import load_file

    folder = weights / "mllm"
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def test_load_models_refuses_a_pickle_only_mllm_folder(weights):
    _pickle_only_mllm(weights)
    with pytest.raises(CheckpointError, match="no loadable safetensors weights"):
        load_models(weights)


def test_the_serving_mllm_stage_refuses_a_pickle_only_folder(weights):
    _pickle_only_mllm(weights)
    with pytest.raises(CheckpointError, match="no loadable safetensors weights"):
        load_stage_runner(weights, "mllm")


def test_the_server_binds_loopback_unless_told_otherwise():
    assert ServerConfig(Path("models")).host == LOOPBACK == "127.0.0.1"


def _listening(pgid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by process group `pgid`."""
    inodes = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[2]) != pgid:
                    continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                    address, port = local.split(":")
                    found.add((_address(address), int(port, 16)))
    return found


def _address(hex_address: str) -> str:
    """A /proc/net/tcp{,6} address: 32-bit words in little-endian hex; IPv4-mapped IPv6
    addresses (gRPC listens on ::ffff:127.0.0.1) are shown as IPv4."""
    raw = b"".join(bytes.fromhex(hex_address[i:i + 8])[::-1]
                   for i in range(0, len(hex_address), 8))
    ip = ipaddress.ip_address(raw)
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


@pytest.mark.server
@pytest.mark.slow
def test_the_running_server_listens_only_on_loopback(served):
    ends = served.endpoints
    assert _listening(served.pid) == {("127.0.0.1", ends.http_port),
                                      ("127.0.0.1", ends.grpc_port),
                                      ("127.0.0.1", ends.metrics_port)}

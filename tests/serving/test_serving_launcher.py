"""The launcher and the CLI around it, on a one-model probe repository that starts in
seconds (it imports numpy only), plus client behaviour without a server."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from cinema_trt.cli.main import main
from cinema_trt.models.specs import StageSpec, TensorSpec
from cinema_trt.serving.client import CinemaClient, ClientOptions
from cinema_trt.serving.server import (
    ServerConfig,
    ServerError,
    TritonServer,
    free_port,
)
from cinema_trt.serving.triton_config import stage_config, to_text
from cinema_trt.serving.tritonserver_install import find_tritonserver

PROBE = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        if {fail}:
            raise RuntimeError("probe failed on purpose")

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy() * 2)]) for r in requests]
'''
PROBE_SPEC = StageSpec("probe", (TensorSpec("x", torch.float32, ("n",)),),
                       (TensorSpec("y", torch.float32, ("n",)),))


def probe_repository(root, fail=False):
    (root / "probe" / "1").mkdir(parents=True)
    (root / "probe" / "config.pbtxt").write_text(to_text(stage_config(PROBE_SPEC, "python")))
    (root / "probe" / "1" / "model.py").write_text(PROBE.format(fail=fail))
    return root


def test_a_named_binary_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITONSERVER", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"\$TRITONSERVER=.*nope is not a file"):
        find_tritonserver()
    with pytest.raises(FileNotFoundError, match="executable=/bin/missing is not a file"):
        find_tritonserver("/bin/missing")


def test_a_missing_repository_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder; build one with"):
        TritonServer(ServerConfig(tmp_path / "absent"))


def test_the_client_retries_connecting_then_names_the_server():
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    client = CinemaClient(url, ClientOptions(connect_retries=2, retry_backoff=0.01))
    with pytest.raises(ConnectionError, match=f"cannot reach .*{url} after 2 attempts"):
        client.generate("x", [b"png"])
    assert not client.is_ready()


@pytest.mark.server
def test_startup_failure_raises_with_the_model_error_and_leaves_no_process(
        tritonserver_binary, tmp_path):
    server = TritonServer(ServerConfig(probe_repository(tmp_path, fail=True),
                                       startup_timeout=60))
    with pytest.raises(ServerError, match=r"(?s)exited with code .*probe failed on purpose"):
        server.start()
    assert not server.running


@pytest.mark.server
def test_context_manager_serves_then_stops(tritonserver_binary, tmp_path):
    import tritonclient.grpc as grpcclient

    with TritonServer(ServerConfig(probe_repository(tmp_path))) as server:
        triton = grpcclient.InferenceServerClient(server.endpoints.grpc)
        x = grpcclient.InferInput("x", [3], "FP32")
        x.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))
        y = triton.infer("probe", [x]).as_numpy("y")
        triton.close()
        np.testing.assert_array_equal(y, [2, 4, 6])
        assert server.endpoints.host == "127.0.0.1"  # loopback unless asked otherwise
    assert not server.running and not server.is_ready()


def _read_endpoints(process, timeout=120.0) -> dict[str, str]:
    endpoints, deadline = {}, time.monotonic() + timeout
    while "metrics" not in endpoints and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        key, _, value = line.strip().partition(": ")
        endpoints[key] = value
    return endpoints


@pytest.mark.server
def test_serve_command_prints_endpoints_and_stops_on_ctrl_c(tritonserver_binary, tmp_path):
    repo = probe_repository(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "cinema_trt.cli", "serve", "--repository", str(repo)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=dict(os.environ))
    try:
        endpoints = _read_endpoints(process)
        assert set(endpoints) >= {"grpc", "http", "metrics"}, endpoints
        with urllib.request.urlopen(f"{endpoints['http']}/v2/health/ready", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(endpoints["metrics"], timeout=5) as r:
            assert b"nv_inference_count" in r.read()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    with pytest.raises(OSError):  # the server went with the command
        urllib.request.urlopen(f"{endpoints['http']}/v2/health/ready", timeout=2)


@pytest.mark.server
def test_serve_command_reports_a_failed_start_with_exit_code_1(tritonserver_binary, tmp_path,
                                                              caplog):
    repo = probe_repository(tmp_path, fail=True)
    assert main(["serve", "--repository", str(repo), "--startup-timeout", "60"]) == 1
    assert "probe failed on purpose" in caplog.text


def test_repo_command_writes_a_repository(serve_extra, tiny_weights, tmp_path, capsys):
    out = tmp_path / "models"
    assert main(["repo", "-o", str(out), "--weights", str(tiny_weights), "--gpus", "0",
                 "--instances", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    text = (out / "dit" / "config.pbtxt").read_text()
    assert "KIND_GPU" in text and "count: 2" in text and "gpus: 0" in text


def test_repo_command_without_artifacts_for_onnxruntime_exits_2(serve_extra, tiny_weights, tmp_path,
                                                                 caplog):
    code = main(["repo", "-o", str(tmp_path / "m"), "--weights", str(tiny_weights),
                 "--backend", "onnxruntime"])
    assert code == 2
    assert "backend='onnxruntime' needs artifacts" in caplog.text

"""`cinema-trt generate --url`: the same flags, the video made by a running Triton server.

One server (tiny preset, PyTorch stages, random weights of seed 0, the same weights the
local path builds) serves the module; it takes ~35 s to start on 2 cores.
"""

import numpy as np
import pytest
from PIL import Image

from cinema_trt.cli.main import main
from cinema_trt.models.media import sample_references
from cinema_trt.serving.client import CinemaClient
from cinema_trt.serving.server import ServerConfig, TritonServer, free_port

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.usefixtures("serve_extra")]

REFS = [str(p) for p in sample_references()[:2]]
COMMON = ["generate", "--ref", REFS[0], "--ref", REFS[1], "--prompt", "two toys dance",
          "--frames", "5", "--height", "32", "--width", "48", "--steps", "2"]


@pytest.fixture(scope="module")
def server(tritonserver_binary, tiny_weights, tmp_path_factory):
    from cinema_trt.serving.repo import build_repository

    root = tmp_path_factory.mktemp("generate-url")
    repo = build_repository(None, root / "models", tiny_weights)
    with TritonServer(ServerConfig(repo, startup_timeout=240)) as running:
        yield running


def frames(folder):
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))])


def test_served_frames_equal_the_in_process_pipeline_bit_for_bit(server, tmp_path):
    url = server.endpoints.grpc
    assert main(COMMON + ["--quiet", "--url", url, "-o", str(tmp_path / "served")]) == 0
    assert main(COMMON + ["--quiet", "-o", str(tmp_path / "local")]) == 0
    served, local = frames(tmp_path / "served"), frames(tmp_path / "local")
    assert served.shape == (5, 32, 48, 3)
    # PNG frames are lossless and the server runs the same sampler on the same weights
    np.testing.assert_array_equal(served, local)


def test_an_mp4_output_is_written_from_the_streamed_chunks_with_a_progress_bar(
        server, tmp_path, capsys, read_video):
    out = tmp_path / "served.mp4"
    # 9 frames: 3 latent frames, 3 chunks of frames written as they arrive
    request = [*COMMON[:COMMON.index("--frames")], "--frames", "9",
               *COMMON[COMMON.index("--frames") + 2:]]
    assert main(request + ["--url", server.endpoints.grpc, "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert str(out) in captured.out
    assert "2/2" in captured.err  # the bar followed the streamed progress to the last step
    assert not (tmp_path / "served.mp4.partial").exists()
    # the file written chunk by chunk is the server's own one-shot encoding of the same
    # video (same frames, same encoder and settings, the server's frame rate), byte for byte
    mp4 = CinemaClient(server.endpoints.grpc).generate_mp4(
        "two toys dance", REFS, frames=9, height=32, width=48, steps=2)
    assert out.read_bytes() == mp4
    assert read_video(out).shape == (9, 32, 48, 3)


def test_a_request_the_server_rejects_exits_2_with_its_message(server, tmp_path, caplog):
    code = main(COMMON + ["--height", "40", "--url", server.endpoints.grpc, "--quiet",
                          "-o", str(tmp_path / "v.mp4")])
    assert code == 2
    assert "height=40 must be a positive multiple of 16" in caplog.text
    assert not (tmp_path / "v.mp4").exists()
    assert CinemaClient(server.endpoints.grpc).is_ready()


def _dit_calls(url: str) -> int:
    import tritonclient.grpc as grpcclient

    triton = grpcclient.InferenceServerClient(url)
    try:
        return triton.get_inference_statistics("dit").model_stats[0].execution_count
    finally:
        triton.close()


def test_a_dying_orchestrator_ends_the_call_after_the_progress_timeout(server, tmp_path,
                                                                      caplog):
    import os
    import signal
    import threading
    import time

    from cinema_trt.serving.watchdog import live_stubs

    url, killed = server.endpoints.grpc, []
    before = _dit_calls(url)

    def kill_once_denoising():  # the request was accepted and is running its steps
        deadline = time.monotonic() + 60
        while _dit_calls(url) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(live_stubs(server.pid)["cinema_0_0"], signal.SIGKILL)
        killed.append(time.monotonic())

    # Triton 2.51 sends the stream of a dead orchestrator nothing: only the bound ends it
    killer = threading.Thread(target=kill_once_denoising)
    killer.start()
    long_request = [*COMMON[:-1], "1000"]  # --steps 1000: still running when killed
    code = main(long_request + ["--quiet", "--url", url, "--progress-timeout", "5",
                                "-o", str(tmp_path / "v.mp4")])
    ended = time.monotonic()
    killer.join()
    assert code == 1
    assert "no message from the server" in caplog.text and "for 5 s" in caplog.text
    # the bound runs from the last progress message, a step (~10 ms) before the kill
    assert 4.5 <= ended - killed[0] < 5 + 10, ended - killed[0]
    deadline = time.monotonic() + 30  # the watchdog brings the orchestrator back
    while not CinemaClient(url).is_ready() and time.monotonic() < deadline:
        time.sleep(0.5)
    caplog.clear()
    assert main(COMMON + ["--quiet", "--url", url, "-o", str(tmp_path / "after.mp4")]) == 0, \
        caplog.text


def test_flags_that_choose_the_local_model_are_refused_with_url(tmp_path, caplog):
    code = main(COMMON + ["--url", "127.0.0.1:1", "--runtime", "ort", "--onnx", str(tmp_path),
                          "-o", str(tmp_path / "v.mp4")])
    assert code == 2
    assert "['--onnx', '--runtime'] choose the in-process model" in caplog.text
    # the served decoder's decoding is the repository's (cinema-trt repo --decode-tile)
    assert main(COMMON + ["--url", "127.0.0.1:1", "--decode-tile", "4",
                          "-o", str(tmp_path / "v.mp4")]) == 2
    assert "['--decode-chunk/--decode-tile/--decode-overlap'] choose the in-process" \
        in caplog.text


def test_an_unreachable_server_exits_1_and_names_it(tmp_path, caplog):
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    code = main(COMMON + ["--quiet", "--url", url, "-o", str(tmp_path / "v.mp4")])
    assert code == 1
    assert f"cannot reach a ready Triton server at {url}" in caplog.text

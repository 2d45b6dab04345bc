"""`cinema-trt repo --decode-tile/--decode-overlap/--decode-chunk`: the decoding reaches the
served orchestrator through its cinema_config.json (and the decoder stage model's, whose
warm-up and limits follow it); a bad one exits 2 and writes nothing."""

from cinema_trt.cli.main import main
from cinema_trt.models.factory import read_weights_config
from cinema_trt.models.presets import Tiling


def test_repo_writes_the_decoding_into_the_orchestrators_config(tiny_weights, tmp_path):
    out = tmp_path / "repo"
    assert main(["repo", "-o", str(out), "--weights", str(tiny_weights), "--decode-tile", "4",
                 "--decode-overlap", "2", "--decode-chunk", "2"]) == 0
    for model in ("cinema", "vae_decoder"):
        sampler = read_weights_config(out / model / "1").sampler
        assert (sampler.decode_chunk, sampler.decode_tiles) == (2, Tiling(4, 2)), model


def test_repo_refuses_a_bad_decoding_and_writes_nothing(tiny_weights, tmp_path, caplog):
    out = tmp_path / "repo"
    assert main(["repo", "-o", str(out), "--weights", str(tiny_weights), "--decode-tile", "3",
                 "--decode-overlap", "3"]) == 2
    assert "tiling tile=3, overlap=3: need 0 < overlap < tile" in caplog.text
    assert not out.exists()

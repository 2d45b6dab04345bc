"""benchmarks/attention.py: the shape grid, the report format, and its refusal without CUDA."""

from __future__ import annotations

import pytest
import torch

from cinema_trt.benchmarks import attention as bench


def test_shapes_are_the_cinema_dit_sequence_lengths():
    shapes = bench.dit_shapes("cinema", (64, 128))
    # 226 text + K reference frames of 30x45 patches + 12 latent frames of 30x45
    seqs = [226 + refs * 1350 + 16200 for refs in (1, 2, 3, 4)]
    assert [(s.batch, s.heads, s.head_dim, s.seq) for s in shapes] == (
        [(2, 48, 64, n) for n in seqs] + [(2, 24, 128, n) for n in seqs])
    assert shapes[0].flops == 4.0 * 2 * 48 * seqs[0] ** 2 * 64


def test_markdown_has_one_row_per_shape_and_a_dash_for_failures():
    shape = {"batch": 2, "heads": 48, "seq": 17776, "head_dim": 64, "num_refs": 1}
    record = {"machine": {"gpu": {"name": "GPU"}}, "settings": {"dtype": "float16"},
              "versions": {"torch": "2.x"},
              "results": [{"shape": shape, "backend": "triton", "tflops": 512.34},
                          {"shape": shape, "backend": "sdpa_math", "tflops": None}]}
    table = bench.to_markdown(record).splitlines()
    assert table[2] == "| refs | S | H | D | triton | sdpa_math |"
    assert table[4] == "| 1 | 17776 | 48 | 64 | 512.3 | - |"


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown backends"):
        bench.AttentionBenchConfig(backends=("flash3",))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_refuses_to_run_without_cuda_and_writes_nothing(tmp_path, caplog):
    with pytest.raises(RuntimeError, match="needs CUDA"):
        bench.run_attention_benchmark(bench.AttentionBenchConfig())
    assert bench.main(["--out-dir", str(tmp_path / "results")]) == 2
    assert "needs CUDA" in caplog.text
    assert not (tmp_path / "results").exists()

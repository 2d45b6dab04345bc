"""Attention throughput (TFLOP/s) at the DiT's real shapes: Triton kernels vs every SDPA backend.

Shapes come from the preset, not from a hand-written list: batch 2 (the CFG pair), the DiT's
heads and head dim, and S = text + K reference frames + video tokens for K = 1..max_refs
(226 + K*1350 + 16200 for `cinema`). A head-dim-128 grid keeps the width (half the heads).

Each run writes one JSON record (every setting, the device, library versions, each
measurement or the error that prevented it) and a markdown table to benchmarks/results/.

    python -m cinema_trt.benchmarks.attention --dtype float16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cinema_trt.models.dtypes import lookup
from cinema_trt.models.presets import get_preset, token_counts

from .config import RESULTS_DIR
from .machine import Provenance, machine_tag

log = logging.getLogger(__name__)

SCHEMA = "cinema-trt/attention/1"
SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
# triton_tma: the fused kernel forced onto its TMA load path (kernels/fused_attention.py
# TMA_BY_DEFAULT), so one run shows whether it should become the default on Hopper
ALL_BACKENDS = ("triton", "triton_tma", "triton_int8") + tuple(
    f"sdpa_{b.lower()}" for b in SDPA_BACKENDS)
DTYPES = ("float16", "bfloat16")


@dataclass(frozen=True)
class AttentionShape:
    batch: int
    heads: int
    seq: int
    head_dim: int
    num_refs: int

    @property
    def flops(self) -> float:
        """Q.Kᵀ and P.V, 2 flops per multiply-add each (softmax not counted, as is usual)."""
        return 4.0 * self.batch * self.heads * self.seq * self.seq * self.head_dim


@dataclass(frozen=True)
class AttentionBenchConfig:
    preset: str = "cinema"
    dtype: str = "float16"
    backends: tuple[str, ...] = ALL_BACKENDS
    head_dims: tuple[int, ...] = (64, 128)
    warmup_ms: int = 25
    rep_ms: int = 100
    out_dir: str = str(RESULTS_DIR)

    def __post_init__(self):
        unknown = sorted(set(self.backends) - set(ALL_BACKENDS))
        if unknown:
            raise ValueError(f"unknown backends {unknown}; choose from {list(ALL_BACKENDS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}; choose one of {list(DTYPES)}")


def dit_shapes(preset: str, head_dims: tuple[int, ...]) -> list[AttentionShape]:
    """The DiT's joint-attention shapes for every reference count, per head dim."""
    config = get_preset(preset)
    width, sampler = config.dit.width, config.sampler
    shapes = []
    for head_dim in head_dims:
        if width % head_dim:
            raise ValueError(f"head_dim={head_dim} must divide the DiT width {width}")
        for refs in range(1, config.dit.max_refs + 1):
            counts = token_counts(config, sampler.frames, sampler.height, sampler.width, refs)
            shapes.append(AttentionShape(2, width // head_dim, counts.total, head_dim, refs))
    return shapes


def _backend(name: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == "triton_tma":
        return _triton_tma
    if name.startswith("triton"):
        import cinema_trt.kernels.ops as kernels

        return kernels.attention if name == "triton" else kernels.attention_int8
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, name.removeprefix("sdpa_").upper())

    def run(q, k, v):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    return run


def _triton_tma(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from cinema_trt.kernels.fused_attention import launch_attention
    from cinema_trt.kernels.reference import QKPrologue

    out = torch.empty_like(q)
    launch_attention(q, k, v, out, None, QKPrologue(), q.shape[-1] ** -0.5, use_tma=True)
    return out


def _measure(name: str, shape: AttentionShape, config: AttentionBenchConfig) -> dict:
    """One backend at one shape: median ms and TFLOP/s, or the error that stopped it."""
    from triton.testing import do_bench

    result = {"shape": dataclasses.asdict(shape), "backend": name, "ms": None, "tflops": None,
              "error": None}
    gen = torch.Generator(device="cuda").manual_seed(0)
    dims = (shape.batch, shape.heads, shape.seq, shape.head_dim)
    try:
        q, k, v = (torch.randn(dims, device="cuda", dtype=lookup(config.dtype).torch, generator=gen)
                   for _ in range(3))
        fn = _backend(name)
        ms = do_bench(lambda: fn(q, k, v), warmup=config.warmup_ms, rep=config.rep_ms,
                      return_mode="median")
        result.update(ms=ms, tflops=shape.flops / ms * 1e-9)
    except RuntimeError as error:  # includes torch.OutOfMemoryError and "no kernel available"
        result["error"] = str(error).splitlines()[0][:200]
    finally:
        torch.cuda.empty_cache()  # MATH's S x S scores must not crowd out the next backend
    log.info("%-22s S=%-6d D=%-4d %s", name, shape.seq, shape.head_dim,
             f"{result['tflops']:.1f} TFLOP/s" if result["tflops"] else result["error"])
    return result


def run_attention_benchmark(config: AttentionBenchConfig) -> dict:
    """Measure every backend at every shape; returns the record `write_results` saves."""
    if not torch.cuda.is_available():
        raise RuntimeError("the attention benchmark times GPU kernels and needs CUDA, but "
                           "torch.cuda.is_available() is False; run it on a CUDA machine")
    run = Provenance.start()
    shapes = dit_shapes(config.preset, config.head_dims)
    results = [_measure(name, shape, config) for shape in shapes for name in config.backends]
    return {"schema": SCHEMA, **run.block(), "settings": dataclasses.asdict(config),
            "results": results}


def to_markdown(record: dict) -> str:
    """TFLOP/s table: one row per shape, one column per backend ("-" where it failed)."""
    backends = list(dict.fromkeys(r["backend"] for r in record["results"]))
    rows: dict[tuple, dict] = {}
    for r in record["results"]:
        s = r["shape"]
        key = (s["num_refs"], s["seq"], s["heads"], s["head_dim"])
        rows.setdefault(key, {})[r["backend"]] = f"{r['tflops']:.1f}" if r["tflops"] else "-"
    lines = [f"Attention TFLOP/s on {record['machine']['gpu']['name']} "
             f"({record['settings']['dtype']}, "
             f"batch 2, torch {record['versions']['torch']})", "",
             "| refs | S | H | D | " + " | ".join(backends) + " |",
             "|" + "---|" * (4 + len(backends))]
    for (refs, seq, heads, head_dim), cells in rows.items():
        lines.append(f"| {refs} | {seq} | {heads} | {head_dim} | "
                     + " | ".join(cells.get(b, "-") for b in backends) + " |")
    return "\n".join(lines) + "\n"


def write_results(record: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = machine_tag("cuda", record["machine"])
    stem = f"attention-{tag}-{record['started'][:19].replace('-', '').replace(':', '')}"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    md_path.write_text(to_markdown(record))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cinema")
    parser.add_argument("--dtype", default="float16", choices=DTYPES)
    parser.add_argument("--backends", nargs="+", default=list(ALL_BACKENDS))
    parser.add_argument("--head-dims", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = AttentionBenchConfig(preset=args.preset, dtype=args.dtype,
                                      backends=tuple(args.backends),
                                      head_dims=tuple(args.head_dims), out_dir=args.out_dir)
        record = run_attention_benchmark(config)
    except (RuntimeError, ValueError) as error:
        log.error("%s", error)
        return 2
    for path in write_results(record, config.out_dir):
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Chunked and tiled VAE decoding (models/vae_chunks.py, models/vae_tiles.py): exactness,
tiling error, state size, and the TensorRT-RTX builder's activation memory per chunk at
the paper's shapes, on a CPU.

    python -m cinema_trt.benchmarks.vae_chunks [--out benchmarks/results] [--skip-builds]

1. chunked vs one-shot decode (fp32, max |diff| / max |one-shot|), tiny and the cinema
   VAE's widths on small frames, several chunk sizes;
2. the step graph (torch.onnx dynamo, ONNX Runtime chunk by chunk) vs torch one-shot;
3. tiled vs untiled decode, tiny and cinema widths;
4. the state a decode carries at 45 x 480 x 720 (fp16 and fp32);
5. TensorRT-RTX (the oldest FP8 target, fp16, no GPU) builds of the cinema step graph
   for one video at 60 x 90 latents, 1 and 2 latent frames per chunk and a 32 x 32 tile,
   and of the VAE encoder for 1 and 4 one-frame references: the builder's activation memory, to set
   against the one-shot decoder's 33.5 GiB (benchmarks/results/cpu-2core-memory-*).
Writes `<machine>-vae-chunks-<date>.json` + `.md` through benchmarks.machine.Provenance.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import onnx
import torch

from cinema_trt.models.presets import VAE_SPATIAL, VAEConfig, get_preset
from cinema_trt.models.specs import tensor_bytes
from cinema_trt.models.vae_chunks import (
    FIRST_CHUNK_EXTRA_FRAMES,
    DecoderStep,
    state_spec,
    step_spec,
)
from cinema_trt.models.vae_tiles import Tiling
from cinema_trt.models.video_vae import create_vae

from .rtx_probe import TARGET, rtx_build_memory

log = logging.getLogger(__name__)
GIB = 2**30
PAPER = {"frames": 45, "height": 480, "width": 720}  # the cinema preset's request


def relative(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out - reference).abs().max() / reference.abs().max())


@torch.no_grad()
def exactness(cfg: VAEConfig, shape: tuple[int, ...], chunks: tuple[int, ...]) -> dict:
    vae = create_vae(cfg)
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    reference = vae.decode(z)
    return {"latents": list(shape),
            "errors": {str(c): relative(vae.decode(z, chunk=c), reference) for c in chunks}}


@torch.no_grad()
def tiling_error(cfg: VAEConfig, shape: tuple[int, ...], tiling: Tiling) -> dict:
    vae = create_vae(cfg)
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    reference = vae.decode(z)
    diff = vae.decode(z, tiling=tiling, chunk=1) - reference
    scale = float(reference.abs().max())
    return {"latents": list(shape), "tile": tiling.tile, "overlap": tiling.overlap,
            "error": float(diff.abs().max()) / scale,
            "mean_error": float(diff.abs().mean() / reference.abs().mean()),
            "seam": max(float(diff.diff(dim=d).abs().max()) for d in (3, 4)) / scale}


def export_step(step: torch.nn.Module, spec, example: tuple[torch.Tensor, ...]
                ) -> onnx.ModelProto:
    """The step module traced as the exporter traces a stage (forward(latents, first,
    *states): export/onnx_graph.bind_inputs binds the states to its *args)."""
    from cinema_trt.export.onnx_graph import trace_to_onnx

    return trace_to_onnx(step, spec, dict(zip(spec.input_names, example, strict=True)))


def step_example(step: DecoderStep) -> tuple[torch.Tensor, ...]:
    # distinct sizes, none 0 or 1: torch.export specialises those
    latents = torch.randn(2, step.decoder.cfg.latent_channels, 3, 3, 4)
    return (latents, torch.tensor([True]), *step.initial_states(latents))


@torch.no_grad()
def onnx_step_error(cfg: VAEConfig, folder: Path) -> dict:
    """Tiny's step graph in ONNX Runtime, chunk by chunk, vs the torch one-shot decode."""
    import numpy as np
    import onnxruntime as ort

    vae = create_vae(cfg)
    step = DecoderStep(vae.decoder).eval()
    spec = step_spec(cfg)
    path = folder / "step.onnx"
    onnx.save_model(export_step(step, spec, step_example(step)), str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    z = torch.randn(1, cfg.latent_channels, 5, 5, 6, generator=torch.Generator().manual_seed(1))
    states = [s.numpy() for s in step.initial_states(z)]
    first, pieces = np.ones(1, dtype=bool), []
    for start in range(0, 5, 2):
        video, *states = session.run(None, {"latents": z[:, :, start:start + 2].numpy(),
                                            "first": first,
                                            **dict(zip(spec.input_names[2:], states,
                                                       strict=True))})
        pieces.append(video[:, :, FIRST_CHUNK_EXTRA_FRAMES:] if start == 0 else video)
        first = np.zeros(1, dtype=bool)
    out = torch.from_numpy(np.concatenate(pieces, axis=2))
    return {"latents": list(z.shape), "chunk": 2, "error": relative(out, vae.decode(z))}


def state_sizes(cfg: VAEConfig) -> dict:
    lh, lw = PAPER["height"] // VAE_SPATIAL, PAPER["width"] // VAE_SPATIAL
    sizes: dict[str, Any] = {}
    for dtype in (torch.float16, torch.float32):
        name = str(dtype).removeprefix("torch.")
        sizes[f"video {name} GiB"] = tensor_bytes(
            state_spec(cfg, 1, PAPER["height"], PAPER["width"], dtype)) / GIB
        sizes[f"32x32 tile {name} GiB"] = tensor_bytes(
            state_spec(cfg, 1, 32 * VAE_SPATIAL, 32 * VAE_SPATIAL, dtype)) / GIB
    sizes["tensors"] = len(state_spec(cfg, 1, VAE_SPATIAL, VAE_SPATIAL))
    sizes["latents"] = [lh, lw]
    return sizes


def builds(cfg: VAEConfig, folder: Path) -> dict[str, Any]:
    """The builder's figures for the cinema step graph and encoder at paper shapes. The
    step computes in fp16 with fp16 states in and out (an engine should not hold its
    largest I/O in fp32); the encoder is exported as the exporter does, fp16 behind fp32
    I/O."""
    from cinema_trt.export.dtype import cast_module, unwrap_scopes
    from cinema_trt.export.onnx_graph import save_onnx, trace_to_onnx
    from cinema_trt.models.precision import Precision
    from cinema_trt.models.stage_vae import VAE_ENCODER

    vae = create_vae(cfg)
    step = DecoderStep(vae.decoder.half()).eval()
    example = tuple(t.half() if t.is_floating_point() else t for t in step_example(step))
    graph = folder / "step.onnx"
    save_onnx(export_step(step, step_spec(cfg, torch.float16), example), graph)
    lh, lw = PAPER["height"] // VAE_SPATIAL, PAPER["width"] // VAE_SPATIAL
    figures: dict[str, Any] = {}
    for label, frames, h, w in (("step, 1 latent frame", 1, lh, lw),
                                ("step, 2 latent frames", 2, lh, lw),
                                ("step, 1 latent frame, 32x32 tile", 1, 32, 32)):
        shapes: dict[str, tuple] = {"latents": (1, cfg.latent_channels, frames, h, w)}
        shapes.update({s.name: s.dims for s in state_spec(cfg, 1, h * 8, w * 8)})
        figures[label] = rtx_build_memory(graph, {k: (v, v, v) for k, v in shapes.items()})
        log.info("%s: %s", label, figures[label])
    spec = VAE_ENCODER.spec(get_preset("cinema"))
    model = trace_to_onnx(cast_module(create_vae(cfg).encoder.eval(), Precision.FP16), spec,
                          {"video": torch.rand(2, 3, 5, 24, 32)})
    unwrap_scopes(model)
    save_onnx(model, folder / "encoder.onnx")
    for refs in (1, 4):
        shape = (refs, 3, 1, PAPER["height"], PAPER["width"])
        figures[f"encoder, {refs} references"] = rtx_build_memory(
            folder / "encoder.onnx", {"video": (shape, shape, shape)})
        log.info("encoder, %d references: %s", refs, figures[f"encoder, {refs} references"])
    return figures


def run(out: Path, with_builds: bool = True) -> tuple[Path, Path]:
    from cinema_trt.benchmarks.machine import Provenance, write_record

    provenance = Provenance.start()
    tiny, wide = get_preset("tiny").vae, get_preset("cinema").vae
    record: dict[str, Any] = {"schema": "cinema-trt/vae-chunks/1"}
    record["exactness"] = {
        "tiny": [exactness(tiny, (2, 16, t, h, w), chunks) for t, h, w, chunks in
                 ((1, 4, 6, (1, 2)), (3, 5, 4, (1, 2, 3)), (4, 3, 7, (1, 3)),
                  (6, 4, 4, (1, 2, 4, 5)))],
        "cinema widths": [exactness(wide, (1, 16, 4, 4, 6), (1, 2, 3))]}
    record["tiling"] = {"tiny": [tiling_error(tiny, (1, 16, 2, 12, 16), Tiling(8, 4)),
                                 tiling_error(tiny, (1, 16, 1, 24, 32), Tiling(16, 8))],
                        "cinema widths": [tiling_error(wide, (1, 16, 1, 24, 32),
                                                       Tiling(16, 8))]}
    record["state_at_paper_shape"] = state_sizes(wide)
    with tempfile.TemporaryDirectory(prefix="vae-chunks-") as tmp:
        record["onnx_step"] = onnx_step_error(tiny, Path(tmp))
        record["rtx_builds"] = builds(wide, Path(tmp)) if with_builds else {}
    record = {"schema": record.pop("schema"), **provenance.block(), **record}
    return write_record(out, "vae-chunks", provenance, record, markdown(record))


def markdown(record: dict[str, Any]) -> str:
    from cinema_trt.benchmarks.machine import provenance_line

    lines = ["# Chunked and tiled VAE decoding", "",
             provenance_line(record), "",
             "## Chunked vs one-shot (fp32, max |diff| / max |one-shot|; gate 1e-5)", "",
             "| VAE | latents (B, C, T, h, w) | error by chunk size |", "|---|---|---|"]
    for name, rows in record["exactness"].items():
        for row in rows:
            errors = ", ".join(f"{c}: {e:.1e}" for c, e in row["errors"].items())
            lines.append(f"| {name} | {row['latents']} | {errors} |")
    step = record["onnx_step"]
    lines += ["", f"Step graph in ONNX Runtime, chunks of {step['chunk']}, latents "
              f"{step['latents']}: {step['error']:.1e} of the output scale.", "",
              "## Tiled vs untiled (chunks of 1)", "",
              "| VAE | latents | tile / overlap | max error | mean error | seam error |",
              "|---|---|---|---:|---:|---:|"]
    for name, rows in record["tiling"].items():
        for row in rows:
            lines.append(f"| {name} | {row['latents']} | {row['tile']} / {row['overlap']} | "
                         f"{row['error']:.4f} | {row['mean_error']:.4f} | {row['seam']:.4f} |")
    state = record["state_at_paper_shape"]
    lines += ["", "## State carried between chunks (cinema VAE, one video)", ""]
    lines += [f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}"
              for k, v in state.items()]
    if record["rtx_builds"]:
        lines += ["", f"## TensorRT-RTX builds ({TARGET}, fp16, builder figures, no GPU)", "",
                  "| graph | weights (GiB) | activations (GiB) |", "|---|---:|---:|"]
        for label, b in record["rtx_builds"].items():
            lines.append(f"| {label} | {b.get('weights_bytes', 0) / GIB:.3f} | "
                         f"{b.get('activation_bytes', 0) / GIB:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--skip-builds", action="store_true",
                        help="leave out the TensorRT-RTX builds of the cinema graphs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for path in run(args.out, with_builds=not args.skip_builds):
        print(path)


if __name__ == "__main__":
    main()

"""Chunked and tiled VAE decoding (models/vae_chunks.py, models/vae_tiles.py): exactness,
tiling error, state size, and the TensorRT-RTX builder's activation memory per chunk at
the paper's shapes, on a CPU.

    python -m cinema_trt.benchmarks.vae_chunks [--out benchmarks/results] [--skip-builds]
                                               [--only-builds]

1. chunked vs one-shot decode (fp32, max |diff| / max |one-shot|), tiny and the cinema
   VAE's widths on small frames, several chunk sizes;
2. the step graph (torch.onnx dynamo, ONNX Runtime chunk by chunk) vs torch one-shot, in
   fp32 and as the exporter writes it in fp16 (fp16 states fed back): against torch fp32
   and torch fp16 one-shot;
3. tiled vs untiled decode, tiny and cinema widths;
4. the state a decode carries at 45 x 480 x 720 (fp16 and fp32);
5. TensorRT-RTX (the oldest FP8 target, fp16, no GPU) builds of the cinema step graph
   for one video at 60 x 90 latents, 1 and 2 latent frames per chunk and a 32 x 32 tile,
   and of the VAE encoder for 1 and 4 one-frame references: the builder's activation memory, to set
   against the one-shot decoder's 33.5 GiB (benchmarks/results/cpu-2core-memory-*), and
   the step's activation plus one copy of its fp16 state against the issue's 3 GiB.
--only-builds: 2 (fp16), 4 and 5 only (the memory figures; minutes, not ten).
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

from cinema_trt.models.dtypes import lookup
from cinema_trt.models.precision import Precision, compute_dtype
from cinema_trt.models.presets import VAE_SPATIAL, VAEConfig, get_preset
from cinema_trt.models.specs import tensor_bytes, to_spec_dtypes
from cinema_trt.models.vae_chunks import (
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


def export_step(cfg: VAEConfig, precision: Precision, seed: int = 0) -> onnx.ModelProto:
    """The cinema-shaped step graph as the exporter writes the `vae_decoder` stage
    (export/driver.py): computing in `precision` behind float32 latents and video, the
    states in the compute dtype (`VAEDecoderStage.exported_spec`)."""
    from cinema_trt.export.dtype import cast_module, unwrap_scopes
    from cinema_trt.export.onnx_graph import trace_to_onnx

    step = DecoderStep(create_vae(cfg, seed=seed).decoder).eval()
    spec = step_spec(cfg, lookup(compute_dtype(precision)).torch)
    module = cast_module(step, precision, tuple(t.dtype for t in spec.outputs))
    model = trace_to_onnx(module, spec, to_spec_dtypes(spec, dict(zip(
        spec.input_names, step_example(step), strict=True))))
    if module is not step:
        unwrap_scopes(model)
    return model


def step_example(step: DecoderStep) -> tuple[torch.Tensor, ...]:
    # distinct sizes, none 0 or 1: torch.export specialises those
    latents = torch.randn(2, step.decoder.cfg.latent_channels, 3, 3, 4)
    return (latents, torch.tensor([True]), *step.initial_states(latents))


@torch.no_grad()
def onnx_step_error(cfg: VAEConfig, folder: Path, precision: Precision = Precision.FP32
                    ) -> dict:
    """Tiny's step graph in ONNX Runtime, chunk by chunk (its next states fed back in
    its dtype), vs the torch one-shot decode in fp32 and (fp16) in fp16."""
    import copy

    import numpy as np
    import onnxruntime as ort

    from cinema_trt.models.vae_chunks import iter_chunks

    vae = create_vae(cfg)
    spec = step_spec(cfg, lookup(compute_dtype(precision)).torch)
    path = folder / f"step-{precision.value}.onnx"
    onnx.save_model(export_step(cfg, precision), str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    z = torch.randn(1, cfg.latent_channels, 5, 5, 6, generator=torch.Generator().manual_seed(1))

    def step(part, first, states):
        video, *next_states = session.run(None, {
            "latents": part.numpy(), "first": first.numpy(),
            **{n: s.numpy() for n, s in zip(spec.input_names[2:], states, strict=True)}})
        return torch.from_numpy(video), tuple(torch.from_numpy(np.asarray(s))
                                              for s in next_states)

    zeros = state_spec(cfg, 1, 5 * VAE_SPATIAL, 6 * VAE_SPATIAL, spec.inputs[-1].dtype)
    out = torch.cat(list(iter_chunks(step, z, 2, tuple(
        torch.zeros([int(d) for d in t.dims], dtype=t.dtype) for t in zeros))), dim=2)
    reference = vae.decode(z)
    record = {"latents": list(z.shape), "chunk": 2, "error": relative(out, reference),
              "state_dtype": str(spec.inputs[-1].dtype).removeprefix("torch.")}
    if precision is not Precision.FP32:
        half = lookup(compute_dtype(precision)).torch
        one_shot = copy.deepcopy(vae).to(half).decode(z.to(half)).float()
        record["one_shot_error"] = relative(one_shot, reference)  # torch's own, same dtype
        record["vs_one_shot"] = relative(out, one_shot)
    return record


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
    """The builder's figures for the cinema step graph and encoder at paper shapes, both
    exported as the exporter does in fp16 (the step's states in fp16)."""
    from cinema_trt.export.dtype import cast_module, unwrap_scopes
    from cinema_trt.export.onnx_graph import save_onnx, trace_to_onnx
    from cinema_trt.models.stage_vae import VAE_ENCODER

    graph = folder / "step.onnx"
    save_onnx(export_step(cfg, Precision.FP16), graph)
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


def run(out: Path, with_builds: bool = True, only_builds: bool = False
        ) -> tuple[Path, Path]:
    from cinema_trt.benchmarks.machine import Provenance, write_record

    provenance = Provenance.start()
    tiny, wide = get_preset("tiny").vae, get_preset("cinema").vae
    record: dict[str, Any] = {"schema": "cinema-trt/vae-chunks/1"}
    if only_builds:
        record["only_builds"] = True  # sections 1, 3 and the fp32 step left out
        record["state_at_paper_shape"] = state_sizes(wide)
        with tempfile.TemporaryDirectory(prefix="vae-chunks-") as tmp:
            record["onnx_step_fp16"] = onnx_step_error(tiny, Path(tmp), Precision.FP16)
            record["rtx_builds"] = builds(wide, Path(tmp))
        record = {"schema": record.pop("schema"), **provenance.block(), **record}
        return write_record(out, "vae-chunks", provenance, record, markdown(record))
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
        record["onnx_step_fp16"] = onnx_step_error(tiny, Path(tmp), Precision.FP16)
        record["rtx_builds"] = builds(wide, Path(tmp)) if with_builds else {}
    record = {"schema": record.pop("schema"), **provenance.block(), **record}
    return write_record(out, "vae-chunks", provenance, record, markdown(record))


# the state one step build carries (state_at_paper_shape's key): what a chunk holds besides
# its activation, one copy (the caller's; the engine writes the next into its outputs)
STATE_OF = {"step, 1 latent frame": "video float16 GiB",
            "step, 2 latent frames": "video float16 GiB",
            "step, 1 latent frame, 32x32 tile": "32x32 tile float16 GiB"}
TARGET_GIB = 3.0  # issue 20: activation per chunk, state counted


def markdown(record: dict[str, Any]) -> str:
    from cinema_trt.benchmarks.machine import provenance_line

    lines = ["# Chunked and tiled VAE decoding", "", provenance_line(record), ""]
    if record.get("only_builds"):
        lines += ["Run with --only-builds: the memory figures and the fp16 step; the fp32 "
                  "exactness and tiling sections are the last full run's (this file's "
                  "earlier version in git).", ""]
    else:
        lines += _exactness_lines(record)
    half = record["onnx_step_fp16"]
    lines += ["", f"Step graph exported in fp16 ({half['state_dtype']} states fed back), "
              f"ONNX Runtime, chunks of {half['chunk']}, latents {half['latents']}: "
              f"{half['error']:.1e} of the output scale from torch fp32 one-shot (torch's own "
              f"fp16 one-shot: {half['one_shot_error']:.1e}); from torch fp16 one-shot: "
              f"{half['vs_one_shot']:.1e}."]
    state = record["state_at_paper_shape"]
    lines += ["", "## State carried between chunks (cinema VAE, one video)", ""]
    lines += [f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}"
              for k, v in state.items()]
    if record["rtx_builds"]:
        lines += ["", f"## TensorRT-RTX builds ({TARGET}, fp16, builder figures, no GPU)", "",
                  f"Step graphs: latents and video float32, states float16. Total: activation "
                  f"plus one fp16 copy of the state, against {TARGET_GIB:.0f} GiB.", "",
                  "| graph | weights (GiB) | activations (GiB) | state (GiB) | total (GiB) |",
                  "|---|---:|---:|---:|---:|"]
        for label, b in record["rtx_builds"].items():
            activation = b.get("activation_bytes", 0) / GIB
            carried = state.get(STATE_OF.get(label, ""), 0.0)
            total = (f"{activation + carried:.3f} "
                     f"({'<=' if activation + carried <= TARGET_GIB else '>'} "
                     f"{TARGET_GIB:.0f})" if label in STATE_OF else "")
            lines.append(f"| {label} | {b.get('weights_bytes', 0) / GIB:.3f} | "
                         f"{activation:.3f} | {carried if label in STATE_OF else 0:.3f} | "
                         f"{total} |")
    return "\n".join(lines) + "\n"


def _exactness_lines(record: dict[str, Any]) -> list[str]:
    lines = ["## Chunked vs one-shot (fp32, max |diff| / max |one-shot|; gate 1e-5)", "",
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
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--skip-builds", action="store_true",
                        help="leave out the TensorRT-RTX builds of the cinema graphs")
    parser.add_argument("--only-builds", action="store_true",
                        help="only the memory figures (state, builds) and the fp16 step")
    args = parser.parse_args(argv)
    if args.skip_builds and args.only_builds:
        parser.error("--skip-builds and --only-builds exclude each other")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for path in run(args.out, with_builds=not args.skip_builds, only_builds=args.only_builds):
        print(path)


if __name__ == "__main__":
    main()

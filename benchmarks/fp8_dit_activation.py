"""Why the FP8 DiT plans more activation memory than the fp16 one (memory plan: 3.61 vs
2.78 GiB at 42 blocks; 2.73 vs 2.25 GiB for one block), from the builder's layer reports.

    python -m cinema_trt.benchmarks.fp8_dit_activation [--out benchmarks/results]

Builds the cinema DiT at one block, as the memory plan does (benchmarks/memory_run.py:
TensorRT-RTX, the oldest FP8 target, the paper's request), four ways: fp16; the FP8 recipe;
the FP8 recipe with the MLP's first linear (`mlp.0`, followed by the tanh GELU) kept in
fp16; and with its second (`mlp.2`) kept in fp16. Records each build's weights and
activation memory and the layers around the MLP (the GELU's kernel and the GEMMs), and sets
the activation differences against the size of one MLP hidden tensor (visual tokens x 4 x
width). Each FP8 variant is exported in its own artifact cache (the cache key does not cover
a recipe edited in process). ~10-15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cinema_trt.models.presets import get_preset, latent_frames, latent_size

log = logging.getLogger(__name__)
GIB = 2**30
# (name, precision, extra exclusions from the FP8 recipe); the names label the record
VARIANTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("fp16", "fp16", ()),
    ("fp8", "fp8", ()),
    ("fp8, mlp.0 in fp16", "fp8", (r".*mlp\.0",)),
    ("fp8, mlp.2 in fp16", "fp8", (r".*mlp\.2",)),
)


@contextmanager
def dit_recipe_excluding(patterns: tuple[str, ...]) -> Iterator[None]:
    from cinema_trt.models.precision import Precision
    from cinema_trt.models.stage_dit import DIT

    original = DIT.recipes  # a class attribute: the exporter reads it through the graph
    recipe = original[Precision.FP8]
    type(DIT).recipes = {**original, Precision.FP8: dataclasses.replace(
        recipe, exclude=recipe.exclude + patterns)}
    try:
        yield
    finally:
        type(DIT).recipes = original


def mlp_hidden_bytes(refs: int, cfg_batch: int = 2) -> dict[str, int]:
    """Elements and fp16 bytes of one MLP hidden tensor of the visual stream (video and
    reference tokens, both CFG rows) at the paper's request."""
    config = get_preset("cinema")
    s, d = config.sampler, config.dit
    lh, lw = latent_size(s.height, s.width, d)
    per_frame = (lh // d.patch_size[1]) * (lw // d.patch_size[2])
    tokens = cfg_batch * (latent_frames(s.frames) // d.patch_size[0] + refs) * per_frame
    elements = tokens * int(d.width * d.mlp_ratio)
    return {"visual_tokens": tokens, "elements": elements, "fp16_bytes": 2 * elements}


def mlp_layers(layers: list[dict]) -> list[dict]:
    """The GELU's layer (its kernel name spells Tanh) and the GEMM on each side of it."""
    rows = [r for r in layers if r["kind"] not in ("signal", "wait", "shape_call")]
    keep: set[int] = set()
    for i, row in enumerate(rows):
        if "Tanh" in row["name"]:
            keep.update(j for j in (i - 1, i, i + 1) if 0 <= j < len(rows))
    return [{k: rows[i][k] for k in ("name", "kind", "inputs", "outputs")}
            for i in sorted(keep)]


def build_variant(name: str, precision: str, exclude: tuple[str, ...], root: Path
                  ) -> dict[str, Any]:
    from cinema_trt.benchmarks.memory_run import (
        MemoryPlanConfig,
        at_depth,
        build_memory,
        request_shapes,
    )
    from cinema_trt.engines.report import read_layers
    from cinema_trt.export.cached import cached_export
    from cinema_trt.models.cache import ArtifactCache
    from cinema_trt.models.stage_dit import DIT

    folder = root / name.replace(", ", "-").replace(" ", "-").replace(".", "")
    settings = MemoryPlanConfig(cache_dir=folder)
    base = get_preset("cinema")
    with dit_recipe_excluding(exclude):
        entry = cached_export(ArtifactCache(folder / "cache"), at_depth(base, 1),
                              dtype="fp16", fp8=precision == "fp8", stages=(DIT.name,),
                              progress=False)
    onnx_dir = folder / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    (onnx_dir / DIT.name).unlink(missing_ok=True)
    (onnx_dir / DIT.name).symlink_to(entry.path / DIT.name, target_is_directory=True)
    memory = build_memory(onnx_dir, folder / "engines", (DIT.name,), precision,
                          request_shapes(base, settings.refs), settings)[DIT.name]
    return {"weights_bytes": memory.weights, "activation_bytes": memory.activation,
            "mlp_layers": mlp_layers(read_layers(folder / "engines" / DIT.name))}


def run(out: Path, work: Path) -> tuple[Path, Path]:
    from cinema_trt.benchmarks.machine import Provenance, write_record

    provenance = Provenance.start()
    builds = {name: build_variant(name, precision, exclude, work)
              for name, precision, exclude in VARIANTS}
    hidden = mlp_hidden_bytes(refs=4)
    base = builds["fp16"]["activation_bytes"]
    record = {"schema": "cinema-trt/fp8-dit-activation/1", **provenance.block(),
              "mlp_hidden": hidden, "builds": builds,
              "surplus_vs_fp16_bytes": {n: b["activation_bytes"] - base
                                        for n, b in builds.items()}}
    return write_record(out, "fp8-dit-activation", provenance, record, markdown(record))


def markdown(record: dict[str, Any]) -> str:
    from cinema_trt.benchmarks.machine import provenance_line

    hidden = record["mlp_hidden"]
    lines = ["# FP8 DiT activation memory, one block, from the builder's layer reports", "",
             provenance_line(record),
             f"- one MLP hidden tensor: {hidden['visual_tokens']} visual tokens x 12288 = "
             f"{hidden['elements']} elements: {hidden['fp16_bytes'] / GIB:.3f} GiB in fp16, "
             f"{hidden['elements'] / GIB:.3f} GiB in FP8", "",
             "| build | weights (GiB) | activations (GiB) | vs fp16 (GiB) | MLP layers |",
             "|---|---:|---:|---:|---|"]
    for name, build in record["builds"].items():
        layers = "; ".join(f"{r['kind']} {r['inputs']}->{r['outputs']}"
                           for r in build["mlp_layers"])
        lines.append(f"| {name} | {build['weights_bytes'] / GIB:.3f} | "
                     f"{build['activation_bytes'] / GIB:.3f} | "
                     f"{record['surplus_vs_fp16_bytes'][name] / GIB:+.3f} | {layers} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--work", type=Path,
                        default=Path.home() / ".cache" / "cinema-trt" / "fp8-dit-activation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for path in run(args.out, args.work):
        print(path)


if __name__ == "__main__":
    main()

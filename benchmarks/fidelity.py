"""Pipeline fidelity on the tiny preset: where the tests' PSNR gates come from.

Each runtime's video is compared with the PyTorch fp32 video of the same request (PSNR
over the uint8 frames) over several seeds x prompts, next to how far the video moves when
the request itself changes (another prompt, other references, one reference fewer,
another seed). A gate belongs between the two: below what the runtime measured, above
what a runtime that lost an input would give. The record names the commit it measured.

    python -m cinema_trt.benchmarks.fidelity --out benchmarks/results   # ~5 min, 2 cores

Run it from outside the repository root (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import statistics
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .machine import Provenance

log = logging.getLogger(__name__)

SCHEMA = "cinema-trt/fidelity/1"
PROMPTS = ("A red circle and a blue square dance.", "a green triangle chases a yellow star")
SEEDS = (0, 1, 2, 3, 4, 5)
# the CLI tests' request (tests/export/test_pipeline_ort*.py): 32x32, 2 steps, one reference
SMALL_REQUEST = {"frames": 5, "height": 32, "width": 32, "steps": 2}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 videos in dB (inf when equal)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def _summary(values: list[float]) -> dict:
    finite = [v for v in values if np.isfinite(v)]
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "n": len(values), "identical": len(values) - len(finite)}


def _runtimes(models, folders: Mapping[str, Path]) -> dict[str, dict]:
    """Runner sets: ORT fp32 and fp16 on every stage; FP8 as tests/export/test_pipeline_ort
    runs it (every graph with an FP8 recipe in FP8, the others fp32 on ORT; the stages
    without one on torch), split stages composed with the FP8 folder's glue."""
    from cinema_trt.export.ort import OrtRunner, ort_runners
    from cinema_trt.export.stage_runners import stage_runners
    from cinema_trt.models.factory import torch_runners
    from cinema_trt.models.stages import FP8_GRAPHS, STAGES

    # a stage with an FP8 recipe in any of its graphs runs them on ORT, the FP8 ones FP8
    fp8_stages = [s for s in STAGES if any(g.name in FP8_GRAPHS for g in s.graphs)]
    found = {g.name: folders["fp8" if g.name in FP8_GRAPHS else "fp32"] / g.name
             for s in fp8_stages for g in s.graphs}
    fp8 = stage_runners(found, lambda name: OrtRunner(found[name]), glue=folders["fp8"])
    return {"ort_fp32": ort_runners(folders["fp32"]), "ort_fp16": ort_runners(folders["fp16"]),
            "ort_fp8": {**torch_runners(models), **fp8}}


def _export(config, work: Path) -> dict[str, Path]:
    from cinema_trt.export.driver import export_stages
    from cinema_trt.models.stages import FP8_GRAPHS

    # (folder, export options); fp8 exports the FP8 recipes' graphs over fp32
    plans: list[tuple[str, dict[str, Any]]] = [("fp32", {}), ("fp16", {"dtype": "fp16"}),
                                               ("fp8", {"stages": FP8_GRAPHS, "fp8": True})]
    folders = {}
    for name, options in plans:
        folders[name] = work / f"onnx-{name}"
        log.info("exporting tiny %s to %s", name, folders[name])
        export_stages(config, folders[name], progress=False, **options)
    return folders


def measure(seeds: Sequence[int] = SEEDS, prompts: Sequence[str] = PROMPTS,
            work: Path | None = None) -> dict:
    """{comparison: {min, median, max, n}} in dB, every one against torch fp32."""
    from cinema_trt.models.factory import build_models, torch_runners
    from cinema_trt.models.media import load_image, sample_references
    from cinema_trt.models.pipeline import CinemaPipeline, GenerationRequest
    from cinema_trt.models.presets import get_preset

    config = get_preset("tiny")
    models = build_models(config)  # the exporter's seed: the exported weights
    refs = tuple(load_image(p) for p in sample_references())
    with tempfile.TemporaryDirectory() as scratch:
        folders = _export(config, Path(work or scratch))
        pipelines = {name: CinemaPipeline(config, runners, models.processor)
                     for name, runners in {"torch": torch_runners(models),
                                           **_runtimes(models, folders)}.items()}
        values: dict[str, list[float]] = collections.defaultdict(list)
        for seed in seeds:
            for i, prompt in enumerate(prompts):
                def video(pipe="torch", text=prompt, images=refs[:2], seed=seed, **overrides):
                    request = GenerationRequest.with_defaults(config, text, images, seed=seed,
                                                              **overrides)
                    return pipelines[pipe].generate(request)

                reference = video()
                for name in pipelines.keys() - {"torch"}:
                    values[name].append(psnr(video(name), reference))
                values["other_prompt"].append(psnr(video(text=prompts[1 - i]), reference))
                values["other_references"].append(psnr(video(images=refs[2:4]), reference))
                values["one_reference_fewer"].append(psnr(video(images=refs[:1]), reference))
                values["other_seed"].append(psnr(video(seed=seed + 1), reference))
                small = video(images=refs[1:2], **SMALL_REQUEST)
                values["ort_fp32_small_request"].append(
                    psnr(video("ort_fp32", images=refs[1:2], **SMALL_REQUEST), small))
    return {name: _summary(v) for name, v in sorted(values.items())}


def run(out: Path, seeds: Sequence[int] = SEEDS, prompts: Sequence[str] = PROMPTS,
        work: Path | None = None) -> Path:
    """Measure and write `<out>/fidelity-tiny-<date>.json`; returns its path."""
    run = Provenance.start()
    psnr_db = measure(seeds, prompts, work)
    record = {"schema": SCHEMA, **run.block(), "preset": "tiny",
              "request": {"prompts": list(prompts), "seeds": list(seeds),
                          "references": "the first two bundled samples",
                          "video": "the preset's defaults", "small": SMALL_REQUEST},
              "psnr_db_vs_torch_fp32": psnr_db}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"fidelity-tiny-{run.date}.json"
    path.write_text(json.dumps(record, indent=2, allow_nan=True) + "\n")
    return path


def main(argv: list[str] | None = None, echo: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="seeds 0..N-1")
    parser.add_argument("--work", type=Path, help="keep the exports here (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = run(args.out, tuple(range(args.seeds)), PROMPTS, args.work)
    echo(json.dumps(json.loads(path.read_text())["psnr_db_vs_torch_fp32"], indent=1))
    echo(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

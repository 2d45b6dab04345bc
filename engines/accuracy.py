"""One stage folder's outputs against another's, through polygraphy's `Comparator`.

The inputs are the ones each export was validated on (export/check.py: the manifest's
recorded `Validation.cases`, case i drawn by the graph's `sample_inputs` with seed
CHECK_SEED + i), so the tolerances can come from what the manifests recorded about those
very inputs rather than from a number picked here. Both exports were measured against the
same reference, torch fp32, so the triangle inequality bounds their distance:

- neither side FP8: `max |b - a| <= (tol_a + tol_b) * max |torch|`, each `tol` the
  `validation.tolerance` gate its export passed (a relative max-abs error), and
  `max |torch| <= max |a| / (1 - tol_a)`; checked by polygraphy's `SimpleCompareFunc` on
  the `max` statistic with `atol` scaled by the reference output's max |.| per case.
- a side is FP8: its gate is a cosine (`validation.min_cosine`), so angles add:
  `angle(a, b) <= acos(gate_a) + acos(gate_b)`, where a non-FP8 side's angle is the worst
  cosine its validation measured on these inputs; checked by `CosineSimilarityCompareFunc`.

On a GPU the other side may be an engine folder (`cinema-trt build`): polygraphy's
`TrtRunner` runs the plan (TensorRT-RTX plans through polygraphy's `USE_TENSORRT_RTX`),
on inputs at the engine profile's `opt` shape, and the engine is held to its export's own
gate (it computes the graph its export validated; fusions and kernels must not cost more
than the export's recorded error).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cinema_trt.export.validation import CHECK_SEED, TORCH_FP32, Validation
from cinema_trt.models.text_table import text_table


@dataclass(frozen=True)
class Tolerance:
    metric: str  # "rel_max": max |other - ref| / max |ref| | "cosine": min cosine similarity
    limit: float
    why: str

    def passes(self, value: float) -> bool:
        return value <= self.limit if self.metric == "rel_max" else value >= self.limit


@dataclass(frozen=True)
class StageComparison:
    stage: str
    reference: str  # what ran the reference side: "onnxruntime fp32 (<folder>)"
    other: str
    tolerance: Tolerance
    measured: float  # worst over the cases, in the tolerance's metric
    cases: int
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "reference": self.reference, "other": self.other,
                "metric": self.tolerance.metric, "limit": self.tolerance.limit,
                "measured": self.measured, "cases": self.cases, "passed": self.passed,
                "why": self.tolerance.why}


# --- tolerances from the manifests ------------------------------------------------------


def _validation(manifest) -> Validation:
    validation = manifest.validation
    if not validation.against_torch_fp32:
        raise ValueError(f"{manifest.stage} ({manifest.precision.value}): its export was not "
                         f"validated against {TORCH_FP32} "
                         f"({validation.skipped or validation.reference or 'no check'}), so no "
                         f"tolerance follows from its manifest; compare fp32, fp16 or FP8 "
                         f"exports")
    return validation


def _angle(manifest) -> float:
    """The largest angle to torch fp32 the export's validation allows (FP8: its gate) or
    measured (others: their gate is a max-abs error, not an angle)."""
    validation = _validation(manifest)
    assert validation.error is not None
    cosine = validation.min_cosine if validation.min_cosine is not None \
        else validation.error.cosine
    return math.acos(min(1.0, max(-1.0, cosine)))


def derive_tolerance(reference, other) -> Tolerance:
    """How far `other`'s outputs may be from `reference`'s (two Manifests of one stage,
    exports or builds), from the errors their exports recorded against torch fp32."""
    a, b = _validation(reference), _validation(other)
    names = f"{reference.precision.value} vs {other.precision.value}"
    if a.min_cosine is not None or b.min_cosine is not None:
        angle = _angle(reference) + _angle(other)
        return Tolerance("cosine", math.cos(min(angle, math.pi)),
                         f"{names}: cos(acos {math.cos(_angle(reference)):.6f} + acos "
                         f"{math.cos(_angle(other)):.6f}), the exports' angles to torch fp32")
    assert a.tolerance is not None and b.tolerance is not None
    limit = (a.tolerance + b.tolerance) / (1.0 - a.tolerance)
    return Tolerance("rel_max", limit, f"{names}: ({a.tolerance:.3g} + {b.tolerance:.3g})"
                     f" / (1 - {a.tolerance:.3g}), the exports' gates vs torch fp32")


# --- inputs -----------------------------------------------------------------------------


def validation_inputs(manifest) -> list[dict[str, np.ndarray]]:
    """The feeds the export's validation ran, one per recorded case."""
    from cinema_trt.models.presets import CinemaConfig
    from cinema_trt.models.stages import graph

    cases = _validation(manifest).cases
    if not cases:
        raise ValueError(f"{manifest.stage}: the manifest records no validation cases; "
                         f"re-export the stage")
    config = CinemaConfig.from_dict(manifest.config)
    return [{k: v.numpy() for k, v in graph(manifest.stage).sample_inputs(
        config, case, seed=CHECK_SEED + i).items()} for i, case in enumerate(cases)]


def profile_inputs(manifest, profiles: dict[str, dict[str, list[int]]]
                   ) -> list[dict[str, np.ndarray]]:
    """One feed at an engine profile's `opt` shapes (the symbols read off the spec dims)."""
    from cinema_trt.models.presets import CinemaConfig
    from cinema_trt.models.stages import graph

    case = {dim: size for t in manifest.stage_spec().inputs
            for dim, size in zip(t.dims, profiles[t.name]["opt"], strict=True)
            if isinstance(dim, str)}
    config = CinemaConfig.from_dict(manifest.config)
    try:
        feed = graph(manifest.stage).sample_inputs(config, case, seed=CHECK_SEED)
    except KeyError as missing:
        raise ValueError(f"{manifest.stage} engines are compared on their export only: its "
                         f"inputs are drawn from {missing}, which a profile does not "
                         f"record") from None
    return [{k: v.numpy() for k, v in feed.items()}]


# --- runners and comparison -------------------------------------------------------------


@dataclass(frozen=True)
class _Side:
    label: str
    manifest: Any  # the folder's Manifest: what the side computes (its export's record)
    runner: Any  # a polygraphy runner
    profiles: dict[str, Any] | None = None  # engines: their profiles (None: an export)


def _side(path: Path) -> _Side:
    """An export (or `build --runtime ort`) stage folder -> OnnxrtRunner; an engine folder ->
    TrtRunner. Either way its manifest describes the stage."""
    from cinema_trt.export.manifest import read_manifest

    manifest = read_manifest(path)
    if not manifest.onnxruntime_runs:
        return _engine_side(path, manifest)
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    if manifest.compute_dtype == "bfloat16":
        raise ValueError(f"{path}: a bf16 export, which ONNX Runtime's CPU provider cannot "
                         f"run; compare its TensorRT engine on a GPU instead")
    label = f"onnxruntime {manifest.precision.value} ({path})"
    session = SessionFromOnnx(str(path / manifest.model_file), providers=["cpu"])
    return _Side(label, manifest, OnnxrtRunner(session, name=label))


def _engine_side(path: Path, manifest) -> _Side:
    import polygraphy.config

    from cinema_trt.models.backends import TENSORRT_RTX

    from .deps import runtime_info
    from .manifest import validate_manifest, verify_plan

    engine = manifest.build
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"{path} is a {engine.runtime} engine: comparing it runs it, which "
                         f"needs a CUDA GPU; on a CPU compare the exports it was built from")
    # another backend version or a GPU outside the targets: refused with the rebuild command
    validate_manifest(manifest, runtime_info(engine.runtime))
    # polygraphy imports tensorrt or tensorrt_rtx on first use, by this switch
    polygraphy.config.USE_TENSORRT_RTX = engine.runtime == TENSORRT_RTX.name
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    plan = verify_plan(path, manifest)
    label = f"{engine.runtime} {engine.precision} ({path})"
    runner = TrtRunner(EngineFromBytes(BytesFromPath(str(plan))), name=label)
    return _Side(label, manifest, runner, engine.profiles)


class _ScaledSimpleCompare:
    """polygraphy's SimpleCompareFunc with `atol = limit * max |reference output|`, set per
    case: the manifests' gates are relative to the output scale, which differs per case."""

    def __init__(self, limit: float):
        self.limit = limit

    def __call__(self, ref, other):
        from polygraphy.comparator import SimpleCompareFunc

        atol = {name: self.limit * float(np.abs(value).max()) for name, value in ref.items()}
        return SimpleCompareFunc(atol=atol, rtol=0.0, check_error_stat="max")(ref, other)


def _measured(accuracy, tolerance: Tolerance, scales: list[dict[str, float]]) -> float:
    """The worst value over every case and output, in the tolerance's metric."""
    values = []
    for results in accuracy.values():
        for case, outputs in enumerate(results):
            for name, result in outputs.items():
                if tolerance.metric == "cosine":
                    values.append(result.cosine_similarity)
                else:
                    values.append(result.max_absdiff / max(scales[case][name], 1e-30))
    if not values:
        raise RuntimeError("polygraphy compared no outputs")
    return min(values) if tolerance.metric == "cosine" else max(values)


def compare_stage(reference_dir: str | os.PathLike, other_dir: str | os.PathLike,
                  quiet: bool = True) -> StageComparison:
    """Run one stage folder against another with polygraphy and judge them by the
    tolerance their manifests imply (see the module docstring)."""
    from polygraphy.comparator import Comparator, CosineSimilarityCompareFunc
    from polygraphy.logger import G_LOGGER

    ref, other = _side(Path(reference_dir)), _side(Path(other_dir))
    if ref.profiles is not None:
        raise ValueError(f"{reference_dir}: the reference must be an export (ONNX Runtime); "
                         f"pass the engine folder second")
    if ref.manifest.stage != other.manifest.stage:
        raise ValueError(f"{reference_dir} is stage {ref.manifest.stage} but {other_dir} is "
                         f"{other.manifest.stage}; compare one stage with itself")
    # an engine is held to its export's gate (its manifest repeats the export's), on its
    # profile's opt shapes: the validation cases may lie outside its profile
    tolerance = derive_tolerance(ref.manifest, other.manifest)
    feeds = (validation_inputs(ref.manifest) if other.profiles is None
             else profile_inputs(other.manifest, other.profiles))
    severity = G_LOGGER.WARNING if quiet else G_LOGGER.INFO
    with G_LOGGER.verbosity(severity):
        runs = Comparator.run([ref.runner, other.runner], data_loader=feeds)
        compare = (CosineSimilarityCompareFunc(cosine_similarity_threshold=tolerance.limit)
                   if tolerance.metric == "cosine" else _ScaledSimpleCompare(tolerance.limit))
        accuracy = Comparator.compare_accuracy(runs, compare_func=compare)[0]
    scales = [{n: float(np.abs(v).max()) for n, v in case.items()} for case in runs[0][1]]
    measured = _measured(accuracy, tolerance, scales)
    return StageComparison(ref.manifest.stage, ref.label, other.label, tolerance, measured,
                           len(feeds), bool(accuracy) and tolerance.passes(measured))


def compare_folders(reference: str | os.PathLike, other: str | os.PathLike,
                    stages: tuple[str, ...] = (), quiet: bool = True
                    ) -> list[StageComparison]:
    """`compare_stage` for every stage both folders hold (or `stages`), by stage name; a
    folder may also be one stage's folder."""
    ref_stages, other_stages = _stage_dirs(Path(reference)), _stage_dirs(Path(other))
    from cinema_trt.export.manifest import stage_folders

    if stage_folders(reference) == [Path(reference)]:  # one stage folder against another
        return [compare_stage(reference, other, quiet=quiet)]
    common = [s for s in ref_stages if s in other_stages]
    wanted = list(stages) or common
    missing = [s for s in wanted if s not in common]
    if missing or not wanted:
        raise ValueError(f"stages {missing or wanted} are not in both folders: {reference} "
                         f"has {sorted(ref_stages)}, {other} has {sorted(other_stages)}")
    return [compare_stage(ref_stages[s], other_stages[s], quiet=quiet) for s in wanted]


def _stage_dirs(folder: Path) -> dict[str, Path]:
    """{stage: folder} of a stage folder or a folder of stage folders (by manifest)."""
    from cinema_trt.export.manifest import MANIFEST_FILE, read_manifest, stage_folders

    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; pass an export or engine folder")
    found = {read_manifest(p).stage: p for p in stage_folders(folder)}
    if not found:
        raise FileNotFoundError(f"no {MANIFEST_FILE} in {folder} or its stage folders; run "
                                f"`cinema-trt export` or `cinema-trt build` first")
    return found


def format_comparisons(results: list[StageComparison]) -> str:
    """A plain-text table: stage, metric, measured, limit, verdict."""
    rows = [("stage", "metric", "measured", "limit", "cases", "result")]
    for r in results:
        rows.append((r.stage, r.tolerance.metric, f"{r.measured:.6g}",
                     f"{r.tolerance.limit:.6g}", str(r.cases), "ok" if r.passed else "FAIL"))
    return text_table(rows)

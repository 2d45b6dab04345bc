"""`cinema-trt memory-plan`: export a preset at full width but few layers, build the stages
with TensorRT-RTX for the paper's request shapes (on a CPU: the builder reports memory
without a GPU), and extrapolate to full depth (memory_plan.py).

Per plan (fp16; fp8 = the FP8 recipes' stages as FP8 over fp16 compute, every other stage
the fp16 engine), the depth-scaled graphs (their `depth`, models/stage.py) are exported and
built at two depths, the others once, whole. Every export runs in a fresh process, so the machine's
peak is one export's, not the sum of what earlier ones left behind.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cinema_trt.models.backends import TENSORRT_RTX, parse_targets, resolve_targets, sm
from cinema_trt.models.precision import Precision, policy
from cinema_trt.models.presets import CinemaConfig, SamplerConfig, get_preset
from cinema_trt.models.stages import FP8_GRAPHS, GRAPH_NAMES, GRAPHS

from .memory_plan import EngineMemory, StagePlan, extrapolate

log = logging.getLogger(__name__)

# graph -> (config section, field) holding its depth; the other graphs are built whole
DEPTH_FIELDS = {g.name: g.depth for g in GRAPHS if g.depth is not None}
PLANS = ("fp16", "fp8")
# FP8 calibration runs the pipeline on the config's sampler defaults (export/calibration.py);
# at the paper's 45 x 480 x 720 that is hours per step on a CPU, so the reduced configs
# calibrate on a short clip. It sets the Q/DQ scales, not the engines' shapes or memory.
CALIBRATION_SAMPLER = SamplerConfig(frames=5, height=64, width=64, steps=2, guidance=6.0)


@dataclass(frozen=True)
class MemoryPlanConfig:
    preset: str = "cinema"
    depths: tuple[int, int] = (1, 2)  # the two depths the depth-scaled stages are built at
    plans: tuple[str, ...] = PLANS
    # the oldest architecture with FP8 (the precision policy's); one target keeps builds short
    targets: tuple[str, ...] = (sm(policy(Precision.FP8).min_sm),)
    refs: int = 4  # references per request (the profile's opt and max)
    # the builder's workspace limit. Its activation figure is the stage's need, not a choice
    # under the limit (cinema DiT, VAE encoder and MLLM text: identical at 8 and 80 GiB); a
    # stage needing more fails to build ("OutOfMemory (Requested size was <limit + 0.146
    # GiB>)", whatever the limit below its need: the cinema VAE decoder failed at 8, 9, 12,
    # 16 and 24 GiB and needs 33.5). So the limit is the largest card: a stage that does not
    # build under it runs on none of them.
    workspace_gib: float = 80.0
    cache_dir: Path = Path.home() / ".cache" / "cinema-trt" / "memory-plan"

    def __post_init__(self):
        d1, d2 = self.depths
        if not 0 < d1 < d2:
            raise ValueError(f"depths={self.depths} must be two increasing positive depths")
        unknown = [p for p in self.plans if p not in PLANS]
        if unknown or not self.plans:
            raise ValueError(f"plans {unknown or self.plans} must be from {list(PLANS)}")
        config = get_preset(self.preset)
        full = min(getattr(getattr(config, s), f) for s, f in DEPTH_FIELDS.values())
        if d2 > full:
            raise ValueError(f"depths={self.depths} exceed the preset's shallowest depth-"
                             f"scaled stage ({full} layers)")
        max_refs = min(config.mllm.max_refs, config.dit.max_refs)
        if not 1 <= self.refs <= max_refs:
            raise ValueError(f"refs={self.refs} must be in 1..{max_refs}")
        targets = parse_targets(",".join(self.targets))
        for plan in self.plans:  # fp8's minimum target: refused before exporting anything
            resolve_targets(TENSORRT_RTX, Precision.parse(plan), targets)
        object.__setattr__(self, "targets", targets)
        if not 0 < self.workspace_gib <= 1024:
            raise ValueError(f"workspace_gib={self.workspace_gib} must be in (0, 1024]")
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))


def at_depth(config: CinemaConfig, depth: int) -> CinemaConfig:
    """`config` with every depth-scaled stage at `depth` layers and the calibration sampler."""
    sections: dict[str, Any] = {}
    for section, field_name in DEPTH_FIELDS.values():
        current = sections.get(section, getattr(config, section))
        sections[section] = dataclasses.replace(current, **{field_name: depth})
    return dataclasses.replace(config, **sections, sampler=CALIBRATION_SAMPLER)


def full_depths(config: CinemaConfig) -> dict[str, int]:
    return {stage: getattr(getattr(config, s), f) for stage, (s, f) in DEPTH_FIELDS.items()}


def request_shapes(config: CinemaConfig, refs: int) -> dict:
    """The profiles.yaml mapping of the paper's request: the preset's video (45 frames,
    480 x 720 for cinema), one video with its CFG pair, 1..refs references."""
    s = config.sampler
    return {"batch": 1, "frames": s.frames, "height": s.height, "width": s.width,
            "refs": {"min": 1, "opt": refs, "max": refs}, "cfg": True}


def _export_job(config_dict: dict, cache_dir: str, groups: list[tuple[str, ...]], fp8: bool
                ) -> dict[str, Path]:
    """{stage: its folder in an artifact-cache export entry (models/cache.py)}, one entry per
    group of stages, made unless cached, in a worker process (spawned: nothing inherited)."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cinema_trt.export.cached import cached_export
    from cinema_trt.models.cache import ArtifactCache

    config, cache = CinemaConfig.from_dict(config_dict), ArtifactCache(Path(cache_dir))
    return {stage: cached_export(cache, config, dtype="fp16", fp8=fp8, stages=group,
                                 progress=False).path / stage
            for group in groups for stage in group}


def export_once(config: CinemaConfig, cache_dir: Path, folder: Path, stages: tuple[str, ...],
                fp8: bool) -> Path:
    """`folder`, linking each of `stages` to its export of `config` in fp16 (or FP8 over
    fp16) in the artifact cache under `cache_dir`. FP8 stages are one entry each (each
    calibrates on its own, so one failing its accuracy gate costs no other)."""
    groups: list[tuple[str, ...]] = [(s,) for s in stages] if fp8 else [stages]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        exported = pool.submit(_export_job, config.to_dict(), str(cache_dir), groups,
                               fp8).result()
    folder.mkdir(parents=True, exist_ok=True)
    for stage, path in exported.items():
        (folder / stage).unlink(missing_ok=True)
        (folder / stage).symlink_to(path, target_is_directory=True)
    return folder


def build_memory(onnx_dir: Path, out_dir: Path, stages: tuple[str, ...], precision: str,
                 shapes: dict, settings: MemoryPlanConfig) -> dict[str, EngineMemory]:
    """Build `stages` with TensorRT-RTX for `shapes`; the builder's figures per stage."""
    import yaml

    from cinema_trt.engines.build import BuildRequest, build_stages
    from cinema_trt.engines.config import BuildConfig
    from cinema_trt.engines.manifest import built
    from cinema_trt.export.manifest import read_manifest

    out_dir.mkdir(parents=True, exist_ok=True)
    profile = out_dir / "profiles.yaml"
    profile.write_text(yaml.safe_dump(shapes, sort_keys=True))
    build = BuildConfig(precision=Precision.parse(precision), targets=settings.targets,
                        workspace_gib=settings.workspace_gib)
    build_stages(BuildRequest(onnx_dir, out_dir, build, profile=profile, runtime=TENSORRT_RTX.name,
                              stages=stages))
    figures = {}
    for stage in stages:
        memory = built(read_manifest(out_dir / stage)).report.get("memory", {})
        if "weights_bytes" not in memory or "activation_bytes" not in memory:
            raise RuntimeError(f"{out_dir / stage}: the build manifest records no builder "
                               f"memory figures ({memory}); the builder log format changed?")
        figures[stage] = EngineMemory(memory["weights_bytes"], memory["activation_bytes"],
                                      memory.get("device_persistent_bytes", 0))
    return figures


def _depths_of(stage: str, settings: MemoryPlanConfig) -> tuple[int, ...]:
    """The depths a stage is built at: both for depth-scaled stages, else once, whole, at
    the deeper config (their graphs do not depend on depth)."""
    return settings.depths if stage in DEPTH_FIELDS else settings.depths[-1:]


def fp8_exports(settings: MemoryPlanConfig) -> dict[str, str]:
    """Export every FP8 recipe stage at its depths, one stage per export (each calibrates
    on its own), so one stage failing its accuracy gate does not cost the others. Returns
    {stage: why} for the stages whose FP8 export failed."""
    from cinema_trt.export.check import ExportError

    base = get_preset(settings.preset)
    failed: dict[str, str] = {}
    for stage in FP8_GRAPHS:
        for depth in _depths_of(stage, settings):
            folder = settings.cache_dir / f"onnx-depth{depth}-fp8"
            try:
                export_once(at_depth(base, depth), settings.cache_dir, folder, (stage,), True)
            except ExportError as error:
                log.warning("%s: FP8 export at depth %d failed: %s", stage, depth, error)
                failed[stage] = f"FP8 export at depth {depth} failed: {error}"
                break
    return failed


def plan_stages(settings: MemoryPlanConfig, plan: str) -> tuple[list[StagePlan], list[str]]:
    """Export, build and extrapolate every stage of one plan; returns the stages and notes
    (an FP8 recipe stage whose export fails its accuracy gate is planned in fp16)."""
    base = get_preset(settings.preset)
    shapes = request_shapes(base, settings.refs)
    failed = fp8_exports(settings) if plan == "fp8" else {}
    notes = [f"{stage}: planned in fp16 ({why})" for stage, why in failed.items()]
    precisions = {s: "fp8" if plan == "fp8" and s in FP8_GRAPHS and s not in failed
                  else "fp16" for s in GRAPH_NAMES}
    measured: dict[str, dict[int, EngineMemory]] = {s: {} for s in GRAPH_NAMES}
    for depth in settings.depths:
        config = at_depth(base, depth)
        for kind in dict.fromkeys(precisions.values()):
            stages = tuple(s for s in GRAPH_NAMES if precisions[s] == kind
                           and depth in _depths_of(s, settings))
            if not stages:
                continue
            folder = settings.cache_dir / f"onnx-depth{depth}-{kind}"
            export_once(config, settings.cache_dir, folder, stages, fp8=kind == "fp8")
            figures = build_memory(folder, settings.cache_dir / f"engines-depth{depth}-{kind}",
                                   stages, kind, shapes, settings)
            for stage, memory in figures.items():
                measured[stage][depth if stage in DEPTH_FIELDS else 0] = memory
    full = full_depths(base)
    return ([extrapolate(s, precisions[s], measured[s], full.get(s, 0)) for s in GRAPH_NAMES],
            notes)

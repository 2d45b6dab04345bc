"""What a build is made from: an export folder and its manifest, whose spec, config,
precision and compute dtype are believed, not re-derived from the graph."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cinema_trt.export.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    Manifest,
    check_export,
    stage_folders,
)
from cinema_trt.models.presets import CinemaConfig, Decoding
from cinema_trt.models.specs import StageSpec


@dataclass(frozen=True)
class ExportedStage:
    """An export folder (one graph) and its manifest."""

    folder: Path
    manifest: Manifest
    # a build's choice of decoding, already in `manifest.config` (engines/build.py
    # `decoded`); kept so the rebuild command repeats it
    decoding: Decoding = Decoding()

    @classmethod
    def read(cls, folder: str | os.PathLike) -> ExportedStage:
        """A complete export folder; its graph is not hashed here (the build's cache key
        hashes it, and a graph edited after export builds as it is)."""
        return cls(Path(folder), check_export(folder, graph_hash=False))

    @property
    def name(self) -> str:
        return self.manifest.stage

    @property
    def onnx_path(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def config(self) -> CinemaConfig:
        return CinemaConfig.from_dict(self.manifest.config)

    @property
    def spec(self) -> StageSpec:  # the exported tensors
        return self.manifest.stage_spec()


def exported_stages(onnx_dir: str | os.PathLike) -> dict[str, ExportedStage]:
    """Every complete stage export under `onnx_dir`, by the stage name in its manifest."""
    onnx_dir = Path(onnx_dir)
    if not onnx_dir.is_dir():
        raise FileNotFoundError(f"ONNX folder {onnx_dir} does not exist; run "
                                f"`cinema-trt export --out {onnx_dir}` first")
    stages = {stage.name: stage for stage in map(ExportedStage.read, stage_folders(onnx_dir))}
    if not stages:
        raise FileNotFoundError(f"no exported stages (<stage>/{MODEL_FILE} + {MANIFEST_FILE}) "
                                f"under {onnx_dir}")
    return stages


def select_stages(found: dict[str, ExportedStage], wanted: tuple[str, ...]
                  ) -> list[ExportedStage]:
    unknown = [s for s in wanted if s not in found]
    if unknown:
        raise ValueError(f"stages {unknown} were not exported; available: {sorted(found)}")
    chosen = [found[s] for s in (wanted or sorted(found))]
    architectures = {stage.config.to_json() for stage in chosen}
    if len(architectures) > 1:
        presets = sorted({s.config.name for s in chosen})
        raise ValueError(f"the exported stages come from different configs ({presets}); "
                         "export every stage from one model, then build")
    return chosen

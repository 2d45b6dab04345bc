"""What a stage is: everything the exporter, engine builds, runners, repository generator,
pipeline and benchmarks ask of one, as objects (models/stages.py lists them).

A `Graph` is one exported (built, served) ONNX graph: its I/O spec, the module it is traced
from, check cases, symbol values for a request, sample inputs, quantization recipes. A
`Stage` is what the pipeline calls through one runner: by default exported as one graph,
itself; a stage whose graphs differ from its contract (the MLLM's two halves) lists them in
`graphs` and joins their runners in `compose`. Torch-free at import.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .precision import Precision, WeightFormat
from .specs import StageSpec, resolve, video_dims

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .factory import CinemaModels
    from .presets import CinemaConfig
    from .runner import Runner

Case = dict[str, int]  # a graph's symbol values (+ what its inputs are drawn from)


@dataclass(frozen=True)
class Recipe:
    """A graph's quantization recipe (export/fp8.py applies the FP8 one): every nn.Linear
    whose module path matches no `exclude` regex; `why` goes into the manifest.

    `min_cosine` gates the export (cosine to torch fp32 on the check cases). FP8 E4M3 keeps
    3 mantissa bits (~3% per value); measured on tiny: dit 0.99996, connector 0.9966 (its
    width-32 GEMMs average few products), MLLM text 0.99999; the gates leave 3-10x headroom
    in (1 - cosine). They judge accuracy, not correctness (on random weights even reversed
    scales keep the DiT near 0.999), so tests also compare with `export.fp8.emulate_fp8`.
    """

    exclude: tuple[str, ...]
    min_cosine: float
    why: str

    def layers(self, module: nn.Module) -> list[str]:
        """Names (module paths) of the Linear layers this recipe quantizes, in order."""
        from torch import nn

        patterns = [re.compile(p) for p in self.exclude]
        return [name for name, m in module.named_modules() if isinstance(m, nn.Linear)
                and not any(p.fullmatch(name) for p in patterns)]

    def excluded(self, module: nn.Module) -> list[str]:
        from torch import nn

        quantized = set(self.layers(module))
        return [name for name, m in module.named_modules()
                if isinstance(m, nn.Linear) and name not in quantized]


@dataclass(frozen=True)
class Request:
    """A request's sizes at one level of a deployment profile (engines/shapes.py), of the
    warm-up (serving/warmup.py) or of the served limits; `Graph.symbols` reads it."""

    batch: int  # videos
    frames: int
    height: int
    width: int
    refs: int  # reference images per video
    seq: int  # MLLM tokens
    images: int  # images the MLLM sees in one call (0: the negative prompt has none)
    image_pixels: int  # pixels of each image after the processor's resize
    cfg: bool  # the DiT runs (cond, uncond) as one batch


class Graph:
    """One exported graph: subclasses set `name`, `spec`, `module`, `cases`, `symbols`."""

    name: ClassVar[str]
    # quantization recipes by the precision they export (Precision.FP8: export/fp8.py)
    recipes: ClassVar[Mapping[Precision, Recipe]] = {}
    # weight-only recipes by format (models/precision.WEIGHT_FORMATS; `cinema-trt export
    # --weight-only`, export/weight_only.py): the graphs whose weights are worth it
    weight_only: ClassVar[Mapping[WeightFormat, Recipe]] = {}
    # (config section, field) its size follows: the memory plan scales it by depth
    depth: ClassVar[tuple[str, str] | None] = None
    # its attention can be exported as TensorRT plugin nodes (`module(plugin=True)`)
    attention_plugin: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def spec(self, config: CinemaConfig) -> StageSpec:
        raise NotImplementedError

    def exported_spec(self, config: CinemaConfig, compute: str) -> StageSpec:
        """Its I/O once exported computing in `compute` (a models/dtypes.py name,
        "float16"; the manifest's compute_dtype): `spec`, whose float I/O stays float32
        whatever the graph computes in (export/dtype.py), unless the graph hands tensors
        back to itself call after call (the VAE decoder's chunk state)."""
        return self.spec(config)

    def module(self, models: CinemaModels, plugin: bool = False) -> nn.Module:
        """What the graph is traced from (forward takes the spec's inputs, in order);
        `plugin`: its attention as TensorRT plugin nodes (attention_plugin)."""
        raise NotImplementedError

    def cases(self, config: CinemaConfig) -> tuple[Case, tuple[Case, ...]]:
        """(traced example, check cases of two different shapes), from `config`. Examples
        take distinct values, not 0 or 1: torch.export specialises a dim whose example is 0
        or 1 and may tie together dims whose examples are equal."""
        raise NotImplementedError

    def symbols(self, request: Request, config: CinemaConfig) -> dict[str, int]:
        """The value of every symbol of the spec in the calls of `request`."""
        raise NotImplementedError

    def shapes(self, request: Request, config: CinemaConfig) -> dict[str, tuple[int, ...]]:
        values = self.symbols(request, config)
        return {t.name: resolve(t, values) for t in self.spec(config).inputs}

    def sample_inputs(self, config: CinemaConfig, case: Case, seed: int = 0
                      ) -> dict[str, torch.Tensor]:
        """Deterministic, realistic inputs at the shape `case` (no weights needed)."""
        import torch

        from .samples import draw

        generator = torch.Generator().manual_seed(seed)
        return {t.name: draw(t.name, resolve(t, case), generator)
                for t in self.spec(config).inputs}

    def save_glue(self, models: CinemaModels, folder: Path) -> dict[str, str]:
        """Write the files beside the graph that `Stage.compose` reads; {name: sha256}."""
        return {}

    def calibration_batches(self, models: CinemaModels, count: int = 4
                            ) -> list[dict[str, Any]]:
        """`count` batches of the graph's inputs (numpy) that weight-only AWQ weighs the
        weight error by (export/weight_only.py): sample inputs at the traced example."""
        example, _ = self.cases(models.config)
        return [{k: v.numpy() for k, v in self.sample_inputs(models.config, example,
                                                             seed=seed).items()}
                for seed in range(count)]


class Stage(Graph):
    """A pipeline stage: the runner the pipeline calls, exported as `graphs`."""

    # the CinemaModels field with its weights and the submodule that runs it ("": all)
    part: ClassVar[str]
    submodule: ClassVar[str] = ""
    # called once per denoising step (the DiT): CUDA graphs pay off, and the benchmarks'
    # fp8 variant swaps in its FP8 graph (its cost is `steps` times any other's)
    per_step: ClassVar[bool] = False
    encodes: ClassVar[bool] = False  # runs before the denoising loop (memory plan phases)
    # the memory plan frees its engines once a request is encoded (the MLLM, the largest)
    released_after_encoding: ClassVar[bool] = False
    glue: ClassVar[str] = ""  # the graph whose folder holds the files `compose` reads
    weights_entry: ClassVar[str]  # its entry in a weights folder (models/factory.py)

    @property
    def graphs(self) -> tuple[Graph, ...]:  # exported, built and served, in order
        return (self,)

    @property
    def split(self) -> bool:
        return self.graphs != (self,)

    @property
    def cuda_graph(self) -> bool:  # its TensorRT runner replays CUDA graphs
        return self.per_step

    def module(self, models: CinemaModels, plugin: bool = False) -> nn.Module:
        return self._of(getattr(models, self.part))

    def _of(self, part: nn.Module) -> nn.Module:
        return getattr(part, self.submodule) if self.submodule else part

    def new_part(self, config: CinemaConfig) -> nn.Module:
        """A module of its part with fresh weights (what a weights file loads into)."""
        raise NotImplementedError

    def load_part(self, folder: str | os.PathLike, config: CinemaConfig) -> Any:
        """Its part from a weights folder saved for `config`, loaded strictly."""
        from .weights import load_stage

        return load_stage(self.new_part(config), Path(folder) / self.weights_entry)

    def load(self, folder: str | os.PathLike, config: CinemaConfig) -> nn.Module:
        """`module` from a weights folder; reads `weights_entry` only (a served stage)."""
        return self._of(self.load_part(folder, config))

    def save(self, models: CinemaModels, folder: Path) -> None:
        from .weights import save_stage

        save_stage(getattr(models, self.part), folder / self.weights_entry,
                   metadata={"preset": models.config.name})

    def compose(self, runners: Mapping[str, Runner], glue: str | os.PathLike | None = None
                ) -> Runner:
        """Its runner from its graphs' (by name); `glue`: the `glue` graph's export folder."""
        return runners[self.name]


def video_symbols(config: CinemaConfig, request: Request, frames: int | None = None
                  ) -> dict[str, int]:
    """The video symbols (frames, latent sizes, refs) of `request`; `frames` overrides."""
    return video_dims(config, request.frames if frames is None else frames, request.height,
                      request.width, request.refs)


def video_cases(config: CinemaConfig) -> tuple[Case, Case, Case]:
    """(example, check 1, check 2) of the video graphs: latent dims valid for the DiT's
    patch, with pixel sizes (frames = 1 + 4 (T - 1)); K=1 and 5 frames, then K=3 (or max),
    9 frames and a transposed aspect ratio."""
    from .presets import VAE_SPATIAL, VAE_TEMPORAL

    pt, ph, pw = config.dit.patch_size
    refs = min(3, config.dit.max_refs)
    cases = ({"batch": 2, "refs": refs, "lframes": 5 * pt, "lheight": 3 * ph, "lwidth": 4 * pw},
             {"batch": 2, "refs": 1, "lframes": pt * (1 + 5 // VAE_TEMPORAL),
              "lheight": 2 * ph, "lwidth": 3 * pw},
             {"batch": 1, "refs": refs, "lframes": pt * (1 + 9 // VAE_TEMPORAL),
              "lheight": 3 * ph, "lwidth": 2 * pw})
    example, one, two = ({**c, "frames": 1 + VAE_TEMPORAL * (c["lframes"] - 1),
                          "height": VAE_SPATIAL * c["lheight"],
                          "width": VAE_SPATIAL * c["lwidth"]} for c in cases)
    return example, one, two


class TextGraph(Graph):
    """A graph on the MLLM's token sequences (its text graph, the connector): their check
    cases and symbols."""

    def cases(self, config: CinemaConfig) -> tuple[Case, tuple[Case, ...]]:
        """Odd lengths, batches 1-3."""
        return {"batch": 2, "seq": 37}, ({"batch": 1, "seq": 23}, {"batch": 3, "seq": 61})

    def symbols(self, request: Request, config: CinemaConfig) -> dict[str, int]:
        return text_symbols(request, config)


def text_symbols(request: Request, config: CinemaConfig) -> dict[str, int]:
    """The MLLM's symbols for `request`, shared by its text graph and the connector."""
    from .specs import image_patches

    return {"batch": request.batch, "seq": request.seq, "images": request.images,
            "patches": request.images * image_patches(config, request.image_pixels)}

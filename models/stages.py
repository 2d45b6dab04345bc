"""The stage registry: every pipeline stage, the graphs it is exported and built as, and
its precision options, named once. Exporters, engine builds, runners, the Triton repository
generator, the pipeline and the benchmarks iterate STAGES instead of spelling names out.

    stage        graphs                      FP8 recipe (export/fp8.py)   glue
    mllm         mllm_vision + mllm_text     mllm_text                    mllm_text/ folder
    connector    connector                   connector
    vae_encoder  vae_encoder                 -
    dit          dit                         dit
    vae_decoder  vae_decoder                 -

A split stage (more than one graph) is joined back into its pipeline contract by torch
glue (export/mllm_split.py) whose files (HF config, token embeddings) the exporter writes
beside the `glue` graph. Every graph is exported in any `--dtype`; `fp8` names the graphs
that also take `--fp8`. Torch-free: the CLI reads it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

MLLM_VISION = "mllm_vision"  # the Qwen2-VL vision tower on flat patches
MLLM_TEXT = "mllm_text"  # the LLM prefill from inputs_embeds


@dataclass(frozen=True)
class Stage:
    name: str  # the pipeline stage: a runner's key and its models/specs.py contract
    graphs: tuple[str, ...]  # what is exported, built and served, in order
    fp8: tuple[str, ...] = ()  # graphs with an FP8 recipe
    glue: str = ""  # split stages: the graph whose folder holds the glue files

    def __post_init__(self) -> None:
        if self.split and self.glue not in self.graphs:
            raise ValueError(f"split stage {self.name!r} needs glue= one of {self.graphs}")

    @property
    def split(self) -> bool:
        return self.graphs != (self.name,)


STAGES = (
    Stage("mllm", (MLLM_VISION, MLLM_TEXT), fp8=(MLLM_TEXT,), glue=MLLM_TEXT),
    Stage("connector", ("connector",), fp8=("connector",)),
    Stage("vae_encoder", ("vae_encoder",)),
    Stage("dit", ("dit",), fp8=("dit",)),
    Stage("vae_decoder", ("vae_decoder",)),
)
BY_NAME = {stage.name: stage for stage in STAGES}
PIPELINE_STAGES = tuple(stage.name for stage in STAGES)
GRAPHS = tuple(graph for stage in STAGES for graph in stage.graphs)
FP8_GRAPHS = tuple(graph for stage in STAGES for graph in stage.fp8)
SPLIT_STAGES = tuple(stage for stage in STAGES if stage.split)
SPLIT_GRAPHS = tuple(graph for stage in SPLIT_STAGES for graph in stage.graphs)
GLUE_GRAPHS = tuple(stage.glue for stage in SPLIT_STAGES if stage.glue)
# a name that stands for several graphs ("mllm" is exported as its two halves)
STAGE_ALIASES = {stage.name: stage.graphs for stage in SPLIT_STAGES}
# graphs whose size follows a config depth field (benchmarks/memory_run.py scales them)
DEPTH_FIELDS = {"dit": ("dit", "depth"), MLLM_TEXT: ("mllm", "num_layers"),
                MLLM_VISION: ("mllm", "vision_depth")}


def graphs_of(stages: tuple[str, ...]) -> tuple[str, ...]:
    """Pipeline stages -> their graphs, in registry order."""
    return tuple(graph for stage in STAGES if stage.name in stages for graph in stage.graphs)

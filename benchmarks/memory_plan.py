"""The paper-scale memory plan: per-stage engine memory extrapolated to full depth, and the
pipeline's peak on a card, with and without the MLLM released after encoding.

Pure arithmetic over the builder's figures (engines' manifests record them: weights,
activation and persistent device memory, read from the TensorRT log; no GPU needed), so it
is tested on small numbers; `memory_run.py` produces the figures.

The extrapolation model, stage by stage, from builds at two depths d1 < d2 of the same
width (DiT blocks, MLLM text layers, MLLM vision blocks: the graphs' `depth`, models/stage.py;
the other stages are built whole):
- weights: every block has the same parameters, so the engine's weights are
  `base + depth * per_block`; two builds give both, W(L) = W(d2) + (L - d2) * (W(d2) -
  W(d1)) / (d2 - d1). Persistent device memory (per-layer tactic state) is extrapolated the
  same way, which can only overstate it.
- activations: the builder assigns every intermediate tensor a slot in one activation
  region, reusing a slot once its tensor is dead; blocks run one after another and only
  the residual stream crosses a block boundary, so the region is about one block's peak,
  not a sum over blocks. Whatever does stay live across blocks (e.g. per-block vectors
  computed up front) shows as growth between the two builds; it is extrapolated linearly:
  A(L) = A(d2) + (L - d2) * max(0, A(d2) - A(d1)) / (d2 - d1). Measured on the cinema DiT
  (fp16): 2.248 GiB at 1 block, 2.261 GiB at 2 (+0.6% per block), so the block's peak is
  the bulk and the growth term adds ~0.5 GiB over 42 blocks (an upper bound, should the
  growth be layout noise). `growth_share` records how much of A(L) the growth term is.

The pipeline's peak (engines run one stage at a time and share one activation region,
as `TensorRTRunner` does; see engines/README.md):
- MLLM kept: every engine's weights and persistent memory + the largest activation.
- MLLM released after encoding: phase 1 (ENCODE_STAGES: the MLLM's graphs,
  connector, vae_encoder) holds its engines; the MLLM's are freed before the DiT and the
  VAE decoder are loaded for phase 2 (the connector and VAE encoder are small and stay).
  Peak = max over the phases of (resident engines' weights + persistent + that phase's
  largest activation).
Not included: the CUDA context and the runtime's own allocations (hundreds of MiB, not
reported by the builder), the host-side tokenizer/processor, and input/output buffers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cinema_trt.models.stages import STAGES

GIB = 2**30
CARDS_GIB = (24, 48, 80)
# the pipeline's phases (models/stage.py `Stage.encodes`), by graph
ENCODE_STAGES = tuple(g.name for s in STAGES if s.encodes for g in s.graphs)
DENOISE_STAGES = tuple(g.name for s in STAGES if not s.encodes for g in s.graphs)
RELEASED_STAGES = tuple(g.name for s in STAGES if s.released_after_encoding for g in s.graphs)
# the model in one paragraph per point, carried by every record (see the module docstring)
MODEL_NOTE = (
    "Figures are the TensorRT-RTX builder's own (Total Weights / Activation / Device "
    "Persistent Memory), for the profile's max shapes; no engine ran.",
    "Weights (and persistent memory) scale linearly with depth: two builds at depths "
    "d1 < d2 give base + per-block, extrapolated to the full depth.",
    "Activations are about one block's peak (the builder reuses one activation region "
    "across layers); what grows between the two builds (tensors live across blocks) is "
    "extrapolated linearly on top, and `growth_share` says how much of the total it is.",
    "Pipeline peak: stages run one at a time and share one activation region. MLLM kept: "
    "all weights + the largest activation. Released: encode phase (MLLM, connector, VAE "
    "encoder) then denoise + decode phase (connector, VAE encoder, DiT, VAE decoder), the "
    "larger of the two.",
    "Not included (the builder does not report them): the CUDA context and the runtime's "
    "own allocations, I/O buffers, the runtime's JIT kernel cache.",
)


@dataclass(frozen=True)
class EngineMemory:
    """The builder's figures for one engine, in bytes."""

    weights: int
    activation: int
    persistent: int = 0


@dataclass(frozen=True)
class StagePlan:
    stage: str
    precision: str  # the engine's: fp16, or fp8 for the FP8 recipes' stages
    measured: dict[int, EngineMemory]  # depth built -> figures ({0: ...}: built whole)
    full_depth: int  # 0: the stage was built whole
    full: EngineMemory  # extrapolated to full_depth (or the whole build)
    # of full.activation, the part extrapolated from growth between the two depths (0 when
    # the deeper build needed no more than the shallower one, or for a whole build)
    growth_share: float = 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["measured"] = {str(d): asdict(m) for d, m in self.measured.items()}
        return data


def _linear(low: int, high: int, d1: int, d2: int, depth: int) -> int:
    slope = (high - low) / (d2 - d1)
    return round(high + (depth - d2) * slope)


def extrapolate(stage: str, precision: str, measured: dict[int, EngineMemory],
                full_depth: int) -> StagePlan:
    """A stage's full-depth memory from builds at two depths (or its one whole build)."""
    if list(measured) == [0]:
        return StagePlan(stage, precision, measured, 0, measured[0])
    if len(measured) != 2:
        raise ValueError(f"{stage}: need builds at two depths to extrapolate, got "
                         f"{sorted(measured)}")
    d1, d2 = sorted(measured)
    if not 0 < d1 < d2 <= full_depth:
        raise ValueError(f"{stage}: depths {d1}, {d2} must satisfy 0 < d1 < d2 <= "
                         f"{full_depth} (the full depth)")
    a, b = measured[d1], measured[d2]
    weights = _linear(a.weights, b.weights, d1, d2, full_depth)
    persistent = _linear(a.persistent, b.persistent, d1, d2, full_depth)
    peak = max(a.activation, b.activation)  # a shallower build never needs more
    activation = _linear(peak - max(0, b.activation - a.activation), peak, d1, d2, full_depth)
    return StagePlan(stage, precision, measured, full_depth,
                     EngineMemory(weights, activation, persistent),
                     growth_share=(activation - peak) / activation if activation else 0.0)


@dataclass(frozen=True)
class PipelinePeak:
    plan: str  # "fp16" | "fp8"
    release_mllm: bool
    peak: int  # bytes
    phases: dict[str, int]  # phase -> bytes at its peak
    fits: dict[str, bool]  # "24 GiB" -> peak <= capacity


def _phase(stages: list[StagePlan], resident: tuple[str, ...], active: tuple[str, ...]) -> int:
    by_stage = {s.stage: s.full for s in stages}
    held = sum(by_stage[s].weights + by_stage[s].persistent for s in resident if s in by_stage)
    return held + max((by_stage[s].activation for s in active if s in by_stage), default=0)


def pipeline_peaks(plan: str, stages: list[StagePlan],
                   cards_gib: tuple[int, ...] = CARDS_GIB) -> list[PipelinePeak]:
    """The peak with the MLLM kept and with it released after encoding."""
    names = tuple(s.stage for s in stages)
    kept = {"all stages": _phase(stages, names, names)}
    after_encode = tuple(s for s in names if s not in RELEASED_STAGES)
    released = {"encode": _phase(stages, ENCODE_STAGES, ENCODE_STAGES),
                "denoise + decode": _phase(stages, after_encode, DENOISE_STAGES)}
    peaks = []
    for release, phases in ((False, kept), (True, released)):
        peak = max(phases.values())
        peaks.append(PipelinePeak(plan, release, peak, phases,
                                  {f"{c} GiB": peak <= c * GIB for c in cards_gib}))
    return peaks

"""The served memory plan's engines, from recorded builder figures (no build): the engine
variants a deployment can choose between and the plans made of them, for
serving/served_memory.py to price per layout and card.

Where each figure comes from (every one the TensorRT-RTX builder's, sm89, no GPU):
- the memory record (`cinema-trt memory-plan`, *-memory-<preset>-*.json): every stage at
  fp16, the DiT at fp8, extrapolated to full depth (benchmarks/memory_plan.py), and the
  one-shot VAE decoder;
- the VAE chunks record (benchmarks/vae_chunks.py, *-vae-chunks-*.json): the decoder's step
  graph at 1 latent frame (whole 60 x 90 latents, and a 32 x 32-latent tile) and the state it
  carries at the paper's shape in fp16 (the engines' precision);
- the weight-only record (benchmarks/weight_only.py, *-weight-only-*.json): `mllm_text`
  INT8 and INT4 (RTN) weight-only at paper width, ONE layer; extrapolated here like the fp16
  build: the layer's weights times the full depth plus the fp16 base, its activation plus
  the fp16 builds' growth per layer (an estimate: no quantized build at two depths exists).
I/O buffers are every input and output of each graph at the record's request (max level),
at the dtypes of its fp16 export (`Graph.exported_spec`: float32 for the video tensors, an
upper bound where an engine takes fp16; the decoder's state in fp16).

Preference among plans that fit (`rank`, lower first): resident before streamed (a
streamed DiT copies what is not resident from host memory on every call, every step: the
speed this toolkit is for), then exact decoding before tiles (tiles blend seams: 0.11 mean
error of the output scale, the chunks record), then the MLLM's text half fp16 > INT8 > INT4
(INT4's cosine at paper width on random weights is 0.92), then the DiT fp16 > FP8 (FP8 passes
its gate); a tie goes to the smaller peak.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cinema_trt.models.precision import Precision, compute_dtype
from cinema_trt.models.specs import tensor_bytes
from cinema_trt.models.stage_mllm import MLLM_TEXT
from cinema_trt.models.stages import DIT, MLLM, STAGES, VAE_DECODER, VAE_ENCODER
from cinema_trt.serving.served_memory import GIB, EngineFigures, ServedPlan

MEMORY_SCHEMA = "cinema-trt/memory-plan/1"
CHUNKS_SCHEMA = "cinema-trt/vae-chunks/1"
WEIGHT_ONLY_SCHEMA = "cinema-trt/weight-only/1"
DIT_PRECISIONS = ("fp16", "fp8")  # the memory record's plans
# what every recorded engine computes in (outside FP8 Q/DQ): its I/O dtypes follow
SERVED_COMPUTE = compute_dtype(Precision.FP16)
MLLM_TEXT_PRECISIONS = ("fp16", "int8", "int4")
# decoder variant -> (its build in the chunks record, the state it carries there, latents
# per call (lframes, lheight, lwidth; None: the record's whole size)); "one-shot" is the
# memory record's decoder
DECODERS: dict[str, tuple[str | None, str | None, tuple[int, int | None, int | None] | None]] = {
    "one-shot": (None, None, None),
    "chunks of 1 latent frame": ("step, 1 latent frame", "video float16 GiB", (1, None, None)),
    "32x32-latent tiles": ("step, 1 latent frame, 32x32 tile", "32x32 tile float16 GiB",
                           (1, 32, 32)),
}
ENCODER_BUILD = "encoder, 1 references"  # the chunks record's build of the served encoder
APPROXIMATE = ("32x32-latent tiles",)  # decoders that do not equal the one-shot decode
# (precision, the weight-only record's build of it); pairs, not a dict keyed by dtype names
_WEIGHT_ONLY_BUILDS = dict((("int8", "int8"), ("int4", "int4 rtn_dq")))


@dataclass(frozen=True)
class Records:
    """The three records a served plan is made from, as read."""

    memory: dict[str, Any]
    chunks: dict[str, Any]
    weight_only: dict[str, Any]
    paths: dict[str, str]  # which file each came from

    def sources(self) -> dict[str, dict[str, Any]]:
        """Per record: its file, the commit that made it and when."""
        return {kind: {"path": self.paths[kind], "commit": record["source"]["commit"],
                       "dirty": record["source"]["dirty"], "started": record["started"]}
                for kind, record in (("memory", self.memory), ("chunks", self.chunks),
                                     ("weight_only", self.weight_only))}


def _read(path: str | Path, schema: str) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if data.get("schema") != schema:
        raise ValueError(f"{path}: schema {data.get('schema')!r}, expected {schema!r} (pass "
                         "the matching record)")
    return data


def latest(results: Path, kind: str) -> Path:
    """The newest `<machine>-<kind>-<YYYYMMDD>[-<n>].json` in `results` (by date, then n:
    benchmarks/report.py `numbered_stem`)."""
    def when(path: Path) -> tuple[str, int]:
        match = re.search(r"-(\d{8})(?:-(\d+))?$", path.stem)
        return (match[1], int(match[2] or 1)) if match else ("", 0)

    found = sorted(Path(results).glob(f"*-{kind}-*.json"), key=when)
    if not found:
        raise FileNotFoundError(f"no *-{kind}-*.json record in {results}")
    return found[-1]


def read_records(memory: str | Path, chunks: str | Path, weight_only: str | Path) -> Records:
    records = Records(_read(memory, MEMORY_SCHEMA), _read(chunks, CHUNKS_SCHEMA),
                      _read(weight_only, WEIGHT_ONLY_SCHEMA),
                      {"memory": str(memory), "chunks": str(chunks),
                       "weight_only": str(weight_only)})
    _check_agree(records)
    return records


def _stage(record: dict, plan: str, graph: str) -> dict:
    return next(s for s in record["plans"][plan] if s["stage"] == graph)


def _check_agree(records: Records) -> None:
    """The records must describe the same graphs: the weight-only record's fp16 build is
    the memory record's one-layer mllm_text build, byte for byte."""
    stage = _stage(records.memory, "fp16", MLLM_TEXT.name)
    fp16 = round(_base(stage) + _per_block(stage, "weights"))  # at one layer
    theirs = records.weight_only["rtx_builds_paper_width_1_layer"]["fp16"]["weights_bytes"]
    if fp16 != theirs:
        raise ValueError(f"{records.paths['weight_only']} built a one-layer mllm_text of "
                         f"{theirs} weight bytes, {records.paths['memory']} one of {fp16}: "
                         "records of different models; pass matching records")


def _per_block(stage: dict, key: str) -> float:
    """What one more block adds to `key` between the stage's two builds (0: built whole)."""
    measured = stage["measured"]
    if list(measured) == ["0"]:
        return 0.0
    d1, d2 = sorted(int(d) for d in measured)
    return (measured[str(d2)][key] - measured[str(d1)][key]) / (d2 - d1)


def _base(stage: dict) -> float:
    """A depth-built stage's weights outside its blocks: W(d) - d * per block."""
    depth, figures = min((int(d), m) for d, m in stage["measured"].items())
    return figures["weights"] - depth * _per_block(stage, "weights")


def _figures(stage: dict, io: int) -> EngineFigures:
    full = stage["full"]
    return EngineFigures(full["weights"], full["activation"], full["persistent"], io=io,
                         block_weights=round(_per_block(stage, "weights")))


def _weight_only(records: Records, precision: str, io: int) -> EngineFigures:
    stage = _stage(records.memory, "fp16", MLLM_TEXT.name)
    build = records.weight_only["rtx_builds_paper_width_1_layer"][_WEIGHT_ONLY_BUILDS[precision]]
    depth = stage["full_depth"]
    base = _base(stage)  # norms etc., not quantized
    growth = max(0.0, _per_block(stage, "activation"))
    return EngineFigures(round(base + depth * (build["weights_bytes"] - base)),
                         round(build["activation_bytes"] + (depth - 1) * growth),
                         build["device_persistent_bytes"] * depth, io=io)


def io_bytes(records: Records) -> dict[str, int]:
    """Each graph's inputs and outputs at the memory record's request, max level."""
    from cinema_trt.engines.shapes import request_at, shapes_from_dict
    from cinema_trt.models.presets import get_preset

    config = get_preset(records.memory["settings"]["preset"])
    request = request_at(shapes_from_dict(records.memory["shapes"], config), config, "max")
    out = {}
    for stage in STAGES:
        for graph in stage.graphs:
            spec = graph.exported_spec(config, SERVED_COMPUTE)
            values = graph.symbols(request, config)
            out[graph.name] = tensor_bytes((*spec.inputs, *spec.outputs), values)
    return out


def _step_io(records: Records, lframes: int, lheight: int | None, lwidth: int | None) -> int:
    """The decoder step's latents, flag and video (its state is counted apart)."""
    from cinema_trt.models.presets import VAE_SPATIAL, VAE_TEMPORAL, get_preset
    from cinema_trt.models.vae_chunks import STATE_INPUT, STATE_OUTPUT, state_values, step_spec

    config = get_preset(records.memory["settings"]["preset"])
    shapes = records.memory["shapes"]
    lh = lheight or shapes["height"] // VAE_SPATIAL
    lw = lwidth or shapes["width"] // VAE_SPATIAL
    values = {**state_values(1, lh, lw), "lframes": lframes,
              "chunk_frames": VAE_TEMPORAL * lframes}
    spec = step_spec(config.vae)
    return tensor_bytes([t for t in (*spec.inputs, *spec.outputs)
                   if not t.name.startswith((STATE_INPUT, STATE_OUTPUT))], values)


def engine_variants(records: Records) -> dict[str, dict[str, EngineFigures]]:
    """{graph: {variant: figures}}: the graphs that have choices, at full depth."""
    io = io_bytes(records)
    memory, chunks = records.memory, records.chunks
    variants: dict[str, dict[str, EngineFigures]] = {
        DIT.name: {p: _figures(_stage(memory, p, DIT.name), io[DIT.name])
                   for p in DIT_PRECISIONS},
        MLLM_TEXT.name: {"fp16": _figures(_stage(memory, "fp16", MLLM_TEXT.name),
                                          io[MLLM_TEXT.name]),
                         **{p: _weight_only(records, p, io[MLLM_TEXT.name])
                            for p in _WEIGHT_ONLY_BUILDS}},
        VAE_DECODER.name: {},
    }
    for name, (build, state, latents) in DECODERS.items():
        if build is None:  # the one-shot graph: the whole video's latents in, frames out
            from cinema_trt.models.presets import latent_frames

            whole = _step_io(records, latent_frames(memory["shapes"]["frames"]), None, None)
            variants[VAE_DECODER.name][name] = _figures(
                _stage(memory, "fp16", VAE_DECODER.name), whole)
            continue
        assert state is not None and latents is not None  # a step build has both
        b = chunks["rtx_builds"][build]
        one = round(chunks["state_at_paper_shape"][state] * GIB)
        variants[VAE_DECODER.name][name] = EngineFigures(
            b["weights_bytes"], b["activation_bytes"], b["device_persistent_bytes"],
            io=_step_io(records, *latents), state=one,
            held=(_tiles(chunks, latents) - 1) * one)
    return variants


def _tiles(chunks: dict[str, Any], latents: tuple[int, int | None, int | None]) -> int:
    """Tiles of a decode at the chunks record's latent size whose calls take `latents`
    (1: whole frames), with the default overlap (models/presets.py Tiling)."""
    from cinema_trt.models.presets import Tiling

    _, tile, _ = latents
    if tile is None:
        return 1
    starts = Tiling(tile).starts
    height, width = chunks["state_at_paper_shape"]["latents"]
    return len(starts(height)) * len(starts(width))


def fixed_engines(records: Records) -> dict[str, EngineFigures]:
    """The graphs without choices: every other stage's fp16 engine."""
    io = io_bytes(records)
    varied = {DIT.name, MLLM_TEXT.name, VAE_DECODER.name}
    fixed = {g.name: _figures(_stage(records.memory, "fp16", g.name), io[g.name])
             for stage in STAGES for g in stage.graphs if g.name not in varied}
    # the encoder takes one reference a call (models/pipeline.py): the chunks record's
    # build at batch 1, not the memory record's at 4 references
    b = records.chunks["rtx_builds"][ENCODER_BUILD]
    fixed[VAE_ENCODER.name] = EngineFigures(b["weights_bytes"], b["activation_bytes"],
                                            b["device_persistent_bytes"],
                                            io=io[VAE_ENCODER.name])
    return fixed


def served_plans(records: Records) -> list[ServedPlan]:
    """Every combination: DiT precision x MLLM text precision x decoder, resident or with
    the DiT's weights streamed."""
    variants, fixed = engine_variants(records), fixed_engines(records)
    plans = []
    for decoder in DECODERS:
        for mllm_rank, text in enumerate(MLLM_TEXT_PRECISIONS):
            for dit_rank, dit in enumerate(DIT_PRECISIONS):
                for streamed in (False, True):
                    chosen = {**fixed, DIT.name: variants[DIT.name][dit],
                              MLLM_TEXT.name: variants[MLLM_TEXT.name][text],
                              VAE_DECODER.name: variants[VAE_DECODER.name][decoder]}
                    stages = {s.name: {g.name: chosen[g.name] for g in s.graphs}
                              for s in STAGES}
                    name = (f"DiT {dit}{' streamed' if streamed else ''}, "
                            f"{MLLM.name} text {text}, decoder {decoder}")
                    plans.append(ServedPlan(
                        name, stages, streamed=DIT.name if streamed else None,
                        rank=(int(streamed), int(decoder in APPROXIMATE), mllm_rank, dit_rank),
                        settings={DIT.name: dit, MLLM_TEXT.name: text, VAE_DECODER.name: decoder,
                                  "weights": "streamed" if streamed else "resident"}))
    return plans

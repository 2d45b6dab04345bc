"""The served memory plan's record, re-planned from recorded builder figures (no build):

    <out>/<machine>-memory-served-<preset>-<YYYYMMDD>.json  every figure, in bytes
    <out>/<machine>-memory-served-<preset>-<YYYYMMDD>.md    which card runs which plan
    <out>/<machine>-memory-served-<preset>-<YYYYMMDD>.png   the headline plans, by part

The provenance block (benchmarks/machine.py) is this re-plan's: the commit of the
arithmetic; `sources` names the records (and their commits) every builder figure came from.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cinema_trt.serving.served_memory import (
    CARDS_GIB,
    GIB,
    LAYOUTS,
    PER_STAGE,
    STREAM_BLOCKS,
    Assumptions,
    Peak,
    budget_on,
    choose,
    fits_table,
    served_peak,
    streamed_bytes,
)

from .machine import describe_source, machine_tag
from .memory_served import Records, engine_variants, fixed_engines, served_plans
from .report import write_charted

SCHEMA = "cinema-trt/memory-served/2"
ESTIMATES = (
    "The CUDA context per process is an assumption ({context:.2f} GiB, --cuda-context-gib); "
    "no builder reports it.",
    "A weight-streamed DiT keeps at least {blocks} blocks of weights resident (one computing, "
    "one arriving): an assumption; TensorRT reports its streaming scratch only on a GPU. "
    "'streams X' is what each DiT call copies from host memory at the budget the card leaves.",
    "The decoder's chunk state is the chunks record's measurement at the paper shape in fp16, "
    "counted twice (the step's inputs and outputs); a tiled decode's other tiles' states "
    "count too in the shared layout (on the GPU there; per-stage they wait in the "
    "orchestrator's host memory). Activations are the builder's for the step graph; the "
    "VAE encoder's for one reference a call (the chunks record).",
    "The INT8/INT4 mllm_text figures extrapolate a one-layer build (weight-only record) with "
    "the fp16 builds' per-layer activation growth: an estimate.",
    "I/O buffers: every input and output at the request's max level, at the spec's dtype "
    "(float32 video tensors: an upper bound).",
    "Not included: the runtime's JIT kernel cache; the MLLM's token-embedding table, which "
    "the served mllm stage gathers from in host memory (models/mllm_split.py load_glue: "
    "float32 on the CPU); the orchestrator (no GPU).",
)
# how a repository serves what the plans plan (said beside every table)
SERVED = (
    "The decoder is the chunked step graph (1 latent frame a call by default; "
    "`--decode-chunk`); its state crosses in the graph's compute dtype (fp16: 1.5 GiB a copy "
    "at 45x480x720). Tiles are served by a decoder engine built at the tile (`cinema-trt "
    "build --stages vae_decoder --decode-tile 32`) in a repository with the same decoding "
    "(`cinema-trt repo --decode-tile 32`); they blend seams (not exact).",
    "`cinema-trt repo` writes either layout (`--layout per-stage|shared`); with "
    "`--memory-budget` it takes per-stage where the engines fit, else shared (every stage "
    "in the `cinema` model's process, one activation region, serving/layouts.py).",
    "A streamed DiT needs an engine built with `cinema-trt build --weight-streaming`; the "
    "repository then sets its budget (`--memory-budget` / `--weight-streaming-budget`). "
    "INT8/INT4 text weights: `cinema-trt export --weight-only int4|int8`.",
)


def _peaks(records: Records, assumptions: Assumptions) -> list[Peak]:
    return [served_peak(plan, layout, assumptions) for plan in served_plans(records)
            for layout in LAYOUTS]


def _card_row(peak: Peak, card: int) -> dict[str, Any]:
    budget = budget_on(peak, card * GIB)
    return {"fits": budget is not None,
            "weight_streaming_budget": budget if peak.streamed and budget is not None else None,
            "streamed_per_call": streamed_bytes(peak, budget) if budget is not None else None}


def make_record(records: Records, provenance: dict[str, Any],
                assumptions: Assumptions | None = None,
                cards_gib: tuple[int, ...] = CARDS_GIB) -> dict[str, Any]:
    assumptions = assumptions or Assumptions()
    peaks = _peaks(records, assumptions)
    choices = {f"{card} GiB": {layout: _choice(peaks, layout, card) for layout in LAYOUTS}
               for card in cards_gib}
    return {
        "schema": SCHEMA, **provenance, "sources": records.sources(),
        "preset": records.memory["settings"]["preset"], "shapes": records.memory["shapes"],
        "assumptions": asdict(assumptions), "stream_blocks": STREAM_BLOCKS,
        "cards_gib": list(cards_gib),
        "engines": {g: {v: asdict(f) for v, f in d.items()}
                    for g, d in engine_variants(records).items()},
        "fixed_engines": {g: asdict(f) for g, f in fixed_engines(records).items()},
        "plans": [{**asdict(p), "cards": {f"{c} GiB": _card_row(p, c) for c in cards_gib}}
                  for p in peaks],
        "choices": choices,
        "estimates": [line.format(context=assumptions.cuda_context / GIB, blocks=STREAM_BLOCKS)
                      for line in ESTIMATES],
        "served": list(SERVED),
    }


def _choice(peaks: list[Peak], layout: str, card: int) -> dict[str, Any] | None:
    best = choose([p for p in peaks if p.layout == layout], card * GIB)
    if best is None:
        return None
    return {"plan": best.plan, "peak": best.peak, "settings": best.settings,
            **_card_row(best, card)}


# --- markdown ---------------------------------------------------------------------------


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def _choice_cell(choice: dict | None) -> str:
    if choice is None:
        return "nothing fits"
    text = f"{choice['plan']} ({_gib(choice['peak'])} GiB"
    if choice["weight_streaming_budget"] is not None:
        text += (f"; DiT budget {_gib(choice['weight_streaming_budget'])} GiB, streams "
                 f"{_gib(choice['streamed_per_call'])} GiB per call")
    return text + ")"


def choice_rows(record: dict) -> list[str]:
    """Which card runs which plan, per layout (the README's table)."""
    lines = ["| card | " + " | ".join(f"{layout} layout" for layout in LAYOUTS) + " |",
             "|---|" + "---|" * len(LAYOUTS)]
    for card, by_layout in record["choices"].items():
        lines.append(f"| {card} | " + " | ".join(_choice_cell(by_layout[layout])
                                                  for layout in LAYOUTS) + " |")
    return lines


def _engine_rows(record: dict) -> list[str]:
    lines = ["| graph | variant | weights | activations | I/O | state (one copy) | "
             "one block's weights |", "|---|---|---:|---:|---:|---:|---:|"]
    rows = [(g, v, f) for g, d in record["engines"].items() for v, f in d.items()]
    rows += [(g, "fp16", f) for g, f in record["fixed_engines"].items()]
    for graph, variant, f in rows:
        lines.append(f"| {graph} | {variant} | {_gib(f['weights'])} | {_gib(f['activation'])} "
                     f"| {_gib(f['io'])} | {_gib(f['state'])} | {_gib(f['block_weights'])} |")
    return lines


def _peak_objects(record: dict) -> list[Peak]:
    keep = set(Peak.__dataclass_fields__)
    peaks = []
    for p in record["plans"]:
        fields: dict[str, Any] = {k: v for k, v in p.items() if k in keep}
        peaks.append(Peak(**{**fields, "rank": tuple(fields["rank"])}))
    return peaks


def to_markdown(record: dict) -> str:
    m, sh = record["machine"], record["shapes"]
    context = record["assumptions"]["cuda_context"] / GIB
    lines = [f"# CINEMA memory plan as served: `{record['preset']}`", "",
             f"- re-planned on: {m['cpu']}, {m['cores']} cores; {describe_source(record['source'])}"
             f"; started {record['started']} (arithmetic only: no build, no GPU)",
             f"- request: {sh['frames']} frames {sh['width']}x{sh['height']}, CFG batch 2, "
             f"1..{sh['refs']['max']} references",
             f"- per process a CUDA context of {context:.2f} GiB (assumed); "
             f"{record['assumptions']['instances']} instance(s) per model",
             "- builder figures from:"]
    lines += [f"  - {kind}: `{Path(s['path']).name}` (commit {str(s['commit'])[:12]}, "
              f"{s['started'][:10]})" for kind, s in record["sources"].items()]
    lines += ["", "## Which card runs which plan", "",
              f"The preferred plan that fits (benchmarks/memory_served.py ranks them). The "
              f"{PER_STAGE} layout (`cinema-trt repo`'s default): one Triton model per "
              "stage, each its own process; shared (`cinema-trt repo --layout shared`): the "
              "TensorRT stages in the `cinema` model's process, one activation region.", ""]
    lines += choice_rows(record) + [""] + [f"- {n}" for n in record["served"]] + [""]
    peaks = _peak_objects(record)
    for layout in LAYOUTS:
        lines += [f"## Every plan, {layout} layout (GiB)", ""]
        lines += fits_table([p for p in peaks if p.layout == layout], record["cards_gib"])
        lines.append("")
    lines += ["## Engines at full depth (GiB)", ""] + _engine_rows(record) + [""]
    lines += ["## What is estimated", ""] + [f"- {e}" for e in record["estimates"]]
    return "\n".join(lines) + "\n"


# --- chart and files --------------------------------------------------------------------


def write_chart(record: dict, path: Path) -> Path:
    """The chosen plan per card and layout, stacked by part; dashed lines at the cards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {(p["plan"], p["layout"]): p for p in record["plans"]}
    bars = []
    for card, by_layout in record["choices"].items():
        for layout, choice in by_layout.items():
            if choice is not None:
                bars.append((f"{card}\n{layout}", by_name[(choice["plan"], layout)], choice))
    parts = list(record["plans"][0]["parts"])
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for i, (_, peak, choice) in enumerate(bars):
        bottom = 0.0
        for j, part in enumerate(parts):
            height = peak["parts"][part] / GIB
            if part == "weights" and choice["weight_streaming_budget"] is not None:
                height += (choice["weight_streaming_budget"] - peak["min_resident"]) / GIB
            ax.bar(i, height, bottom=bottom, color=f"C{j}", label=part if i == 0 else None)
            bottom += height
        ax.text(i, bottom, choice["plan"].replace(", ", "\n"), ha="center", va="bottom",
                fontsize=5)
    for card in record["cards_gib"]:
        ax.axhline(card, color="black", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
    ax.set_ylabel("device memory, GiB (builder figures + assumptions)")
    ax.set_title(f"CINEMA {record['preset']} as served: the preferred plan per card")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(record: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    base = (f"{machine_tag('cpu', record['machine'])}-memory-served-{record['preset']}-"
            f"{record['started'][:10].replace('-', '')}")
    return write_charted(out_dir, base, record, to_markdown(record), write_chart)

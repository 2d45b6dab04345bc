"""The memory plan's record: run it, and write JSON + markdown + PNG to benchmarks/results.

    <out>/<machine>-memory-<preset>-<YYYYMMDD>.json   every figure, in bytes (the source)
    <out>/<machine>-memory-<preset>-<YYYYMMDD>.md     tables for people
    <out>/<machine>-memory-<preset>-<YYYYMMDD>.png    peak per plan, stacked by stage
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cinema_trt.models.backends import TENSORRT_RTX
from cinema_trt.models.stages import DIT, VAE_DECODER

from .machine import Provenance, describe_source, machine_tag
from .memory_plan import CARDS_GIB, GIB, MODEL_NOTE, StagePlan, pipeline_peaks
from .memory_run import MemoryPlanConfig, full_depths, plan_stages, request_shapes
from .report import write_charted

log = logging.getLogger(__name__)

SCHEMA = "cinema-trt/memory-plan/1"
# measured by hand for issue 11 (fp16 engines, TensorRT-RTX, the paper's shapes), in GB
REFERENCES = (
    {"stage": DIT.name, "depth": 2, "weights_gb": 0.83, "activation_gb": 2.43, "note": ""},
    {"stage": VAE_DECODER.name, "depth": 0, "weights_gb": 0.16, "activation_gb": 8.1,
     # measured here: under an 8 GiB workspace limit (BuildConfig's default) the build fails
     # with "OutOfMemory (Requested size was 8747344390 bytes)", i.e. 8.15 GiB
     "note": "8.1 is likely the OutOfMemory message of a build under the default 8 GiB "
             "workspace (8747344390 bytes requested = 8.15 GiB, the limit + 0.146 GiB at "
             "any limit below the need), not the decoder's need"},
)


def _references(plans: dict[str, list]) -> list[dict[str, Any]]:
    """The hand measurements beside this run's figures for the same builds."""
    rows = []
    for ref in REFERENCES:
        stage = next((s for s in plans.get("fp16", []) if s.stage == ref["stage"]), None)
        measured = stage.measured.get(ref["depth"]) if stage else None
        if measured is not None:
            rows.append({**ref, "measured_weights_gb": measured.weights / 1e9,
                         "measured_activation_gb": measured.activation / 1e9})
    return rows


def run_memory_plan(settings: MemoryPlanConfig) -> dict[str, Any]:
    """Export, build and extrapolate every plan; the JSON record."""
    run = Provenance.start()
    plans, notes = {}, []
    for plan in settings.plans:
        plans[plan], plan_notes = plan_stages(settings, plan)
        notes += [f"{plan} plan: {note}" for note in plan_notes]
    return make_record(settings, plans, run.block(), notes)


def make_record(settings: MemoryPlanConfig, plans: dict[str, list[StagePlan]],
                provenance: dict[str, Any], notes: list[str] | None = None) -> dict[str, Any]:
    """The record of a run: the plans' stages, their peaks, and what they ran on."""
    from cinema_trt.models.presets import get_preset

    config = get_preset(settings.preset)
    versions = provenance["versions"]
    return {
        "schema": SCHEMA, **provenance,
        "settings": {**asdict(settings), "cache_dir": str(settings.cache_dir)},
        "shapes": request_shapes(config, settings.refs), "full_depths": full_depths(config),
        "backend": {"name": TENSORRT_RTX.name, "version": versions.get("tensorrt-rtx-cu12"),
                    "targets": list(settings.targets)},
        "cards_gib": list(CARDS_GIB),
        "plans": {p: [s.to_dict() for s in stages] for p, stages in plans.items()},
        "peaks": [asdict(peak) for p, stages in plans.items()
                  for peak in pipeline_peaks(p, stages)],
        "references": _references(plans), "model": list(MODEL_NOTE),
        "notes": [*(notes or []), _embedding_note(config)],
    }


def _embedding_note(config) -> str:
    """The one MLLM tensor no engine holds: the token-embedding gather runs in torch."""
    table = config.mllm.vocab_size * config.mllm.hidden_size * 2  # fp16
    return (f"not in any engine: the MLLM's token-embedding table, a gather outside the "
            f"graphs (models/mllm_split.py): {config.mllm.vocab_size} x "
            f"{config.mllm.hidden_size} fp16 = {table / GIB:.2f} GiB wherever it is kept")


# --- markdown ---------------------------------------------------------------------------


def _gib(n: int) -> str:
    return f"{n / GIB:.3g}"


def _stage_rows(stages: list[dict]) -> list[str]:
    lines = ["| stage | precision | built at | weights (GiB) | activations (GiB) | full depth "
             "| weights (GiB) | activations (GiB) | persistent (GiB) | activations from growth |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in stages:
        built = ", ".join(f"{d} layers" if d != "0" else "whole" for d in s["measured"])
        weights = " / ".join(_gib(m["weights"]) for m in s["measured"].values())
        acts = " / ".join(_gib(m["activation"]) for m in s["measured"].values())
        full = s["full"]
        lines.append(f"| {s['stage']} | {s['precision']} | {built} | {weights} | {acts} | "
                     f"{s['full_depth'] or 'whole'} | {_gib(full['weights'])} | "
                     f"{_gib(full['activation'])} | {_gib(full['persistent'])} | "
                     f"{s['growth_share']:.1%} |")
    return lines


def _peak_rows(record: dict) -> list[str]:
    cards = [f"{c} GiB" for c in record["cards_gib"]]
    lines = ["| plan | MLLM | peak (GiB) | phases (GiB) | " + " | ".join(cards) + " |",
             "|---|---|---:|---|" + "---|" * len(cards)]
    for p in record["peaks"]:
        phases = "; ".join(f"{k} {_gib(v)}" for k, v in p["phases"].items())
        fits = " | ".join("fits" if p["fits"][c] else "**no**" for c in cards)
        mllm = "released after encoding" if p["release_mllm"] else "kept"
        lines.append(f"| {p['plan']} | {mllm} | {_gib(p['peak'])} | {phases} | {fits} |")
    return lines


def to_markdown(record: dict) -> str:
    m, s, sh, b = record["machine"], record["settings"], record["shapes"], record["backend"]
    lines = [f"# CINEMA memory plan: `{s['preset']}` on TensorRT-RTX", "",
             f"- built on: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; no GPU "
             f"(the builder reports memory without one; nothing ran)",
             f"- backend: TensorRT-RTX {b['version']}, targets {', '.join(b['targets'])}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items() if v),
             f"- source: {describe_source(record['source'])}",
             f"- request: {sh['frames']} frames {sh['width']}x{sh['height']}, CFG batch 2, "
             f"1..{sh['refs']['max']} references; depth-scaled stages built at "
             f"{s['depths'][0]} and {s['depths'][1]} layers, full depths "
             + ", ".join(f"{k} {v}" for k, v in record["full_depths"].items()),
             f"- started {record['started']}, took {record['duration_s']:.0f} s", ""]
    for plan, stages in record["plans"].items():
        lines += [f"## {plan} engines", ""] + _stage_rows(stages) + [""]
    lines += ["## Pipeline peak against cards", ""] + _peak_rows(record) + [""]
    if record["references"]:
        lines += ["## Against the hand measurements of issue 11 (GB = 1e9 bytes)", "",
                  "| stage | built at | weights: hand / this run "
                  "| activations: hand / this run | note |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['depth'] or 'whole'} | {r['weights_gb']:.2f} / "
                  f"{r['measured_weights_gb']:.2f} | {r['activation_gb']:.2f} / "
                  f"{r['measured_activation_gb']:.2f} | {r['note']} |"
                  for r in record["references"]]
        lines.append("")
    if record["notes"]:
        lines += ["## Notes", ""] + [f"- {note}" for note in record["notes"]] + [""]
    lines += ["## Model", ""] + [f"- {line}" for line in record["model"]]
    return "\n".join(lines) + "\n"


# --- chart and files --------------------------------------------------------------------


def write_chart(record: dict, path: Path) -> Path:
    """Stacked bars per (plan, MLLM kept/released): weights per stage, then activations;
    dashed lines at the cards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    labels = []
    for i, peak in enumerate(record["peaks"]):
        mllm = "MLLM released" if peak["release_mllm"] else "MLLM kept"
        labels.append(f"{peak['plan']}\n{mllm}")
        stages = {s["stage"]: s["full"] for s in record["plans"][peak["plan"]]}
        phase = max(peak["phases"], key=peak["phases"].get)  # the phase that sets the peak
        resident = _resident(peak, phase, stages)
        bottom = 0.0
        for j, stage in enumerate(stages):
            if stage in resident:
                height = (stages[stage]["weights"] + stages[stage]["persistent"]) / GIB
                ax.bar(i, height, bottom=bottom, color=f"C{j}",
                       label=f"{stage} weights" if i == 0 else None)
                bottom += height
        ax.bar(i, peak["phases"][phase] / GIB - bottom, bottom=bottom, color="lightgray",
               hatch="//", label="activations (largest in the phase)" if i == 0 else None)
    for card in record["cards_gib"]:
        ax.axhline(card, color="black", linestyle="--", linewidth=0.8)
        ax.text(len(labels) - 0.5, card, f"{card} GiB", va="bottom", ha="right", fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("peak device memory, GiB (builder figures, full depth)")
    ax.set_title(f"CINEMA {record['settings']['preset']}: TensorRT-RTX memory plan")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _resident(peak: dict, phase: str, stages: dict) -> set[str]:
    from .memory_plan import ENCODE_STAGES, RELEASED_STAGES

    if not peak["release_mllm"]:
        return set(stages)
    if phase == "encode":
        return set(ENCODE_STAGES)
    return set(stages) - set(RELEASED_STAGES)


def write_outputs(record: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    base = (f"{machine_tag('cpu', record['machine'])}-memory-{record['settings']['preset']}-"
            f"{record['started'][:10].replace('-', '')}")
    return write_charted(out_dir, base, record, to_markdown(record), write_chart)

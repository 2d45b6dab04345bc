"""A benchmark result as three files: the JSON record, a markdown table, a PNG chart.

    <out>/<machine>-<preset>-<YYYYMMDD>.json   every setting and every sample (the source)
    <out>/<machine>-<preset>-<YYYYMMDD>.md     tables for people and pull requests
    <out>/<machine>-<preset>-<YYYYMMDD>.png    p50 per stage and per request, log scale

A second run on the same day gets `-2`, `-3`, ...: a record is never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from cinema_trt.models.stages import STAGES

from .machine import describe_source, machine_tag
from .result import TARGETS, BenchResult

log = logging.getLogger(__name__)

TARGET_LABELS = {**{s.name: f"{s.name} (1 step, CFG x2)" for s in STAGES if s.per_step},
                 "pipeline": "pipeline (whole request)", "served": "served (Triton, gRPC)",
                 "first_frame": "served, to first frame"}


def numbered_stem(out_dir: Path, base: str) -> Path:
    """`<out>/<base>`, or `<base>-2`, `-3`, ... when a record of that name exists."""
    stem, n = out_dir / base, 1
    while any(stem.with_suffix(s).exists() for s in (".json", ".md", ".png")):
        n += 1
        stem = out_dir / f"{base}-{n}"
    return stem


def write_charted(out_dir: str | os.PathLike, base: str, record: dict, markdown: str,
                  chart: Callable[[dict, Path], object]) -> dict[str, Path]:
    """A record's files under a fresh numbered stem: `.json` (the record), `.md` and the
    `.png` that `chart(record, path)` draws."""
    from cinema_trt.models.fileio import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = numbered_stem(out, base)
    files = {"json": stem.with_suffix(".json"), "markdown": stem.with_suffix(".md"),
             "chart": stem.with_suffix(".png")}
    atomic_write(files["json"], json.dumps(record, indent=1, default=str) + "\n")
    atomic_write(files["markdown"], markdown)
    chart(record, files["chart"])
    return files


def variant_labels(result: BenchResult) -> list[str]:
    """'runtime precision' of every measured variant, in measurement order."""
    return list(dict.fromkeys(f"{m.runtime} {m.precision}" for m in result.measurements))


def _cell(result: BenchResult, label: str, target: str, baseline: float | None) -> str:
    runtime, precision = label.split(" ")
    m = result.find(runtime, precision, target)
    if m is None:
        return "–"
    text = f"{m.stats.p50:.2f}"
    if baseline and label != variant_labels(result)[0]:
        text += f" ({baseline / m.stats.p50:.2f}x)"
    return text


def _summary_table(result: BenchResult) -> list[str]:
    labels = variant_labels(result)
    lines = ["| target | " + " | ".join(labels) + " |",
             "|---|" + "---:|" * len(labels)]
    first = labels[0].split(" ") if labels else None  # [runtime, precision]
    for target in TARGETS:
        if not any(m.target == target for m in result.measurements):
            continue
        base = result.find(first[0], first[1], target) if first else None
        cells = [_cell(result, label, target, base.stats.p50 if base else None)
                 for label in labels]
        lines.append(f"| {TARGET_LABELS.get(target, target)} | " + " | ".join(cells) + " |")
    return lines


def _full_table(result: BenchResult) -> list[str]:
    lines = ["| target | runtime | precision | p50 | p90 | p99 | mean | std | min | max | n |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in result.measurements:
        s = m.stats
        lines.append(f"| {m.target} | {m.runtime} | {m.precision} | {s.p50:.2f} | "
                     f"{s.p90:.2f} | {s.p99:.2f} | {s.mean:.2f} | {s.std:.2f} | "
                     f"{s.min:.2f} | {s.max:.2f} | {s.count} |")
    return lines


def _header(result: BenchResult) -> list[str]:
    p, r, s = result.provenance, result.request, result.settings
    m = p["machine"]
    gpu = m["gpu"]["name"] if m.get("gpu") else "none"
    return [
        f"# CINEMA latency: preset `{result.config['name']}` on {machine_tag(s.device, m)}", "",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; GPU: {gpu}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in p["versions"].items() if v),
        f"- source: {describe_source(p['source'])}",
        f"- request: {r['frames']} frames {r['width']}x{r['height']}, {r['steps']} steps, "
        f"guidance {r['guidance']}, {len(r['refs'])} references, seed {r['seed']}",
        f"- timing: {s.warmup} warm-up + {s.runs} timed runs each, clock `{result.clock}`, "
        f"device `{s.device}`; started {p['started']}, took {p['duration_s']:.0f} s",
    ]


def to_markdown(result: BenchResult) -> str:
    lines = _header(result)
    lines += ["", "## p50 latency (ms), speedup vs the first column", ""]
    lines += _summary_table(result)
    overhead = result.serving_overhead()
    if overhead:
        lines += ["", "## Serving overhead (served / in-process, same runtime)", "",
                  "| variant | in-process p50 | served p50 | overhead p50 | ratio p50 | "
                  "ratio of minima |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {o['runtime']} {o['precision']} | {o['in_process_p50_ms']:.1f} ms | "
                  f"{o['served_p50_ms']:.1f} ms | {o['overhead_ms']:+.1f} ms | "
                  f"{o['ratio']:.3f}x | {o['ratio_min']:.3f}x |" for o in overhead]
    first = result.first_frame()
    if first:
        lines += ["", "## Time to first frame (served, frames streamed as decoded)", "",
                  "| variant | first frame p50 | whole request p50 | ratio p50 | "
                  "ratio of minima |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {f['runtime']} {f['precision']} | {f['first_frame_p50_ms']:.1f} ms | "
                  f"{f['served_p50_ms']:.1f} ms | {f['ratio']:.3f} | {f['ratio_min']:.3f} |"
                  for f in first]
    lines += ["", "## All statistics (ms)", ""] + _full_table(result)
    if result.skipped:
        lines += ["", "## Not measured", ""]
        lines += [f"- {k.runtime} {k.precision}" + (" (served)" if k.target == "served" else "")
                  + f": {k.reason}" for k in result.skipped]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def write_chart(result: BenchResult, path: Path) -> Path:
    """Horizontal bars of p50 per target and variant, whiskers to p90, log-scale ms."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the chart needs matplotlib: pip install 'cinema-trt[bench]'") \
            from None
    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    labels = variant_labels(result)
    targets = [t for t in TARGETS if any(m.target == t for m in result.measurements)]
    height = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(9, 0.6 + 0.45 * len(targets) * max(2, len(labels)) / 2))
    for i, label in enumerate(labels):
        rows, p50, whisker = [], [], []
        for j, target in enumerate(targets):
            runtime, precision = label.split(" ")
            m = result.find(runtime, precision, target)
            if m is not None:
                rows.append(j + i * height)
                p50.append(m.stats.p50)
                whisker.append(m.stats.p90 - m.stats.p50)
        ax.barh(rows, p50, height=height, xerr=[[0] * len(whisker), whisker], label=label,
                capsize=2)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(targets))],
                  [TARGET_LABELS.get(t, t) for t in targets])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (bar: p50, whisker: p90; log scale)")
    ax.set_title(f"CINEMA {result.config['name']} on "
                 f"{machine_tag(result.settings.device, result.provenance['machine'])}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: BenchResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the JSON record, the markdown table and the chart under
    `<out>/<machine>-<preset>-<date>` (numbered when taken); returns their paths."""
    p = result.provenance
    date = p["started"][:10].replace("-", "")
    base = f"{machine_tag(result.settings.device, p['machine'])}-{result.config['name']}-{date}"
    files = write_charted(out_dir, base, result.to_dict(), to_markdown(result),
                          lambda record, path: write_chart(result, path))
    log.info("wrote %s, %s and %s", files["json"], files["markdown"].name, files["chart"].name)
    return files

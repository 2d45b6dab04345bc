"""What a benchmark ran on: CPU, cores, memory, GPU, the library versions that matter, and
the commit measured.

A number without its machine and commit is not a result: every record in
benchmarks/results/ begins with the block `Provenance.block()` writes (PROVENANCE_KEYS), and
its file names carry `machine_tag()`.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

# distributions whose version changes a latency (absent ones are recorded as null)
LIBRARIES = ("cinema-trt", "torch", "transformers", "numpy", "onnx", "onnxruntime",
             "onnxruntime-gpu", "onnxscript", "tensorrt", "tensorrt-rtx-cu12", "polygraphy",
             "triton", "tritonclient", "nvidia-pytriton", "matplotlib")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` reports."""
    path = Path("/proc/cpuinfo")
    if path.is_file():
        text = path.read_text(errors="replace")
        for key in ("model name", "Hardware", "Processor"):  # x86, then ARM spellings
            match = re.search(rf"^{re.escape(key)}\s*:\s*(.+)$", text, re.MULTILINE)
            if match and match.group(1).strip():
                return match.group(1).strip()
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def memory_gib() -> float | None:
    """Total memory in GiB from /proc/meminfo, or None where it is unavailable."""
    path = Path("/proc/meminfo")
    if not path.is_file():
        return None
    match = re.search(r"^MemTotal:\s*(\d+)\s*kB", path.read_text(), re.MULTILINE)
    return round(int(match.group(1)) / 2**20, 2) if match else None


def gpu_info() -> dict | None:
    """Name, compute capability and memory of the current CUDA device; None without one."""
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 2),
            "cuda": torch.version.cuda, "count": torch.cuda.device_count()}


def machine_load() -> list[float] | None:
    """1, 5 and 15 minute load averages: above the core count, other processes competed
    with the benchmark for the CPU."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    return {"cpu": cpu_model(), "cores": usable_cores(), "logical_cpus": os.cpu_count(),
            "memory_gib": memory_gib(), "gpu": gpu_info(), "platform": platform.platform(),
            "python": sys.version.split()[0], "torch_threads": torch.get_num_threads(),
            "load_average": machine_load()}


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for dist in LIBRARIES:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def source_revision(root: str | os.PathLike | None = None) -> dict:
    """The git commit the measured code came from and whether the tree had uncommitted
    changes (a dirty tree's numbers belong to no commit): {"commit", "dirty"}, both None
    outside a git checkout (an installed wheel) or without git.

    `root`: a folder inside the checkout; default, this package's own folder (the
    editable install points it at the working tree that runs).
    """
    cwd = Path(root) if root is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    # tracked files only: untracked ones (the records a run writes, caches) change no code
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def describe_source(source: dict) -> str:
    """`commit 0123abcd` (+ `, uncommitted changes`), or `not a git checkout`."""
    if not source.get("commit"):
        return "not a git checkout"
    return f"commit {source['commit'][:12]}" + (", uncommitted changes" if source["dirty"]
                                                else "")


def describe_machine(machine: dict) -> str:
    """`<cpu> (<n> cores, GPU: <name or none>)`, for a record's prose."""
    gpu = machine["gpu"]["name"] if machine["gpu"] else "none"
    return f"{machine['cpu']} ({machine['cores']} cores, GPU: {gpu})"


def provenance_line(record: dict) -> str:
    """The Markdown bullet of a record's provenance block (its machine, source, start)."""
    return (f"- machine: {record['machine']['cpu']}, {record['machine']['cores']} cores; "
            f"{describe_source(record['source'])}; started {record['started']}, took "
            f"{record['duration_s']} s")


def settings_json(config: Any) -> dict:
    """A config dataclass's fields as JSON values (paths as strings), for a record."""
    return {k: str(v) if isinstance(v, Path) else v
            for k, v in dataclasses.asdict(config).items()}


def machine_tag(device: str, machine: dict | None = None) -> str:
    """A file-name-safe machine label: `cpu-2core`, or the GPU's name (`gpu-nvidia-h100-...`)."""
    machine = machine or machine_info()
    if device.startswith("cuda") and machine.get("gpu"):
        return "gpu-" + re.sub(r"[^a-z0-9]+", "-", machine["gpu"]["name"].lower()).strip("-")
    return f"cpu-{machine['cores']}core"


PROVENANCE_KEYS = ("started", "duration_s", "source", "machine", "versions")


@dataclass(frozen=True)
class Provenance:
    """A run's provenance, taken when it starts: the code measured is the code at the start,
    and the load average before any work says how busy the machine was."""

    started: datetime.datetime  # UTC
    clock: float  # time.perf_counter() at the start
    source: dict  # source_revision()
    machine: dict  # machine_info()

    @classmethod
    def start(cls) -> Provenance:
        return cls(datetime.datetime.now(datetime.timezone.utc), time.perf_counter(),
                   source_revision(), machine_info())

    @property
    def date(self) -> str:
        """`20261206`, for file names."""
        return f"{self.started:%Y%m%d}"

    def block(self) -> dict:
        """The provenance block of a record, closed now (keys: PROVENANCE_KEYS)."""
        return {"started": self.started.isoformat(timespec="seconds"),
                "duration_s": round(time.perf_counter() - self.clock, 1),
                "source": self.source,
                "machine": {**self.machine, "load_average_end": machine_load()},
                "versions": library_versions()}


def write_record(out: str | os.PathLike, kind: str, provenance: Provenance, record: dict,
                 markdown: str) -> tuple[Path, Path]:
    """`<out>/<machine>-<kind>-<date>.json` (the record, its provenance block included) and
    `.md` (its tables): the files of a benchmark that has no chart."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{machine_tag('cpu', provenance.machine)}-{kind}-{provenance.date}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path

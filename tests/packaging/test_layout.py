"""The repository's top-level folders are `cinema_trt.*` and nothing else, from any folder.

The folders (export/, engines/, kernels/, ...) sit at the repository root, and every
`python -c`, `python -m` or script run from the root puts the root first on `sys.path`.
Hugging Face's `kernels` package, which transformers imports with Qwen2-VL from 5.25 on,
was shadowed there by our kernels/: transformers, `python -m pytest` and every
Python-backend stub of a server started from the root died with
`ImportError: cannot import name 'CUDAProperties' from 'kernels'`. Each folder is now a
namespace portion of `cinema_trt` (no `__init__.py`, package-dir in pyproject.toml), and a
regular package of the same name anywhere on `sys.path` wins over a namespace portion
(PEP 420), so no folder can take another distribution's name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def top_level_python_folders() -> list[str]:
    """Every folder at the root that holds Python code, tests/ and .ci/ included."""
    return sorted(p.name for p in ROOT.iterdir()
                  if p.is_dir() and p.name.isidentifier() and not p.name.startswith(".")
                  and any(p.rglob("*.py")))


def run_from_root(code: str, env: dict[str, str] | None = None,
                  timeout: float = 300) -> subprocess.CompletedProcess:
    """A fresh interpreter started as a user would from the root: `python -c` puts the
    working folder first on sys.path."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_the_layout_is_what_the_product_promises():
    assert {"models", "export", "engines", "kernels", "serving", "benchmarks", "cli",
            "tests"} <= set(top_level_python_folders())


def test_another_distribution_named_like_a_folder_wins_from_the_repository_root(tmp_path):
    # a regular package named like each folder, installed after the root on sys.path
    site = tmp_path / "site"
    names = top_level_python_folders()
    for name in names:
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(f"DISTRIBUTION = {name!r}\n")
    code = ("import importlib\n"
            f"for name in {names!r}:\n"
            "    module = importlib.import_module(name)\n"
            "    print(name, getattr(module, 'DISTRIBUTION', None), module.__file__)\n")
    done = run_from_root(code, env={"PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr
    resolved = dict((line.split()[0], line.split()[1]) for line in done.stdout.splitlines())
    assert resolved == {name: name for name in names}, done.stdout


def test_transformers_qwen2_vl_and_every_cinema_trt_module_import_from_the_root():
    modules = sorted(f"cinema_trt.{path.parent.name}.{path.stem}"
                     for package in ("models", "export", "engines", "kernels", "serving",
                                     "benchmarks", "cli")
                     for path in (ROOT / package).glob("*.py") if path.stem != "__main__")
    code = ("import importlib\n"
            "import transformers.models.qwen2_vl.modeling_qwen2_vl\n"
            "import transformers.models.qwen2_vl.processing_qwen2_vl\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n")
    done = run_from_root(code)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_code_is_importable_only_as_cinema_trt():
    done = run_from_root("import cinema_trt.kernels.ops, cinema_trt.export.driver\n"
                         "import sys; print(sorted(m for m in sys.modules "
                         "if m.split('.')[0] in ('export', 'engines', 'serving', 'cli')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_python_m_pytest_collects_from_the_root():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " errors" not in done.stdout and "tests collected" in done.stdout


@pytest.mark.server
@pytest.mark.slow
def test_a_server_started_from_the_root_loads_every_model_in_a_folder_of_its_own(
        tritonserver_binary, tiny_weights, tmp_path, monkeypatch):
    import tritonclient.grpc as grpcclient

    from cinema_trt.serving.repo import build_repository
    from cinema_trt.serving.server import ServerConfig, TritonServer

    repository = build_repository(None, tmp_path / "models", tiny_weights)
    monkeypatch.chdir(ROOT)
    with TritonServer(ServerConfig(repository, startup_timeout=240)) as server:
        pid = server.pid
        assert Path(f"/proc/{pid}/cwd").resolve() != ROOT
        client = grpcclient.InferenceServerClient(server.endpoints.grpc)
        index = client.get_model_repository_index(headers=server.admin_headers, as_json=True)
        states = {model["name"]: model.get("state") for model in index["models"]}
    assert states and set(states.values()) == {"READY"}, states
    assert {"cinema", "mllm"} <= set(states)

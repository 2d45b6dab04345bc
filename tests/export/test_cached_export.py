"""`cached_export`: the export entry of the artifact cache that the demo and the benchmark
share. An entry is reused only when its key (weights hash, whole config, precision, stages,
exporter versions) matches and `check_export` accepts every stage with the full expectation;
each test exports the tiny connector (~2-4 s on 2 cores)."""

from __future__ import annotations

import shutil

import pytest

from cinema_trt.export.cached import cached_export
from cinema_trt.export.manifest import read_manifest
from cinema_trt.models.cache import ArtifactCache
from cinema_trt.models.factory import build_models
from cinema_trt.models.stages import CONNECTOR
from cinema_trt.models.weights import save_stage

pytestmark = pytest.mark.slow  # six tiny connector exports

ONLY_CONNECTOR = (CONNECTOR.name,)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return ArtifactCache(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="module")
def made(cache, tiny_config, tiny_models):
    return cached_export(cache, tiny_config, stages=ONLY_CONNECTOR, models=tiny_models,
                         progress=False)


def _export(cache, config, **kwargs):
    return cached_export(cache, config, stages=ONLY_CONNECTOR, progress=False, **kwargs)


def test_a_matching_export_is_reused(made, cache, tiny_config, tiny_models):
    manifest = made.path / "connector" / "manifest.json"
    mtime = manifest.stat().st_mtime_ns
    again = _export(cache, tiny_config, models=tiny_models)
    assert again.reused and again.path == made.path and not made.reused
    assert manifest.stat().st_mtime_ns == mtime


def test_the_benchmarked_weights_must_be_the_exported_ones(made, cache, tiny_config):
    """The seeded export stands for seed-0 weights only: models of another seed find it
    invalid, and a fresh export (the exporter's own seed-0 weights) cannot replace it."""
    other = build_models(tiny_config, seed=1)
    with pytest.raises(RuntimeError, match="other weights"):
        _export(cache, tiny_config, models=other)
    assert _export(cache, tiny_config).reused  # the seed-0 entry is still there


def test_a_changed_weights_file_makes_a_new_entry(cache, tiny_config, tiny_weights,
                                                  tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    first = _export(cache, tiny_config, weights=weights)
    save_stage(build_models(tiny_config, seed=1).aligner, weights / CONNECTOR.weights_entry)
    second = _export(cache, tiny_config, weights=weights)
    assert not second.reused and second.path != first.path and first.path.is_dir()
    assert (read_manifest(second.path / "connector").source_sha256
            != read_manifest(first.path / "connector").source_sha256)


def test_another_precision_makes_a_new_entry(made, cache, tiny_config):
    fp16 = _export(cache, tiny_config, dtype="fp16")
    assert not fp16.reused and fp16.path != made.path
    assert read_manifest(fp16.path / "connector").compute_dtype == "float16"


def test_other_exporter_versions_make_a_new_entry(made, cache, tiny_config, monkeypatch):
    import cinema_trt.export.cached as cached
    import cinema_trt.export.driver as driver

    upgraded = {**driver.exporter_versions(), "onnx": "99.0"}  # an upgrade of the onnx package
    for module in (driver, cached):  # what the manifest records, what the cache keys on
        monkeypatch.setattr(module, "exporter_versions", lambda: upgraded)
    entry = _export(cache, tiny_config)
    assert not entry.reused and entry.path != made.path
    assert read_manifest(entry.path / "connector").versions == upgraded


def test_a_corrupted_graph_is_remade_not_reused(cache, tiny_config, tiny_models):
    entry = _export(cache, tiny_config, models=tiny_models)
    graph = entry.path / "connector" / "model.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")  # one byte more than the manifest hashed
    again = _export(cache, tiny_config, models=tiny_models)
    assert not again.reused and again.path == entry.path
    assert _export(cache, tiny_config, models=tiny_models).reused  # whole again

"""One `Precision` enum (models/precision.py) for export manifests and engine builds."""

from __future__ import annotations

import pytest

from cinema_trt.export.manifest import Manifest
from cinema_trt.models.precision import Precision
from cinema_trt.models.presets import get_preset
from cinema_trt.models.stages import CONNECTOR


def _manifest_dict(precision: str) -> dict:
    config = get_preset("tiny")
    manifest = Manifest(stage="connector", preset="tiny", opset=19,
                        precision=Precision.FP32,
                        **Manifest.io_from_spec(CONNECTOR.spec(config)),
                        source_sha256="0" * 64, onnx_sha256="0" * 64, versions={},
                        config=config.to_dict())
    return {**manifest.to_dict(), "precision": precision}


def test_export_and_engines_share_the_enum():
    from cinema_trt.engines.config import Precision as EnginePrecision
    from cinema_trt.export.manifest import Precision as ExportPrecision

    assert ExportPrecision is Precision  # kept importable from export.manifest
    assert EnginePrecision is Precision
    assert [p.value for p in Precision] == ["fp32", "fp16", "bf16", "fp8"]


def test_manifests_read_every_precision_and_default_to_float32_compute():
    """fp16/bf16 are export precisions since `export --dtype`; a manifest written before
    `compute_dtype` existed is an fp32-compute graph."""
    for precision in Precision:
        assert Manifest.from_dict(_manifest_dict(precision.value)).precision is precision
    old = _manifest_dict("fp8")
    del old["compute_dtype"]
    assert Manifest.from_dict(old).compute_dtype == "float32"
    with pytest.raises(ValueError, match=r"precision='int4' is not supported; choose one of"):
        Manifest.from_dict(_manifest_dict("int4"))

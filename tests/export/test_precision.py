"""One `Precision` enum (models/presets.py) for export manifests and engine builds."""

from __future__ import annotations

import pytest

from cinema_trt.export.manifest import EXPORT_PRECISIONS, Manifest
from cinema_trt.models.presets import Precision, get_preset
from cinema_trt.models.specs import stage_specs


def _manifest_dict(precision: str) -> dict:
    config = get_preset("tiny")
    manifest = Manifest(stage="connector", preset="tiny", opset=19,
                        precision=Precision.FP32,
                        **Manifest.io_from_spec(stage_specs(config)["connector"]),
                        source_sha256="0" * 64, onnx_sha256="0" * 64, versions={},
                        config=config.to_dict())
    return {**manifest.to_dict(), "precision": precision}


def test_export_and_engines_share_the_enum():
    from cinema_trt.engines.config import Precision as EnginePrecision
    from cinema_trt.export.manifest import Precision as ExportPrecision

    assert ExportPrecision is Precision  # kept importable from export.manifest
    assert EnginePrecision is Precision
    assert [p.value for p in Precision] == ["fp32", "fp16", "bf16", "fp8"]


def test_manifests_read_export_precisions_only():
    assert EXPORT_PRECISIONS == (Precision.FP32, Precision.FP8)
    assert Manifest.from_dict(_manifest_dict("fp8")).precision is Precision.FP8
    with pytest.raises(ValueError, match="manifest precision 'fp16' is not an export precision"):
        Manifest.from_dict(_manifest_dict("fp16"))
    with pytest.raises(ValueError, match=r"precision='int4' is not supported; choose one of"):
        Manifest.from_dict(_manifest_dict("int4"))

"""cinema_trt.export: stages -> ONNX (+ FP8 Q/DQ) -> ONNX Runtime runners.

    manifest.py     manifest.json of every export and build folder: one schema, one reader
    stages.py       per-stage module, spec, example and check shapes
    mllm_split.py   the MLLM as its vision + text graphs (models/stages.py), and their glue
    dtype.py        fp16/bf16 graphs: the stage cast behind float32 I/O, opset per dtype
    onnx_graph.py   trace (dynamo), clean up, save, check
    fp8.py          FP8 PTQ recipe: calibration hooks, Q/DQ graph pass, torch emulation
    calibration.py  calibration on real pipeline runs
    driver.py       export_stages: the library entry point of `cinema-trt export`
    ort.py          OrtRunner / ort_runners: the pipeline on ONNX Runtime

The main names are importable from here; they load on first use, so reading a manifest
does not import the exporter.
"""

from importlib import import_module

_EXPORTS = {
    "export_stages": "driver", "ExportResult": "driver", "ExportError": "driver",
    "format_summary": "driver", "OrtRunner": "ort", "ort_runners": "ort",
    "Manifest": "manifest", "Precision": "manifest", "read_manifest": "manifest",
    "EXPORT_STAGES": "stages",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

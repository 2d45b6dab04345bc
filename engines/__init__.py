"""cinema_trt.engines: exported ONNX stages -> TensorRT engines (or ORT-optimized CPU models).

    backends.py    the TensorRT backends as data (tensorrt, tensorrt-rtx): targets, typing, caches
    shapes.py      deployment shapes (profiles.yaml) -> per-input (min, opt, max) profiles
    config.py      Precision, BuildConfig, graph inspection, TensorRT flags as data
    manifest.py    what a build adds to the manifest: cache keys, refusal of foreign engines
    artifacts.py   what every build decides before calling a runtime
    trt_build.py   build_engine (either TensorRT backend), progress.py its progress/log capture
    report.py      engine reports: layers.json and the manifest's summary from the builder log
    ort_build.py   build_ort_model (ONNX Runtime, CPU)
    trt_runtime.py TensorRTRunner (the Runner protocol) and SharedDeviceMemory
    stages.py      build_stages: every exported stage, what `cinema-trt build` runs

TensorRT is imported lazily (deps.py), so everything but building and running engines works
without it; TensorRT-RTX builds engines without a GPU. See README.md for the GPU flow.
"""

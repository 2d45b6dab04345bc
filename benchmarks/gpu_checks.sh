#!/usr/bin/env bash
# The GPU checks in one command, for a CUDA machine without internet that already has
# torch, triton, transformers, onnx, onnxruntime and pytest (TensorRT optional: its tests
# skip without it). Run from the repository root:
#
#     bash benchmarks/gpu_checks.sh OUT_DIR
#
# 1. installs cinema-trt into a throwaway prefix without touching dependencies;
# 2. runs every `gpu`-marked test (kernels on the GPU; the TensorRT tests skip without it)
#    and keeps the log;
# 3. runs the attention benchmark at the cinema shapes (JSON + markdown naming the GPU);
# 4. times the small preset's pipeline in eager PyTorch on the GPU, fp32/fp16/bf16.
# Commit the JSON/markdown results under benchmarks/results/ with the device named.
# Eight files land in OUT_DIR: three logs and five results.
set -uo pipefail
out="${1:?usage: bash benchmarks/gpu_checks.sh OUT_DIR}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name(), torch.__version__)" || exit 2

# --no-deps: the image's packages are used as they are (nothing can be fetched there)
python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/cinema-site . \
    || exit 2
export PYTHONPATH=/tmp/cinema-site${PYTHONPATH:+:$PYTHONPATH}

# from /tmp, so that the installed copy is what runs, whatever the checkout holds
repo="$(pwd)"
# (kernels and engines only: the serving tests import tritonclient, absent from the image)
(cd /tmp && python3 -m pytest -m gpu -p no:cacheprovider -q -rs "$repo/tests/kernels" \
    "$repo/tests/engines" \
    2>&1 | tee "$out/gpu-tests.log")
tests=${PIPESTATUS[0]}

(cd /tmp && python3 -m cinema_trt.benchmarks.attention --out-dir "$out" \
    2>&1 | tee "$out/attention.log")
bench=${PIPESTATUS[0]}

(cd /tmp && python3 -m cinema_trt.cli bench --preset small --runtimes torch \
    --precisions fp32,fp16,bf16 --device cuda --runs 5 --out "$out" \
    2>&1 | tee "$out/pipeline.log")
pipeline=${PIPESTATUS[0]}
echo "gpu tests exit $tests, attention benchmark exit $bench, pipeline exit $pipeline"
exit $(( tests || bench || pipeline ))

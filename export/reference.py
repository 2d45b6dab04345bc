"""onnx's reference evaluator behind the `Runner` interface, for graphs ONNX Runtime's CPU
provider cannot run: bf16 graphs (ORT registers no bfloat16 MatMul, Mul or Where on CPU).

It executes every node as written in numpy (bfloat16 through ml_dtypes), so it checks the
graph's arithmetic in its own types, not a float32 rewrite of it. It is slow: the exporter
uses it on the small check shapes only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from cinema_trt.models.runner import Tensors

from .manifest import Manifest


class ReferenceRunner:
    """Runs an ONNX file with `onnx.reference.ReferenceEvaluator`; torch tensors in and
    out, outputs cast to the manifest's dtypes (float32 for every stage)."""

    def __init__(self, model_path: str | os.PathLike, manifest: Manifest):
        from onnx.reference import ReferenceEvaluator

        self.model_path = Path(model_path)
        self.manifest = manifest
        self.name = manifest.stage
        self._evaluator = ReferenceEvaluator(str(self.model_path))
        self._inputs = set(self._evaluator.input_names)

    def run(self, inputs: Mapping[str, torch.Tensor]) -> Tensors:
        # the graph may have dropped inputs it does not use (the exporter's dead-code pass)
        feed = {name: np.ascontiguousarray(t.detach().cpu().numpy())
                for name, t in inputs.items() if name in self._inputs}
        names = [e.name for e in self.manifest.outputs]
        outputs = self._evaluator.run(names, feed)
        return {e.name: torch.from_numpy(np.asarray(out).astype(e.dtype))
                for e, out in zip(self.manifest.outputs, outputs)}

"""Weight-only INT4 and INT8 for the MLLM's text graph (export/weight_only.py): accuracy against
torch fp32 and the TensorRT-RTX builder's memory, on a CPU.

    python -m cinema_trt.benchmarks.weight_only [--out benchmarks/results] [--skip-paper]

Per model: export the text graph (models/stage_mllm.MLLM_TEXT) in fp16 (the real exporter,
checked against torch), quantize its weights (INT4 RTN and AWQ-clip, INT8 per channel),
run the fp16 and quantized graphs in ONNX Runtime on held-out prompts (embeddings of
random in-vocabulary ids) and compare the final hidden states with the torch fp32 module:
cosine and max |error| / max |torch|. Models:
- tiny (hidden 64, 2 layers; block 32, as 128 exceeds the width);
- trained: hidden 256, 2 layers, vocab 512, trained briefly on a synthetic language
  (`train_text_model`), block 128: what INT4 does to weights that learned something;
- paper width: the cinema preset's Qwen2-VL-7B text width (hidden 3584, MLP 18944) at
  1 layer, as the memory plan builds it, block 128 (INT4 RTN and INT8).
The paper-width graphs are then built with TensorRT-RTX (the oldest FP8 target) at the memory plan's
profile, fp16, INT4 and INT8, and the builder's weights and activation memory recorded.
Writes `<machine>-weight-only-<date>.json` + `.md` through benchmarks.machine.Provenance.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cinema_trt.models.presets import CinemaConfig, get_preset
from cinema_trt.models.stage_mllm import MLLM_TEXT

from .rtx_probe import TARGET, rtx_build_memory

log = logging.getLogger(__name__)

# a row's label -> (method, bits): INT4 block-wise RTN and AWQ-clip, INT8 per channel
METHODS = {"rtn_dq": ("rtn_dq", 4), "awq_clip": ("awq_clip", 4), "int8": ("rtn_dq", 8)}
# the synthetic language: each token is followed by one of FANOUT successors
FANOUT, TRAIN_STEPS, TRAIN_SEQ, TRAIN_BATCH = 4, 300, 64, 16


def trained_config() -> CinemaConfig:
    """tiny with a 256-wide, 2-layer text model whose widths are multiples of 128."""
    tiny = get_preset("tiny")
    mllm = dataclasses.replace(tiny.mllm, hidden_size=256, intermediate_size=768,
                               num_heads=4, num_kv_heads=2, mrope_section=(8, 12, 12))
    return dataclasses.replace(tiny, name="trained-text", mllm=mllm,
                               aligner=dataclasses.replace(tiny.aligner, in_dim=256))


def paper_config(layers: int = 1) -> CinemaConfig:
    """cinema at `layers` layers per depth-scaled stage, as the memory plan builds it: the
    text half keeps Qwen2-VL-7B's widths (~5 GB of fp32 weights to build at 1 layer)."""
    from cinema_trt.benchmarks.memory_run import at_depth

    return at_depth(get_preset("cinema"), layers)


def train_text_model(models: Any, steps: int = TRAIN_STEPS, seed: int = 0) -> list[float]:
    """Train the MLLM's language model (tied embeddings as the head) on sequences of a
    random first-order language; returns the loss per 50 steps (uniform: ln(vocab))."""
    lm = models.mllm.model.language_model
    embed = lm.embed_tokens.weight
    vocab = embed.shape[0]
    generator = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, vocab, (vocab, FANOUT), generator=generator)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=2e-3, weight_decay=0.0)
    positions = torch.arange(TRAIN_SEQ).expand(3, TRAIN_BATCH, TRAIN_SEQ)
    losses = []
    lm.train()
    for step in range(steps):
        ids = torch.empty(TRAIN_BATCH, TRAIN_SEQ, dtype=torch.long)
        ids[:, 0] = torch.randint(0, vocab, (TRAIN_BATCH,), generator=generator)
        picks = torch.randint(0, FANOUT, (TRAIN_BATCH, TRAIN_SEQ), generator=generator)
        for t in range(1, TRAIN_SEQ):
            ids[:, t] = successors[ids[:, t - 1], picks[:, t]]
        hidden = lm(inputs_embeds=embed[ids], position_ids=positions,
                    use_cache=False).last_hidden_state
        loss = torch.nn.functional.cross_entropy((hidden[:, :-1] @ embed.T).flatten(0, 1),
                                                 ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            losses.append(round(loss.item(), 4))
    lm.eval()
    return losses


def export_text(models: Any, out_dir: Path) -> Path:
    """models' MLLM text graph in fp16 (export/driver.py, checked against torch)."""
    from cinema_trt.export.driver import export_stage
    from cinema_trt.export.manifest import MODEL_FILE
    from cinema_trt.models.precision import Precision

    export_stage(MLLM_TEXT, models, out_dir, dtype=Precision.FP16)
    return out_dir / MLLM_TEXT.name / MODEL_FILE


def agreement(out: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    a, b = out.ravel().astype(np.float64), reference.ravel().astype(np.float64)
    return {"cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
            "max_error": float(np.abs(a - b).max() / np.abs(b).max())}


def text_agreement(models: Any, graph: Path, inputs: dict[str, np.ndarray]
                   ) -> dict[str, float]:
    """ONNX Runtime on `graph` vs the torch fp32 text module, on `inputs`."""
    import onnxruntime as ort

    with torch.no_grad():
        reference = MLLM_TEXT.module(models)(
            **{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return agreement(session.run(None, inputs)[0], reference)


def measure_model(name: str, models: Any, block: int, folder: Path,
                  methods: tuple[str, ...] = tuple(METHODS)) -> dict[str, Any]:
    """fp16, INT4 and INT8 text graphs of `models` against torch fp32."""
    from cinema_trt.export.weight_only import (
        WeightOnlyConfig,
        quantize_weight_only,
    )
    from cinema_trt.models.mllm_split import text_calibration

    embed = models.mllm.model.language_model.embed_tokens.weight.detach()
    calibration = [text_calibration(embed, 1, 128, seed=s) for s in range(4)]
    held_out = text_calibration(embed, 2, 97, seed=100)
    fp16 = export_text(models, folder / "fp16")
    row: dict[str, Any] = {"model": name, "block_size": block,
                           "fp16": text_agreement(models, fp16, held_out)}
    for label in methods:
        method, bits = METHODS[label]
        result = quantize_weight_only(fp16, folder / label / "model.onnx", calibration,
                                      WeightOnlyConfig(method=method, block_size=block,
                                                       bits=bits))
        row[label] = {**text_agreement(models, result.path, held_out),
                      "seconds": round(result.seconds, 1), "layers": len(result.quantized),
                      "weight_bytes": list(result.weight_bytes)}
        log.info("%s %s: %s", name, label, row[label])
    return row


def text_profiles(batch: int, seq: tuple[int, int, int], hidden: int) -> dict[str, tuple]:
    return {"inputs_embeds": tuple((batch, s, hidden) for s in seq),
            "attention_mask": tuple((batch, s) for s in seq),
            "position_ids": tuple((3, batch, s) for s in seq)}


def run(out: Path, paper: bool = True) -> tuple[Path, Path]:
    from cinema_trt.benchmarks.machine import Provenance, write_record
    from cinema_trt.engines.shapes import default_shapes
    from cinema_trt.models.factory import build_models

    provenance = Provenance.start()
    rows, builds, notes = [], {}, []
    with tempfile.TemporaryDirectory(prefix="weight-only-") as tmp:
        folder = Path(tmp)
        rows.append(measure_model("tiny", build_models(get_preset("tiny")), 32, folder / "t"))
        trained = build_models(trained_config())
        notes.append(f"trained model: loss {train_text_model(trained)} over {TRAIN_STEPS} "
                     f"steps (uniform {np.log(512):.2f}, the language's floor "
                     f"{np.log(FANOUT):.2f})")
        rows.append(measure_model("trained (hidden 256, 2 layers)", trained, 128, folder / "x"))
        trained_random = build_models(trained_config())
        rows.append(measure_model("untrained (hidden 256, 2 layers)", trained_random, 128,
                                  folder / "u"))
        if paper:
            config = paper_config()
            models = build_models(config)
            rows.append(measure_model("paper width (hidden 3584, 1 layer)", models, 128,
                                      folder / "p", methods=("rtn_dq", "int8")))
            seq = default_shapes(config).seq
            profiles = text_profiles(1, (seq.min, seq.opt, seq.max), config.mllm.hidden_size)
            for kind, graph in (("fp16", folder / "p" / "fp16" / MLLM_TEXT.name / "model.onnx"),
                                ("int4 rtn_dq", folder / "p" / "rtn_dq" / "model.onnx"),
                                ("int8", folder / "p" / "int8" / "model.onnx")):
                builds[kind] = rtx_build_memory(graph, profiles)
                log.info("paper width %s build: %s", kind, builds[kind])
    record = {"schema": "cinema-trt/weight-only/1", **provenance.block(),
              "rows": rows, "rtx_builds_paper_width_1_layer": builds, "notes": notes}
    return write_record(out, "weight-only", provenance, record, markdown(record))


def markdown(record: dict[str, Any]) -> str:
    from cinema_trt.benchmarks.machine import provenance_line

    lines = [f"# Weight-only {MLLM_TEXT.name}: accuracy vs torch fp32, TensorRT-RTX memory", "",
             provenance_line(record),
             "- inputs: 2 held-out prompts of 97 random in-vocabulary tokens (their "
             "embedding rows); calibration: 4 other prompts of 128", "",
             "| model | block | fp16 graph cosine | method | cosine | max error "
             "| quantize s | weights vs fp16 |", "|---|---:|---:|---|---:|---:|---:|---:|"]
    for row in record["rows"]:
        for method in METHODS:
            if method in row:
                m = row[method]
                before, after = m["weight_bytes"]
                lines.append(f"| {row['model']} | {row['block_size']} | "
                             f"{row['fp16']['cosine']:.7f} | {method} | {m['cosine']:.5f} | "
                             f"{m['max_error']:.4f} | {m['seconds']} | {after / before:.3f}x |")
    if record["rtx_builds_paper_width_1_layer"]:
        lines += ["", f"## TensorRT-RTX ({TARGET}) builds, paper width, 1 layer", "",
                  "| graph | weights (MiB) | activations (MiB) | layers by precision |",
                  "|---|---:|---:|---|"]
        for kind, b in record["rtx_builds_paper_width_1_layer"].items():
            lines.append(f"| {kind} | {b.get('weights_bytes', 0) / 2**20:.1f} | "
                         f"{b.get('activation_bytes', 0) / 2**20:.1f} | "
                         f"{b['layers_by_precision']} |")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in record["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--skip-paper", action="store_true",
                        help="leave out the paper-width model (~5 GB of memory, minutes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for path in run(args.out, paper=not args.skip_paper):
        print(path)


if __name__ == "__main__":
    main()

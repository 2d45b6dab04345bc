"""The `cinema` model: a decoupled Python-backend model that runs the CINEMA pipeline.

It decodes the request (serving/protocol.py), then runs the SAME `CinemaPipeline` as local
generation. Its runners follow the repository's layout (serving/layouts.py): per-stage,
`BlsRunner`s, every stage call a BLS request to a stage model; shared, the stage runners
themselves, loaded and warmed up in this process before the model reports ready. Each
denoising step streams a `progress` response; with `stream_frames`, each chunk of frames
the pipeline decodes streams a `chunk` response as soon as it exists; the video (or, when
streamed, only the MP4 if asked for) follows, then the final flag.
`execute` hands each request to a worker thread and returns at once, so up to
`max_concurrency` requests are in flight in one instance (stage models, or the shared
layout's lock, serialize the stage calls); a cancelled request stops between denoising steps.
"""

from __future__ import annotations

import copy
import json
import logging
import queue
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cinema_trt.models.factory import MLLM_FOLDER, read_weights_config
from cinema_trt.models.pipeline import CinemaPipeline
from cinema_trt.models.sampler import GenerationCancelled
from cinema_trt.serving import protocol
from cinema_trt.serving.bls import StageError, log_to_stderr, pb_utils
from cinema_trt.serving.layouts import orchestrator_runners
from cinema_trt.serving.stage_model import instance_device

log = logging.getLogger(__name__)


def load_processor(folder: Path):
    """The Qwen2-VL processor saved beside the MLLM (tokenizer + image processor only)."""
    from cinema_trt.models.mllm import ImageOnlyQwen2VLProcessor

    return ImageOnlyQwen2VLProcessor.from_pretrained(folder / MLLM_FOLDER, local_files_only=True)


def _parameters(model_config: dict) -> dict[str, str]:
    return {key: value.get("string_value", "")
            for key, value in model_config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        log_to_stderr()
        model_config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.config = read_weights_config(folder)
        parameters = _parameters(model_config)
        concurrency = int(parameters.get("max_concurrency", protocol.MAX_CONCURRENCY))
        runners = orchestrator_runners(self.config, folder, parameters, instance_device(args))
        processor = load_processor(folder)
        # one pipeline per worker: a pipeline keeps per-call timings and a cache, and a
        # fast tokenizer must not be used from two threads at once
        self.pipelines: queue.Queue[CinemaPipeline] = queue.Queue()
        for _ in range(concurrency):
            self.pipelines.put(CinemaPipeline(self.config, runners, copy.deepcopy(processor)))
        self.workers = ThreadPoolExecutor(max_workers=concurrency,
                                          thread_name_prefix="cinema-request")
        log.info("cinema orchestrator ready (%s, %d concurrent requests)", self.config.name,
                 concurrency)

    def execute(self, requests):
        for request in requests:
            self.workers.submit(self._serve, request, request.get_response_sender())
        return None  # decoupled: responses go through the senders

    def finalize(self) -> None:
        self.workers.shutdown(wait=True, cancel_futures=False)

    # --- one request ---------------------------------------------------------------------

    def _serve(self, request, sender) -> None:
        try:
            self._generate(request, sender)
        except Exception as error:  # the client must always get a final response
            log.exception("cinema request failed")
            self._finish(sender, f"internal error: {type(error).__name__}: {error}")

    def _generate(self, request, sender) -> None:
        pb = pb_utils()
        try:
            decoded = protocol.decode_request(self._arrays(request), self.config)
        except ValueError as error:
            self._finish(sender, f"invalid request: {error}")
            return
        if sender.is_cancelled():
            self._finish(sender, None)
            return

        wanted = set(request.requested_output_names())
        if "replica" in wanted:  # accepted, and by whom: a client names this replica if it fails
            name = protocol.replica_name().encode()
            sender.send(pb.InferenceResponse([pb.Tensor("replica", np.array([name],
                                                                            dtype=np.object_))]))

        def progress(step: int, total: int) -> None:
            tensor = pb.Tensor("progress", np.array([step, total], dtype=np.int32))
            sender.send(pb.InferenceResponse([tensor]))

        streamed = [0]  # frames sent so far

        def frames(chunk: np.ndarray, start: int) -> None:
            # the pipeline decodes in order; a gap or overlap would corrupt the client's video
            if start != streamed[0]:
                raise RuntimeError(f"the pipeline produced frames from {start} after "
                                   f"{streamed[0]} frames; chunks must come in order")
            tensors = protocol.chunk_outputs(chunk, start, decoded.request)
            sender.send(pb.InferenceResponse([pb.Tensor(k, v) for k, v in tensors.items()]))
            streamed[0] += len(chunk)

        stream = decoded.stream_frames and "chunk" in wanted
        pipeline = self.pipelines.get()
        try:
            video = pipeline.generate(decoded.request, progress=progress,
                                      should_stop=sender.is_cancelled,
                                      frames=frames if stream else None)
        except GenerationCancelled:
            log.info("cinema request cancelled by the client")
            self._finish(sender, None)
            return
        except (ValueError, StageError) as error:
            self._finish(sender, str(error))
            return
        finally:
            self.pipelines.put(pipeline)
        if stream and streamed[0] != len(video):
            raise RuntimeError(f"the pipeline streamed {streamed[0]} of {len(video)} frames")
        # streamed frames were the video: it is not sent twice (serving/protocol.py)
        outputs = self._outputs(video, decoded, wanted - {"video"} if stream else wanted)
        if outputs:
            sender.send(pb.InferenceResponse(outputs))
        self._finish(sender, None)

    @staticmethod
    def _arrays(request) -> dict[str, np.ndarray]:
        pb = pb_utils()
        arrays = {}
        for field in protocol.INPUTS:
            tensor = pb.get_input_tensor_by_name(request, field.name)
            if tensor is not None:
                arrays[field.name] = tensor.as_numpy()
        return arrays

    @staticmethod
    def _outputs(video: np.ndarray, decoded: protocol.DecodedRequest, wanted: set[str]) -> list:
        """The result tensors; a client that asked only for `mp4`, or had the frames
        streamed, is spared the raw frames."""
        pb = pb_utils()
        outputs = []
        if "video" in wanted:
            outputs.append(pb.Tensor("video", np.ascontiguousarray(video)))
        if decoded.return_mp4 and "mp4" in wanted:
            from cinema_trt.models.media import encode_mp4

            mp4 = encode_mp4(video, decoded.request.fps)
            outputs.append(pb.Tensor("mp4", np.array([mp4], dtype=np.object_)))
        return outputs

    @staticmethod
    def _finish(sender, error: str | None) -> None:
        """Send the final flag, carrying `error` as a Triton error when given."""
        pb = pb_utils()
        flags = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if error is None:
            sender.send(flags=flags)
        else:
            sender.send(pb.InferenceResponse(error=pb.TritonError(error)), flags=flags)

"""The `cinema` model's request/response schema, written once for server, client and config.

A request carries the prompt, 1..K encoded reference images, optional generation
parameters (absent ones take the preset's sampler defaults) and two flags. The decoupled
model streams one `progress` response per denoising step, then one response with `video`
(and `mp4` when `return_mp4` is true), then an empty final response.

With `stream_frames` true, each chunk of frames the VAE decoder produces goes out at once,
in a response of its own (`chunk` + `chunk_info`, encoded and read by `chunk_outputs` /
`read_chunk` below), in order, so a client writes frames while later ones are decoded.
The video response then carries no `video`: the chunks were the video, and sending it
again would double the bytes on the wire (47 MB more at paper size, 45x480x720; up to
384 MiB in one message at the pipeline's pixel cap, against gRPC's 2 GiB ceiling, where a
chunk of one latent frame is 1/64 of that). `mp4`, when asked for, still comes in it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cinema_trt.models.dtypes import lookup
from cinema_trt.models.media import check_frames, encode_png, load_image
from cinema_trt.models.presets import CinemaConfig, check_num_refs

if TYPE_CHECKING:
    from cinema_trt.models.pipeline import GenerationRequest

ORCHESTRATOR = "cinema"
# requests one orchestrator instance runs at once (the repository writes it as a parameter)
MAX_CONCURRENCY = 2
# seconds a whole generation may take: the client's deadline, and the time a server that is
# told to stop gives the generations it runs to finish (its drain)
GENERATION_TIMEOUT_S = 600.0
# the replica's name in responses: this variable (a pod's name in Kubernetes, set by the
# launcher for local replicas), else the host name
REPLICA_VARIABLE = "CINEMA_REPLICA"


def replica_name() -> str:
    return os.environ.get(REPLICA_VARIABLE) or socket.gethostname()


@dataclass(frozen=True)
class Field:
    name: str
    datatype: str  # Triton wire type: BYTES, INT32, ...
    dims: tuple[int, ...]
    optional: bool
    doc: str


INPUTS = (
    Field("prompt", "BYTES", (1,), False, "UTF-8 text prompt"),
    Field("references", "BYTES", (-1,), False, "1..K encoded PNG/JPEG reference images"),
    Field("steps", "INT32", (1,), True, "denoising steps (>= 1)"),
    Field("seed", "INT64", (1,), True, "noise seed (>= 0)"),
    Field("frames", "INT32", (1,), True, "frames, 1 + 4k, at most 257"),
    Field("height", "INT32", (1,), True, "pixels, a multiple of 16, at most 2048"),
    Field("width", "INT32", (1,), True, "pixels, a multiple of 16, at most 2048"),
    Field("fps", "INT32", (1,), True, "frame rate of the MP4"),
    Field("guidance", "FP32", (1,), True, "classifier-free guidance scale (>= 0)"),
    Field("return_mp4", "BOOL", (1,), True, "also return the video as MP4 bytes"),
    Field("stream_frames", "BOOL", (1,), True, "send each decoded chunk's frames as it "
          "exists (`chunk` responses) instead of the whole `video` at the end"),
)
OUTPUTS = (
    Field("progress", "INT32", (2,), True, "[step, total] after each denoising step"),
    Field("video", "UINT8", (-1, -1, -1, 3), True, "frames (T, H, W, 3) RGB"),
    Field("mp4", "BYTES", (1,), True, "H.264 MP4 of the video (when return_mp4)"),
    # not `frames`: that name is the frame-count input, and Triton's names are one namespace
    Field("chunk", "UINT8", (-1, -1, -1, 3), True, "frames [start, start + t) of the video "
          "(t, H, W, 3) RGB, one response per decoded chunk (when stream_frames)"),
    Field("chunk_info", "INT32", (3,), True, "[start, total frames, fps] of the `chunk` in "
          "the same response"),
    Field("replica", "BYTES", (1,), True, "the server replica that accepted the request, in "
          "a response of its own before any progress (clients name it when it fails)"),
)
INPUT_FIELDS = {f.name: f for f in INPUTS}
# inputs that choose what comes back, not what is generated
FLAGS = ("return_mp4", "stream_frames")
PARAMETERS = tuple(f.name for f in INPUTS if f.optional and f.name not in FLAGS)


@dataclass(frozen=True)
class DecodedRequest:
    request: GenerationRequest
    return_mp4: bool
    stream_frames: bool = False


@dataclass(frozen=True)
class FrameChunk:
    """One `chunk` response: frames [start, start + len(frames)) of a `total`-frame video."""

    frames: np.ndarray  # uint8 (t, H, W, 3)
    start: int
    total: int
    fps: int


# --- server side ---------------------------------------------------------------------------


def _check_array(field: Field, array) -> None:
    """The dtype and shape Triton itself enforces from config.pbtxt, for in-process callers.

    Without it an INT32 `prompt` decoded as NUL bytes (bytes(7) is seven zeros), a float
    `steps` was truncated and a 2-D `references` was flattened.
    """
    if not isinstance(array, np.ndarray):
        raise ValueError(f"input {field.name!r} must be a numpy array, got "
                         f"{type(array).__name__}")
    if field.datatype == "BYTES":
        dtype_ok = array.dtype == np.object_ or array.dtype.kind == "S"
    else:
        dtype_ok = array.dtype == lookup(field.datatype).numpy
    if not dtype_ok:
        raise ValueError(f"input {field.name!r} has dtype {array.dtype}; it must be "
                         f"{field.datatype} ({lookup(field.datatype).numpy})")
    if field.dims == (1,) and array.shape != (1,):
        raise ValueError(f"input {field.name!r} must hold exactly one value (shape [1]), "
                         f"got shape {list(array.shape)}")
    if array.ndim != len(field.dims):
        raise ValueError(f"input {field.name!r} must have shape {list(field.dims)} (-1: any "
                         f"length), got shape {list(array.shape)}")


def _check_inputs(arrays: Mapping[str, np.ndarray]) -> None:
    unknown = sorted(set(arrays) - set(INPUT_FIELDS))
    if unknown:
        raise ValueError(f"unexpected inputs {unknown}; the {ORCHESTRATOR!r} model takes "
                         f"{list(INPUT_FIELDS)}")
    for field in INPUTS:
        if field.name in arrays:
            _check_array(field, arrays[field.name])
        elif not field.optional:
            raise ValueError(f"input {field.name!r} is required")


def _text(array: np.ndarray) -> str:
    raw = array[0]
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, (bytes, bytearray)):
        raise ValueError(f"input 'prompt' must hold UTF-8 bytes or a str, got "
                         f"{type(raw).__name__}")
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"prompt is not valid UTF-8 ({error}); send the prompt encoded "
                         "as UTF-8 bytes") from None


def _references(array: np.ndarray, config: CinemaConfig) -> tuple[np.ndarray, ...]:
    # count first: decoding K large images only to reject the request would waste time
    check_num_refs(len(array), min(config.mllm.max_refs, config.dit.max_refs))
    refs = []
    for i, blob in enumerate(array, start=1):  # 1-based: the message is for people
        if not isinstance(blob, (bytes, bytearray)):
            raise ValueError(f"reference {i} must be encoded image bytes, got "
                             f"{type(blob).__name__}")
        try:
            refs.append(load_image(bytes(blob)))
        except ValueError as error:
            raise ValueError(f"reference {i}: {error}") from None
    return tuple(refs)


def _parameter(name: str, array: np.ndarray) -> int | float | bool:
    value = array[0]
    if name == "guidance":
        return float(value)
    return bool(value) if name in FLAGS else int(value)


def decode_request(arrays: Mapping[str, np.ndarray], config: CinemaConfig) -> DecodedRequest:
    """Inputs of one `cinema` request -> a validated GenerationRequest; ValueError if bad."""
    # imported here: clients use this module too and need neither torch nor transformers
    from cinema_trt.models.pipeline import GenerationRequest

    _check_inputs(arrays)
    params = {name: _parameter(name, arrays[name]) for name in PARAMETERS if name in arrays}
    flags = {name: bool(_parameter(name, arrays[name])) if name in arrays else False
             for name in FLAGS}
    request = GenerationRequest.with_defaults(config, _text(arrays["prompt"]),
                                              _references(arrays["references"], config),
                                              **params)
    request.validate(config)
    return DecodedRequest(request, **flags)


def chunk_outputs(frames: np.ndarray, start: int, request: GenerationRequest
                  ) -> dict[str, np.ndarray]:
    """The tensors of one `chunk` response: frames [start, start + t) of `request`'s video."""
    check_frames(frames)
    if not 0 <= start < start + len(frames) <= request.frames:
        raise ValueError(f"chunk of {len(frames)} frames at {start} does not fit a video of "
                         f"{request.frames} frames")
    return {"chunk": np.ascontiguousarray(frames),
            "chunk_info": np.array([start, request.frames, request.fps], dtype=np.int32)}


# --- client side ---------------------------------------------------------------------------

ImageLike = bytes | np.ndarray | str | os.PathLike


def encode_reference(image: ImageLike) -> bytes:
    """Encoded image bytes: arrays become PNG (lossless), paths are read, bytes pass as is."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, np.ndarray):
        return encode_png(image)
    return Path(image).read_bytes()


def encode_request(prompt: str | bytes, references: Sequence[ImageLike],
                   return_mp4: bool = False, stream_frames: bool = False,
                   **params) -> dict[str, np.ndarray]:
    """Named numpy inputs for the `cinema` model; parameters left as None are not sent, nor
    is `stream_frames` when false (servers built before it would refuse the input)."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; choose from {list(PARAMETERS)}")
    text = prompt.encode("utf-8") if isinstance(prompt, str) else bytes(prompt)
    arrays = {
        "prompt": np.array([text], dtype=np.object_),
        "references": np.array([encode_reference(r) for r in references] or [],
                               dtype=np.object_).reshape(-1),
        "return_mp4": np.array([return_mp4], dtype=np.bool_),
    }
    if stream_frames:
        arrays["stream_frames"] = np.array([True], dtype=np.bool_)
    for name, value in params.items():
        if value is not None:
            arrays[name] = np.array([value], dtype=lookup(INPUT_FIELDS[name].datatype).numpy)
    return arrays


def read_chunk(output: Callable[[str], np.ndarray | None]) -> FrameChunk | None:
    """The `chunk` of one response (`output(name)`: its tensor or None), None if it has none.

    A malformed chunk raises ValueError: a client writing frames must not write a wrong one.
    """
    frames, info = output("chunk"), output("chunk_info")
    if frames is None:
        return None
    if info is None or info.shape != (3,):
        raise ValueError(f"a `chunk` response needs `chunk_info` [start, total, fps], got "
                         f"{None if info is None else list(info.shape)}")
    start, total, fps = (int(v) for v in info)
    check_frames(frames)
    if not 0 <= start < start + len(frames) <= total or fps < 1:
        raise ValueError(f"chunk_info [start={start}, total={total}, fps={fps}] does not fit "
                         f"a chunk of {len(frames)} frames")
    return FrameChunk(frames, start, total, fps)

"""gRPC clients for the decoupled `cinema` model: `CinemaClient` (sync) and `AsyncCinemaClient`.

Decoupled models answer only over gRPC bi-directional streams, so every call opens a
stream, sends one request and reads `progress` responses until the final flag. A request
that never started (server unreachable, the model not ready or being reloaded after a
stub died, the stub gone before the first response) is retried with back-off. No client
waits on a dead server: when no message arrives for `progress_timeout` seconds (default
derived from the video's size) the call fails with `ServerStalled` and the request is
cancelled. Cancelling closes the stream with `cancel_requests`, which the server sees
between denoising steps.

Behind a balancer, the replica that accepts a request names itself in a first response.
When that replica fails mid-generation (killed, cut off, a stage's stub died),
the call fails with `ReplicaFailed` naming it, or `ServerStalled`; with
`ClientOptions(resubmit=n)` it is sent again up to n times (to a healthy replica: the
balancer routes by readiness), and the same request, seed included, gives the same video.
By default nothing that started is sent twice: a generation is not idempotent in cost.

With `on_frames`, the server streams the frames as the VAE decodes them (`stream_frames`,
serving/protocol.py) and each arrives at `on_frames(chunk)` (a `FrameChunk`) once, in
order, while later ones are decoded (serving/frames.py assembles them); the result's
`video` is the assembled video, the same frames a non-streamed request returns.

Over 300 lines on purpose: the sync and asyncio clients share one reading of the stream
(`_consume`, `_add_chunk`, `_check_complete`, `_Attempts`); apart, those would become a
public API between two files.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cinema_trt.serving import protocol
from cinema_trt.serving.frames import FrameAssembler, FramesFn

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
_POLL = 0.05  # seconds between cancel checks while waiting for a response


class CinemaRequestError(RuntimeError):
    """The server rejected or failed the request; the message is the server's."""


class RequestCancelled(RuntimeError):
    """The caller cancelled the request before it finished."""


class ServerStalled(TimeoutError):
    """No message from the server for the no-progress bound: it died or hangs."""


class ReplicaFailed(CinemaRequestError):
    """The replica running the request failed after it started; the message names it."""


class _NotStarted(ConnectionError):
    """The request failed before the server started it: safe to send again."""


# the no-progress bound: a fixed allowance (prompt, MLLM, references, the MP4) plus time per
# megapixel of video for the slowest gap (a denoising step or the VAE decode). 10x what the
# CPU-only tiny preset needs on a loaded 2-core machine; far more than a GPU needs.
STALL_BASE_S = 60.0
STALL_PER_MEGAPIXEL_S = 60.0
# the size assumed for dims a request leaves to the server (the cinema preset's defaults)
DEFAULT_VIDEO = {"frames": 45, "height": 480, "width": 720}
# errors of a request the server never started: the model is missing or not ready (a
# reload after a stub died), or its stub is gone
_NOT_STARTED = ("is not ready", "unknown model", "is not found", "not healthy")
# errors of a started request that are its replica's, not the request's: the stream cut
# (the replica or its link died: gRPC or the balancer reset it), a stage's stub dead or
# reloading, the server stopping
_REPLICA_FAULTS = ("not healthy", "not ready", "Socket closed", "RST_STREAM", "Stream removed",
                   "Connection reset", "GOAWAY", "Broken pipe", "Server exiting")
# the stream's status when the server or the balancer cut it (our own cancel never raises)
_REPLICA_STATUSES = ("UNAVAILABLE", "CANCELLED")


def no_progress_timeout(params: dict) -> float:
    """Seconds to wait for the next message of a request with these parameters."""
    dims = [params.get(k) or v for k, v in DEFAULT_VIDEO.items()]
    return STALL_BASE_S + STALL_PER_MEGAPIXEL_S * dims[0] * dims[1] * dims[2] / 1e6


@dataclass(frozen=True)
class ClientOptions:
    # seconds for a whole generation (None: no deadline)
    timeout: float | None = protocol.GENERATION_TIMEOUT_S
    connect_retries: int = 3  # attempts to reach a server, or to start a request
    retry_backoff: float = 0.5  # seconds, doubled after each failed attempt
    model_name: str = protocol.ORCHESTRATOR
    # seconds without any message before the call fails (None: no_progress_timeout)
    progress_timeout: float | None = None
    # times a request whose replica failed after it started (ReplicaFailed, ServerStalled)
    # is sent again; the video is the same (seeded). 0: never (a generation costs minutes)
    resubmit: int = 0

    def stall_bound(self, params: dict) -> float:
        return self.progress_timeout or no_progress_timeout(params)


@dataclass
class GenerationResult:
    video: np.ndarray | None = None  # uint8 (T, H, W, 3)
    mp4: bytes | None = None
    progress: list[tuple[int, int]] = field(default_factory=list)
    replica: str | None = None  # the replica that ran it (servers that name themselves)
    streamed: int = 0  # frames received in `chunk` responses (stream_frames)
    failures: list[str] = field(default_factory=list)  # resubmitted attempts, each's error


def _grpc():
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        raise ImportError("the client needs tritonclient: pip install 'cinema-trt[serve]'") \
            from None
    return grpcclient


def _is_connection_error(error: Exception) -> bool:
    status = str(getattr(error, "status", lambda: "")() or "")
    return "UNAVAILABLE" in status or "failed to connect" in str(error).lower()


def _infer_inputs(arrays: dict[str, np.ndarray]) -> list:
    grpcclient = _grpc()
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape),
                                       protocol.INPUT_FIELDS[name].datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _started(state: GenerationResult) -> bool:
    return bool(state.progress) or state.streamed > 0 or state.video is not None \
        or state.mp4 is not None


def _where(state: GenerationResult) -> str:
    """`replica r1, after step 3 of 8`: where a request was when it failed."""
    step = f"after step {state.progress[-1][0]} of {state.progress[-1][1]}" \
        if state.progress else "before its first step"
    return f"replica {state.replica or '(unnamed)'}, {step}"


def _raise_for(message: str, status: str, state: GenerationResult) -> None:
    if "DEADLINE_EXCEEDED" in status:
        raise TimeoutError(f"generation did not finish in time: {message}")
    if not _started(state) and (any(s in status for s in _REPLICA_STATUSES)
                                or any(s in message for s in _NOT_STARTED)):
        raise _NotStarted(message)  # cut before any step: safe to send again
    if _started(state) and (any(s in status for s in _REPLICA_STATUSES)
                            or any(s in message for s in _REPLICA_FAULTS)):
        raise ReplicaFailed(f"{_where(state)}: the replica failed: {message}")
    raise CinemaRequestError(message)


def _add_chunk(result, state: GenerationResult, frames: FrameAssembler | None) -> None:
    try:
        chunk = protocol.read_chunk(result.as_numpy)
        if chunk is None:
            return
        if frames is None:
            raise ValueError("frames came in `chunk` responses, but none were asked for")
        frames.add(chunk)
    except ValueError as error:
        raise CinemaRequestError(f"bad frames from the server: {error}") from None
    state.streamed += len(chunk.frames)


def _consume(result, error, state: GenerationResult, progress: ProgressFn | None,
             frames: FrameAssembler | None = None) -> bool:
    """Fold one stream message into `state` (streamed frames into `frames`); True when it
    was the final response."""
    if error is not None:
        message = error.message() if hasattr(error, "message") else str(error)
        _raise_for(message, str(getattr(error, "status", lambda: "")() or ""), state)
    step = result.as_numpy("progress")
    if step is not None:
        state.progress.append((int(step[0]), int(step[1])))
        if progress is not None:
            progress(int(step[0]), int(step[1]))
    video = result.as_numpy("video")
    if video is not None:
        state.video = video
    _add_chunk(result, state, frames)
    mp4 = result.as_numpy("mp4")
    if mp4 is not None:
        state.mp4 = bytes(mp4.reshape(-1)[0])
    replica = result.as_numpy("replica")
    if replica is not None:
        state.replica = bytes(replica.reshape(-1)[0]).decode(errors="replace")
    final = result.get_response().parameters.get("triton_final_response")
    return bool(final is not None and final.bool_param)


def _check_complete(state: GenerationResult, outputs: tuple[str, ...],
                    frames: FrameAssembler | None = None) -> GenerationResult:
    if frames is not None:  # the video came in chunks: all of them, or an error
        if not frames.complete:
            raise CinemaRequestError(f"the server finished the request after streaming "
                                     f"{frames.delivered} of {frames.total or '?'} frames")
        if "video" in outputs:
            state.video = frames.video()
    missing = [name for name in outputs if getattr(state, name) is None]
    if missing:
        raise CinemaRequestError(f"the server finished the request without {missing}")
    return state


def _stalled(url: str, bound: float, state: GenerationResult) -> str:
    where = f" ({_where(state)})" if _started(state) or state.replica else ""
    return (f"no message from the server at {url}{where} for {bound:.0f} s: it died or "
            "hangs; the request was cancelled (the bound grows with the video's size; set "
            "ClientOptions(progress_timeout=...) or --progress-timeout to change it)")


def _video(state: GenerationResult) -> np.ndarray:
    assert state.video is not None, "_check_complete ensures the requested outputs"
    return state.video


def _mp4(state: GenerationResult) -> bytes:
    assert state.mp4 is not None, "_check_complete ensures the requested outputs"
    return state.mp4


def _requested(outputs: tuple[str, ...], declared: set[str], stream: bool) -> list:
    """The outputs to ask for: a streamed video comes as chunks, not as `video`."""
    grpcclient = _grpc()
    if stream:
        if "chunk" not in declared:
            raise CinemaRequestError("the server's model does not stream frames (its "
                                     "repository predates `stream_frames`): rebuild it with "
                                     "`cinema-trt repo`, or ask without on_frames")
        outputs = (*(o for o in outputs if o != "video"), "chunk", "chunk_info")
    # repositories built before `replica` do not declare it, and asking for an output the
    # model lacks would fail the request
    names = ("progress", *outputs, *(("replica",) if "replica" in declared else ()))
    return [grpcclient.InferRequestedOutput(name) for name in names]


def _declared_outputs(metadata) -> set[str]:
    """The names of the outputs the model declares."""
    outputs = metadata["outputs"] if isinstance(metadata, dict) else metadata.outputs
    return {o["name"] if isinstance(o, dict) else o.name for o in outputs}


def _assembler(outputs: tuple[str, ...], on_frames: FramesFn | None) -> FrameAssembler | None:
    return None if on_frames is None else FrameAssembler(on_frames, keep="video" in outputs)


class _Attempts:
    """One call's retry policy. A request the server never started is sent again after
    back-off, `connect_retries` attempts in all; one whose replica failed after it started
    is resubmitted `resubmit` times, each failure kept in `failures`."""

    def __init__(self, options: ClientOptions, url: str):
        self.options, self.url = options, url
        self.tries, self.delay = 1, options.retry_backoff
        self.failures: list[str] = []

    def wait_before_next(self, error: Exception) -> float:
        """Seconds to wait before sending again; re-raises when the policy says stop."""
        if isinstance(error, _NotStarted):
            if self.tries >= self.options.connect_retries:
                raise ConnectionError(f"the server at {self.url} did not start the request "
                                      f"in {self.tries} attempts: {error}") from None
            log.info("request not started (attempt %d/%d): %s; retrying in %.1f s",
                     self.tries, self.options.connect_retries, error, self.delay)
            self.tries += 1
            wait, self.delay = self.delay, self.delay * 2
            return wait
        if len(self.failures) >= self.options.resubmit:
            raise error
        self.failures.append(f"{type(error).__name__}: {error}")
        log.warning("%s; resubmitting the request (%d of %d)", error, len(self.failures),
                    self.options.resubmit)
        return self.options.retry_backoff


class _Client:
    """What the sync and asyncio clients share: the server, the options, the back-off."""

    def __init__(self, url: str, options: ClientOptions = ClientOptions()):
        self.url = url
        self.options = options
        self._declared: set[str] | None = None  # the model's outputs

    def _unreachable(self, attempt: int, error: Exception) -> float:
        """Seconds to wait after failed attempt `attempt` to reach a ready server (doubling
        back-off); ConnectionError after the last."""
        retries = self.options.connect_retries
        log.info("server at %s not reachable (attempt %d/%d): %s", self.url, attempt, retries,
                 error)
        if attempt >= retries:
            raise ConnectionError(f"cannot reach a ready Triton server at {self.url} after "
                                  f"{retries} attempts: {error}")
        return self.options.retry_backoff * 2 ** (attempt - 1)


class CinemaClient(_Client):
    """Synchronous client; safe to share between threads (each call has its own stream)."""

    def _connect(self):
        grpcclient = _grpc()
        for attempt in range(1, self.options.connect_retries + 1):
            client = grpcclient.InferenceServerClient(self.url)
            try:
                if client.is_server_ready(client_timeout=10):
                    return client
                error: Exception = ConnectionError(f"server at {self.url} is not ready")
            except grpcclient.InferenceServerException as exc:
                if not _is_connection_error(exc):
                    client.close()
                    raise
                error = exc
            client.close()
            time.sleep(self._unreachable(attempt, error))  # raises after the last

    def is_ready(self) -> bool:
        client = _grpc().InferenceServerClient(self.url)
        try:
            return bool(client.is_server_ready(client_timeout=5))
        except _grpc().InferenceServerException:
            return False
        finally:
            client.close()

    def stream(self, prompt: str | bytes, references: Sequence[protocol.ImageLike],
               progress: ProgressFn | None = None, cancel: threading.Event | None = None,
               outputs: tuple[str, ...] = ("video",), on_frames: FramesFn | None = None,
               **params) -> GenerationResult:
        """Send one request and collect its responses; `cancel.set()` aborts it.

        `outputs`: "video" (uint8 frames) and/or "mp4" (encoded on the server). With
        `on_frames`, frames are streamed as they are decoded and each reaches
        `on_frames(chunk)` (frames, start, total, fps) once, in order. Raises
        `ServerStalled` when no message arrives for `ClientOptions.stall_bound(params)` s.
        """
        arrays = protocol.encode_request(prompt, references, "mp4" in outputs,
                                         on_frames is not None, **params)
        bound = self.options.stall_bound(params)
        attempts = _Attempts(self.options, self.url)
        frames = _assembler(outputs, on_frames)
        while True:
            try:
                result = self._stream_once(arrays, outputs, progress, cancel, bound, frames)
            except (_NotStarted, ReplicaFailed, ServerStalled) as error:
                time.sleep(attempts.wait_before_next(error))
                continue
            result.failures = attempts.failures
            return result

    def _stream_once(self, arrays: dict[str, np.ndarray], outputs: tuple[str, ...],
                     progress: ProgressFn | None, cancel: threading.Event | None,
                     bound: float, frames: FrameAssembler | None) -> GenerationResult:
        messages: queue.Queue = queue.Queue()
        client = self._connect()
        state = GenerationResult()
        finished = False
        if frames is not None:
            frames.begin_attempt()
        try:
            if self._declared is None:
                self._declared = _declared_outputs(client.get_model_metadata(
                    self.options.model_name, as_json=True, client_timeout=10))
            requested = _requested(outputs, self._declared, frames is not None)
            client.start_stream(lambda result, error: messages.put((result, error)),
                                stream_timeout=self.options.timeout)
            client.async_stream_infer(self.options.model_name, _infer_inputs(arrays),
                                      outputs=requested, enable_empty_final_response=True)
            last = time.monotonic()
            while not finished:
                if cancel is not None and cancel.is_set():
                    raise RequestCancelled("request cancelled by the caller")
                try:
                    result, error = messages.get(timeout=_POLL)
                except queue.Empty:
                    if time.monotonic() - last > bound:
                        raise ServerStalled(_stalled(self.url, bound, state)) from None
                    continue
                last = time.monotonic()
                # error responses carry the final flag: mark that before _consume raises
                finished = error is not None
                finished = _consume(result, error, state, progress, frames)
            return _check_complete(state, outputs, frames)
        finally:
            # cancel only unfinished requests: cancelling a stream whose request already
            # completed can leave Triton (2.51) waiting for it forever at shutdown
            client.stop_stream(cancel_requests=not finished)
            client.close()

    def generate(self, prompt, references, progress: ProgressFn | None = None,
                 cancel: threading.Event | None = None, **params) -> np.ndarray:
        """The generated video, uint8 (T, H, W, 3)."""
        return _video(self.stream(prompt, references, progress, cancel, **params))

    def generate_mp4(self, prompt, references, progress: ProgressFn | None = None,
                     cancel: threading.Event | None = None, **params) -> bytes:
        """The generated video as H.264 MP4 bytes (encoded on the server)."""
        return _mp4(self.stream(prompt, references, progress, cancel, outputs=("mp4",),
                                **params))


class AsyncCinemaClient(_Client):
    """asyncio client; cancelling the awaiting task cancels the request on the server."""

    async def _connect(self):
        import asyncio

        import tritonclient.grpc.aio as aioclient

        for attempt in range(1, self.options.connect_retries + 1):
            client = aioclient.InferenceServerClient(self.url)
            try:
                if await client.is_server_ready(client_timeout=10):
                    return client
                error: Exception = ConnectionError(f"server at {self.url} is not ready")
            except _grpc().InferenceServerException as exc:
                if not _is_connection_error(exc):
                    await client.close()
                    raise
                error = exc
            await client.close()
            await asyncio.sleep(self._unreachable(attempt, error))  # raises after the last

    async def stream(self, prompt, references, progress: ProgressFn | None = None,
                     outputs: tuple[str, ...] = ("video",), on_frames: FramesFn | None = None,
                     **params) -> GenerationResult:
        import asyncio

        arrays = protocol.encode_request(prompt, references, "mp4" in outputs,
                                         on_frames is not None, **params)
        bound = self.options.stall_bound(params)
        attempts = _Attempts(self.options, self.url)
        frames = _assembler(outputs, on_frames)
        while True:
            try:
                result = await self._stream_once(arrays, outputs, progress, bound, frames)
            except (_NotStarted, ReplicaFailed, ServerStalled) as error:
                await asyncio.sleep(attempts.wait_before_next(error))
                continue
            result.failures = attempts.failures
            return result

    async def _stream_once(self, arrays: dict[str, np.ndarray], outputs: tuple[str, ...],
                           progress: ProgressFn | None, bound: float,
                           frames: FrameAssembler | None) -> GenerationResult:
        import asyncio

        import grpc

        async def one_request(requested: list):
            # the aio API rejects the `triton_` parameter that asks for an empty final
            # response; the server closing the stream after our half-close marks the end
            yield {"model_name": self.options.model_name, "inputs": _infer_inputs(arrays),
                   "outputs": requested}

        client = await self._connect()
        responses = None
        state = GenerationResult()
        if frames is not None:
            frames.begin_attempt()
        try:
            if self._declared is None:
                self._declared = _declared_outputs(await client.get_model_metadata(
                    self.options.model_name, as_json=True, client_timeout=10))
            requested = _requested(outputs, self._declared, frames is not None)
            responses = client.stream_infer(one_request(requested),
                                            stream_timeout=self.options.timeout)
            iterator = responses.__aiter__()
            while True:
                try:
                    result, error = await asyncio.wait_for(iterator.__anext__(), bound)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    raise ServerStalled(_stalled(self.url, bound, state)) from None
                _consume(result, error, state, progress, frames)
            return _check_complete(state, outputs, frames)
        except grpc.RpcError as error:  # aio raises raw gRPC errors (deadline, reset)
            _raise_for(str(error.details()), str(error.code()), state)
            raise AssertionError("unreachable") from None
        finally:
            if responses is not None:
                responses.cancel()  # no-op when finished; cancels on the server otherwise
            await client.close()

    async def generate(self, prompt, references, progress: ProgressFn | None = None,
                       **params) -> np.ndarray:
        return _video(await self.stream(prompt, references, progress, **params))

    async def generate_mp4(self, prompt, references, progress: ProgressFn | None = None,
                           **params) -> bytes:
        return _mp4(await self.stream(prompt, references, progress, outputs=("mp4",),
                                      **params))

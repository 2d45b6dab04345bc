"""gRPC clients for the decoupled `cinema` model: `CinemaClient` (sync) and `AsyncCinemaClient`.

Decoupled models answer only over gRPC bi-directional streams, so every call opens a
stream, sends one request and reads `progress` responses until the final flag. Connection
errors before the request is sent are retried; once it is sent nothing is retried (a
generation is not idempotent in cost). Cancelling closes the stream with
`cancel_requests`, which the server sees between denoising steps.
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

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
_POLL = 0.05  # seconds between cancel checks while waiting for a response


class CinemaRequestError(RuntimeError):
    """The server rejected or failed the request; the message is the server's."""


class RequestCancelled(RuntimeError):
    """The caller cancelled the request before it finished."""


@dataclass(frozen=True)
class ClientOptions:
    timeout: float | None = 600.0  # seconds for a whole generation (None: no deadline)
    connect_retries: int = 3  # attempts to reach a server that is not answering yet
    retry_backoff: float = 0.5  # seconds, doubled after each failed attempt
    model_name: str = protocol.ORCHESTRATOR


@dataclass
class GenerationResult:
    video: np.ndarray | None = None  # uint8 (T, H, W, 3)
    mp4: bytes | None = None
    progress: list[tuple[int, int]] = field(default_factory=list)


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


def _consume(result, error, state: GenerationResult, progress: ProgressFn | None) -> bool:
    """Fold one stream message into `state`; True when it was the final response."""
    if error is not None:
        message = error.message() if hasattr(error, "message") else str(error)
        if "DEADLINE_EXCEEDED" in str(getattr(error, "status", lambda: "")()):
            raise TimeoutError(f"generation did not finish in time: {message}")
        raise CinemaRequestError(message)
    step = result.as_numpy("progress")
    if step is not None:
        state.progress.append((int(step[0]), int(step[1])))
        if progress is not None:
            progress(int(step[0]), int(step[1]))
    video = result.as_numpy("video")
    if video is not None:
        state.video = video
    mp4 = result.as_numpy("mp4")
    if mp4 is not None:
        state.mp4 = bytes(mp4.reshape(-1)[0])
    final = result.get_response().parameters.get("triton_final_response")
    return bool(final is not None and final.bool_param)


def _check_complete(state: GenerationResult, outputs: tuple[str, ...]) -> GenerationResult:
    missing = [name for name in outputs if getattr(state, name) is None]
    if missing:
        raise CinemaRequestError(f"the server finished the request without {missing}")
    return state


def _requested(outputs: tuple[str, ...]) -> list:
    grpcclient = _grpc()
    return [grpcclient.InferRequestedOutput(name) for name in ("progress", *outputs)]


class CinemaClient:
    """Synchronous client; safe to share between threads (each call has its own stream)."""

    def __init__(self, url: str, options: ClientOptions = ClientOptions()):
        self.url = url
        self.options = options

    def _connect(self):
        grpcclient = _grpc()
        delay = self.options.retry_backoff
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
            log.info("server at %s not reachable (attempt %d/%d): %s", self.url, attempt,
                     self.options.connect_retries, error)
            if attempt < self.options.connect_retries:
                time.sleep(delay)
                delay *= 2
        raise ConnectionError(f"cannot reach a ready Triton server at {self.url} after "
                              f"{self.options.connect_retries} attempts: {error}")

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
               outputs: tuple[str, ...] = ("video",), **params) -> GenerationResult:
        """Send one request and collect its responses; `cancel.set()` aborts it.

        `outputs`: "video" (uint8 frames) and/or "mp4" (encoded on the server).
        """
        arrays = protocol.encode_request(prompt, references, "mp4" in outputs, **params)
        messages: queue.Queue = queue.Queue()
        client = self._connect()
        state = GenerationResult()
        finished = False
        try:
            client.start_stream(lambda result, error: messages.put((result, error)),
                                stream_timeout=self.options.timeout)
            client.async_stream_infer(self.options.model_name, _infer_inputs(arrays),
                                      outputs=_requested(outputs),
                                      enable_empty_final_response=True)
            while not finished:
                if cancel is not None and cancel.is_set():
                    raise RequestCancelled("request cancelled by the caller")
                try:
                    result, error = messages.get(timeout=_POLL)
                except queue.Empty:
                    continue
                # error responses carry the final flag: mark that before _consume raises
                finished = error is not None
                finished = _consume(result, error, state, progress)
            return _check_complete(state, outputs)
        finally:
            # cancel only unfinished requests: cancelling a stream whose request already
            # completed can leave Triton (2.51) waiting for it forever at shutdown
            client.stop_stream(cancel_requests=not finished)
            client.close()

    def generate(self, prompt, references, progress: ProgressFn | None = None,
                 cancel: threading.Event | None = None, **params) -> np.ndarray:
        """The generated video, uint8 (T, H, W, 3)."""
        return self.stream(prompt, references, progress, cancel, **params).video

    def generate_mp4(self, prompt, references, progress: ProgressFn | None = None,
                     cancel: threading.Event | None = None, **params) -> bytes:
        """The generated video as H.264 MP4 bytes (encoded on the server)."""
        return self.stream(prompt, references, progress, cancel, outputs=("mp4",),
                           **params).mp4


class AsyncCinemaClient:
    """asyncio client; cancelling the awaiting task cancels the request on the server."""

    def __init__(self, url: str, options: ClientOptions = ClientOptions()):
        self.url = url
        self.options = options

    async def _connect(self):
        import asyncio

        import tritonclient.grpc.aio as aioclient

        delay = self.options.retry_backoff
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
            if attempt < self.options.connect_retries:
                await asyncio.sleep(delay)
                delay *= 2
        raise ConnectionError(f"cannot reach a ready Triton server at {self.url} after "
                              f"{self.options.connect_retries} attempts: {error}")

    async def stream(self, prompt, references, progress: ProgressFn | None = None,
                     outputs: tuple[str, ...] = ("video",), **params) -> GenerationResult:
        import grpc

        arrays = protocol.encode_request(prompt, references, "mp4" in outputs, **params)
        # the aio API rejects the `triton_` parameter that asks for an empty final
        # response; the server closing the stream after our half-close marks the end
        request = {"model_name": self.options.model_name, "inputs": _infer_inputs(arrays),
                   "outputs": _requested(outputs)}

        async def one_request():
            yield request

        client = await self._connect()
        responses = None
        state = GenerationResult()
        try:
            responses = client.stream_infer(one_request(), stream_timeout=self.options.timeout)
            async for result, error in responses:
                _consume(result, error, state, progress)
            return _check_complete(state, outputs)
        except grpc.RpcError as error:  # aio raises raw gRPC errors (deadline, reset)
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError(f"generation did not finish in time: {error}") from None
            raise CinemaRequestError(str(error.details())) from None
        finally:
            if responses is not None:
                responses.cancel()  # no-op when finished; cancels on the server otherwise
            await client.close()

    async def generate(self, prompt, references, progress: ProgressFn | None = None,
                       **params) -> np.ndarray:
        return (await self.stream(prompt, references, progress, **params)).video

    async def generate_mp4(self, prompt, references, progress: ProgressFn | None = None,
                           **params) -> bytes:
        return (await self.stream(prompt, references, progress, outputs=("mp4",),
                                  **params)).mp4

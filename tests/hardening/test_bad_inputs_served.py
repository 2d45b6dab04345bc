"""The bad-input corpus over gRPC, sent raw (the client library would refuse much of it):
each request gets exactly one error response naming the problem, and the server stays
healthy: after the whole corpus a valid request still gets its video."""

import re

import numpy as np
import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]


def _refusal(responses: list) -> str:
    """The error message of a request answered by one error response and nothing else."""
    assert len(responses) == 1 and responses[0][0] == "error", responses
    return responses[0][1]


def test_every_bad_request_gets_one_specific_error(served, raw_infer, png, bad_request):
    message = _refusal(raw_infer(served.endpoints.grpc, bad_request.build(png)))
    expected = bad_request.served or "invalid request: " + bad_request.message
    assert re.search(expected, message), message
    assert served.running and served.is_ready()


def test_every_bad_image_gets_one_specific_error(served, raw_infer, png, bad_image):
    arrays = {"prompt": np.array([b"a toy"], dtype=np.object_),
              "references": np.array([png, bad_image.data], dtype=np.object_)}
    message = _refusal(raw_infer(served.endpoints.grpc, arrays))
    assert re.search(f"invalid request: reference 2: image bytes: {bad_image.message}",
                     message), message
    assert served.running and served.is_ready()


def test_a_valid_request_succeeds_after_the_corpus(served, raw_infer, png):
    arrays = {"prompt": np.array([b"a toy on a table"], dtype=np.object_),
              "references": np.array([png], dtype=np.object_),
              "steps": np.array([2], np.int32), "frames": np.array([5], np.int32),
              "height": np.array([32], np.int32), "width": np.array([32], np.int32)}
    # naming no outputs asks for all: who accepted it, each step, the video, the final flag
    assert raw_infer(served.endpoints.grpc, arrays) == [("replica",), ("progress",),
                                                        ("progress",), ("video",), ()]

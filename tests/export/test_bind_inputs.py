"""export/onnx_graph.py `bind_inputs`: a trace's inputs bound to forward's signature, the
spec's inputs past forward's named parameters to its *args (the VAE decoder's states)."""

from __future__ import annotations

import pytest
import torch

from cinema_trt.export.onnx_graph import bind_inputs
from cinema_trt.models.specs import StageSpec, TensorSpec

SPEC = StageSpec("g", (TensorSpec("x", torch.float32, ("batch", 4)),
                       TensorSpec("flag", torch.bool, (1,)),
                       TensorSpec("state.a", torch.float32, ("batch", "n")),
                       TensorSpec("state.b", torch.float32, (2, "m"))),
                 (TensorSpec("y", torch.float32, ("batch", 4)),))
EXAMPLE = {"x": torch.zeros(3, 4), "flag": torch.ones(1, dtype=torch.bool),
           "state.a": torch.zeros(3, 5), "state.b": torch.zeros(2, 6)}


class Step(torch.nn.Module):
    def forward(self, x, flag, *states):
        return x


class Named(torch.nn.Module):
    def forward(self, x, flag):
        return x


class Swapped(torch.nn.Module):
    def forward(self, flag, x, *states):
        return x


def test_named_parameters_by_name_the_rest_as_one_tuple_of_shapes():
    args, shapes = bind_inputs(Step(), SPEC, EXAMPLE)
    assert [a is EXAMPLE[n] for a, n in zip(args, SPEC.input_names, strict=True)] == [True] * 4
    # a tensor without dynamic dims is None, not {} (torch.export reads {} as a container)
    assert shapes == {"x": {0: "batch"}, "flag": None,
                      "states": ({0: "batch", 1: "n"}, {1: "m"})}


@pytest.mark.parametrize("module,message", [
    (Named(), r"inputs \['state.a', 'state.b'\] match no parameter of Named.forward"),
    (Swapped(), r"forward's parameters \['flag', 'x'\] are not the spec's first inputs"),
])
def test_a_forward_that_cannot_take_the_spec_is_refused(module, message):
    with pytest.raises(ValueError, match=message):
        bind_inputs(module, SPEC, EXAMPLE)

"""`export --attention-plugin`: the DiT graph carries the Triton kernel as TensorRT plugin
nodes; ORT cannot run it, so the manifest says its check was skipped instead of lying."""

import onnx
import pytest

from cinema_trt.export.driver import export_stages
from cinema_trt.export.manifest import read_manifest
from cinema_trt.export.onnx_graph import plugin_nodes


@pytest.mark.slow
def test_dit_exports_with_one_plugin_node_per_block(tiny_config, tmp_path):
    [result] = export_stages(tiny_config, tmp_path, stages=["dit"], progress=False,
                             attention_plugin=True)
    assert result.error is None
    assert "skipped" in read_manifest(tmp_path / "dit").validation
    nodes = plugin_nodes(onnx.load(str(tmp_path / "dit" / "model.onnx")))
    assert len(nodes) == tiny_config.dit.depth


def test_the_plugin_cannot_combine_with_fp8(tiny_config, tmp_path):
    with pytest.raises(ValueError, match="attention_plugin cannot combine with fp8"):
        export_stages(tiny_config, tmp_path, stages=["dit"], fp8=True, attention_plugin=True)
    assert not (tmp_path / "dit" / "manifest.json").exists()

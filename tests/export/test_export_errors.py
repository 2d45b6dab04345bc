"""Bad input fails early with a clear error, and a failed export never leaves a manifest."""

from __future__ import annotations

import os

import pytest

from cinema_trt.export.driver import export_stages
from cinema_trt.export.manifest import MANIFEST_FILE, MODEL_FILE
from cinema_trt.models.presets import get_preset
from cinema_trt.models.stages import GRAPHS, resolve_graphs


def _manifests(folder):
    return sorted(folder.rglob(MANIFEST_FILE)) if folder.exists() else []


def test_unknown_stage_names_the_choices_and_touches_nothing(tiny_config, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="unknown stage 'dti'.*'dit'"):
        export_stages(tiny_config, out, stages=["dit", "dti"], progress=False)
    assert not out.exists()


def test_stage_alias_and_order():
    assert resolve_graphs(["dit", "mllm", "dit"]) == ("mllm_vision", "mllm_text", "dit")
    assert len(resolve_graphs(None)) == len(GRAPHS)


def test_unwritable_out_dir_is_a_clear_error(tiny_config, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    # a path below a regular file cannot be created, even by root
    with pytest.raises(ValueError, match="not writable.*choose another --out"):
        export_stages(tiny_config, blocker / "out", stages=["connector"], progress=False)


def test_missing_weights_folder(tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_stages(tiny_config, tmp_path / "out", weights=tmp_path / "nope",
                      stages=["connector"], progress=False)
    assert _manifests(tmp_path / "out") == []


def test_weights_of_another_preset_are_refused(tiny_models, tmp_path):
    from cinema_trt.models.factory import save_models

    weights = save_models(tiny_models, tmp_path / "weights")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="saved for preset 'tiny'.*preset 'small'"):
        export_stages(get_preset("small"), out, weights=weights, stages=["connector"],
                      progress=False)
    assert _manifests(out) == []


def test_a_broken_stage_folder_fails_and_leaves_no_manifest(tiny_config, tmp_path):
    """A previous export's manifest is removed before anything else is touched, so the
    error (here: model.onnx is a folder) cannot leave it describing other files."""
    stage_dir = tmp_path / "out" / "connector"
    (stage_dir / MODEL_FILE).mkdir(parents=True)
    (stage_dir / MANIFEST_FILE).write_text("{}")
    with pytest.raises(OSError):
        export_stages(tiny_config, tmp_path / "out", stages=["connector"], progress=False)
    assert _manifests(tmp_path / "out") == []


def test_failure_while_writing_the_manifest_leaves_none(tiny_config, tmp_path, monkeypatch):
    """The manifest goes through a temporary file and a rename; make the rename fail like
    a full disk would (fault injection at the OS call) on the last step of an export."""
    import errno

    from cinema_trt.models import fileio

    real_replace = os.replace

    def disk_full_for_manifests(src, dst):
        if str(dst).endswith(MANIFEST_FILE):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", disk_full_for_manifests)
    stage_dir = tmp_path / "out" / "connector"
    with pytest.raises(OSError, match="No space left"):
        export_stages(tiny_config, tmp_path / "out", stages=["connector"], progress=False)
    assert (stage_dir / MODEL_FILE).is_file()  # the graph was written and checked...
    assert not list(stage_dir.glob(".*.tmp"))  # no temporary file is left behind...
    assert _manifests(tmp_path / "out") == []  # ...but the folder is not complete

"""The artifact cache (models/cache.py): an entry `<root>/<kind>/<key>/` is reused when its
key matches and its check accepts it; otherwise it is made in a staging folder and renamed
into place, so a failed make leaves nothing a later run could reuse."""

from __future__ import annotations

import pytest

from cinema_trt.models.cache import ArtifactCache, cache_key, folder_sha256


class Maker:
    """Writes `artifact.txt` holding the inputs' seed; counts how often it ran."""

    def __init__(self, fail: bool = False):
        self.calls, self.fail = 0, fail

    def __call__(self, folder):
        self.calls += 1
        folder.mkdir()
        (folder / "artifact.txt").write_text("half")
        if self.fail:
            raise RuntimeError("the exporter crashed")
        (folder / "artifact.txt").write_text("done")


def check(folder):
    text = (folder / "artifact.txt").read_text()  # FileNotFoundError: incomplete
    if text != "done":
        raise ValueError(f"artifact says {text!r}")


def test_an_entry_is_made_once_and_then_reused(tmp_path):
    cache, make = ArtifactCache(tmp_path), Maker()
    first = cache.entry("onnx", {"seed": 0}, make, check)
    second = cache.entry("onnx", {"seed": 0}, make, check)
    assert (first.reused, second.reused, make.calls) == (False, True, 1)
    assert first.path == second.path == tmp_path / "onnx" / first.key
    assert first.key == cache_key({"kind": "onnx", "seed": 0})


def test_changed_inputs_make_a_new_entry_beside_the_old_one(tmp_path):
    cache, make = ArtifactCache(tmp_path), Maker()
    old = cache.entry("onnx", {"seed": 0, "versions": {"torch": "2.5"}}, make, check)
    new = cache.entry("onnx", {"seed": 0, "versions": {"torch": "2.6"}}, make, check)
    assert not new.reused and new.path != old.path and make.calls == 2
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == sorted([old.key, new.key])


def test_the_key_is_canonical_json(tmp_path):
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": [1, 2], "a": 1})
    assert cache_key({"path": tmp_path}) == cache_key({"path": str(tmp_path)})
    assert cache_key({"a": 1}) != cache_key({"a": "1"})


def test_an_entry_its_check_refuses_is_remade_not_reused(tmp_path, caplog):
    cache, make = ArtifactCache(tmp_path), Maker()
    entry = cache.entry("onnx", {"seed": 0}, make, check)
    (entry.path / "artifact.txt").write_text("tampered")
    caplog.set_level("INFO", logger="cinema_trt.models.cache")
    again = cache.entry("onnx", {"seed": 0}, make, check)
    assert not again.reused and make.calls == 2 and again.path == entry.path
    assert (again.path / "artifact.txt").read_text() == "done"
    assert "invalid entry: artifact says 'tampered'" in caplog.text


def test_a_crash_while_making_leaves_nothing_to_reuse(tmp_path):
    cache = ArtifactCache(tmp_path)
    with pytest.raises(RuntimeError, match="the exporter crashed"):
        cache.entry("onnx", {"seed": 0}, Maker(fail=True), check)
    assert list((tmp_path / "onnx").iterdir()) == []  # neither the entry nor its staging
    make = Maker()
    assert cache.entry("onnx", {"seed": 0}, make, check).reused is False and make.calls == 1


def test_a_make_that_writes_an_invalid_artifact_is_refused(tmp_path):
    def make(folder):
        folder.mkdir()
        (folder / "artifact.txt").write_text("half")

    with pytest.raises(RuntimeError, match="the artifact just made is not valid"):
        ArtifactCache(tmp_path).entry("onnx", {"seed": 0}, make, check)
    assert list((tmp_path / "onnx").iterdir()) == []


def test_when_another_process_installs_the_same_entry_first_both_use_it(tmp_path):
    cache, other = ArtifactCache(tmp_path), Maker()

    def make(folder):  # while this one is being made, a second process makes and installs it
        cache.entry("onnx", {"seed": 0}, other, check)
        Maker()(folder)

    entry = cache.entry("onnx", {"seed": 0}, make, check)
    assert other.calls == 1 and not entry.reused
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [entry.key]  # no staging left
    check(entry.path)


def test_a_folder_hash_covers_file_names_and_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"\1\2")
    before = folder_sha256(tmp_path)
    (tmp_path / "a" / "w.bin").write_bytes(b"\1\3")
    assert folder_sha256(tmp_path) != before
    (tmp_path / "a" / "w.bin").write_bytes(b"\1\2")
    assert folder_sha256(tmp_path) == before
    (tmp_path / "a" / "w.bin").rename(tmp_path / "a" / "v.bin")
    assert folder_sha256(tmp_path) != before

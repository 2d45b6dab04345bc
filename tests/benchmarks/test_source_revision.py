"""Records name the commit they measured: `source_revision` reads it from git, and says
whether tracked files had uncommitted changes (numbers from a dirty tree belong to no
commit)."""

from __future__ import annotations

import subprocess

from cinema_trt.benchmarks.machine import describe_source, source_revision


def _git(folder, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          cwd=folder, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_a_clean_checkout_gives_its_commit_and_an_edit_makes_it_dirty(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "commit", "-q", "-m", "one")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert source_revision(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "result.json").write_text("{}")  # what a run writes: untracked, not code
    assert source_revision(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "code.py").write_text("x = 2\n")
    assert source_revision(tmp_path) == {"commit": head, "dirty": True}
    assert describe_source(source_revision(tmp_path)) == f"commit {head[:12]}, uncommitted changes"


def test_outside_a_checkout_both_are_unknown(tmp_path):
    assert source_revision(tmp_path) == {"commit": None, "dirty": None}
    assert describe_source(source_revision(tmp_path)) == "not a git checkout"

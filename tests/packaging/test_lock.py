"""Installs reproduce what CI tested: constraints.txt holds one version of everything
`cinema-trt[test]` installs, the README's commands and .ci/run install through it, and the
environment running these tests is the locked one.

A fresh install once took transformers 5.25 (CI had passed on 5.24), whose new dependency
on Hugging Face's `kernels` broke every server start: nothing had recorded the versions CI
passed with. .ci/latest runs the newest releases on purpose (CINEMA_UNLOCKED=1).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "PIP_CONSTRAINT=constraints.txt pip install"


def _lockfile():
    spec = importlib.util.spec_from_file_location("lockfile", ROOT / ".ci" / "lockfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_commands() -> list[str]:
    """The README's fenced one-line commands that make a virtual environment."""
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^(python3 -m venv .*)$", text, flags=re.MULTILINE)


def test_the_readme_commands_and_ci_install_through_the_lock():
    commands = readme_commands()
    assert len(commands) == 2, commands  # the demo, the tests
    assert all(INSTALL in command for command in commands), commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci, "`.ci/run` must run the README's test command, unchanged"


def test_the_lock_pins_each_package_once_exactly():
    lock = _lockfile().read_lock()
    assert {"torch", "transformers", "onnxruntime", "tensorrt-rtx-cu12", "nvidia-pytriton",
            "setuptools"} <= set(lock)


def test_a_malformed_or_doubled_pin_is_named(tmp_path):
    lockfile = _lockfile()
    (tmp_path / "a.txt").write_text("torch>=2.6\n")
    with pytest.raises(ValueError, match="a.txt:1: 'torch>=2.6' is not `name==version`"):
        lockfile.read_lock(tmp_path / "a.txt")
    (tmp_path / "b.txt").write_text("# x\nPyYAML==6.0\npyyaml==6.0.1\n")
    with pytest.raises(ValueError, match="b.txt:3: pyyaml is pinned twice"):
        lockfile.read_lock(tmp_path / "b.txt")


def test_differences_name_what_moved_appeared_and_went():
    assert _lockfile().differences({"a": "1", "b": "2", "c": "3"},
                                   {"a": "1", "b": "2.1", "d": "4"}) == [
        "b 2 -> 2.1", "c 3 -> (not installed)", "d (not locked) -> 4"]


@pytest.mark.skipif(os.environ.get("CINEMA_UNLOCKED") == "1",
                    reason="the drift check (.ci/latest) runs the newest releases on purpose")
def test_this_environment_is_the_locked_one():
    lockfile = _lockfile()
    lock = lockfile.read_lock()
    installed = lockfile.installed_closure()
    moved = lockfile.differences({name: lock.get(name) for name in installed}, installed)
    assert not moved, ("this environment is not the locked one; install with "
                       f"`{INSTALL} -e \".[test]\"` (or refresh the lock on purpose: "
                       ".ci/latest --write-lock):\n" + "\n".join(moved))

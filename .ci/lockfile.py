"""constraints.txt: the exact versions the last green CI run installed.

Every install the README and CI make goes through it (`PIP_CONSTRAINT=constraints.txt
pip install ...`, which pip also applies to the isolated build of this project), so a
fresh install reproduces what was tested. pyproject.toml keeps its floors; this file holds
the one tested combination. It lists what `cinema-trt[test]` needs, walked from the
installed metadata (stray packages in the environment stay out), plus the build backend.

    python .ci/lockfile.py diff  [--python PY]   packages whose versions differ from the lock
    python .ci/lockfile.py write [--python PY]   rewrite the lock from PY's environment and
                                                 print what moved (the refresh commit's text)

PY (default: this interpreter) is the environment to read; it runs this file again inside
it, so its metadata is read by its own interpreter.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
ROOT_REQUIREMENT = "cinema-trt[test]"
# the project's own [build-system] requires (pyproject.toml), resolved at lock time
BUILD_REQUIREMENTS = ("setuptools>=68", "wheel")
HEADER = """\
# The versions the last green CI run installed: `cinema-trt[test]` and what it pulls in,
# plus the build backend. The README's commands and .ci/run install through this file
# (PIP_CONSTRAINT=constraints.txt). Refresh it only on purpose: .ci/latest installs the
# newest releases pyproject.toml allows and runs the demo and the fast tier; when they pass,
# `python .ci/lockfile.py write --python <that venv's python>` rewrites this file and prints
# what moved, for the commit message. Generated; do not edit by hand.
"""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_closure(root: str = ROOT_REQUIREMENT) -> dict[str, str]:
    """{name: installed version} of `root` and everything it requires, with extras and
    environment markers evaluated the way pip did when it installed them."""
    from importlib import metadata

    from packaging.requirements import Requirement

    found: dict[str, str] = {}
    pending = [Requirement(root)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement = pending.pop()
        name = normalize(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{requirement} is required but not installed; install "
                             f"{ROOT_REQUIREMENT} first") from None
        found[name] = dist.version
        for text in dist.requires or []:
            child = Requirement(text)
            extras = requirement.extras or {""}
            if child.marker is None or any(child.marker.evaluate({"extra": e})
                                           for e in extras):
                pending.append(child)
    found.pop("cinema-trt", None)
    return found


def build_backend_now() -> dict[str, str]:
    """The build backend pip's isolated build would take today (newest allowed)."""
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d",
                        folder, *BUILD_REQUIREMENTS], check=True, capture_output=True)
        wheels = [path.name.split("-")[:2] for path in Path(folder).glob("*.whl")]
    return {normalize(name): version for name, version in wheels}


def read_lock(path: Path = LOCK) -> dict[str, str]:
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if match is None:
            raise ValueError(f"{path}:{number}: {line!r} is not `name==version`")
        name = normalize(match.group(1))
        if name in pins:
            raise ValueError(f"{path}:{number}: {name} is pinned twice")
        pins[name] = match.group(2)
    return pins


def differences(lock: dict[str, str], env: dict[str, str]) -> list[str]:
    """`name lock -> env` for every package whose version moved, was added or dropped."""
    lines = []
    for name in sorted(set(lock) | set(env)):
        old, new = lock.get(name), env.get(name)
        if old != new:
            lines.append(f"{name} {old or '(not locked)'} -> {new or '(not installed)'}")
    return lines


def _in(python: str, command: str) -> str:
    """Run this file's `command` in another interpreter (its own metadata)."""
    done = subprocess.run([python, __file__, command], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr.strip())
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("diff", "write", "closure"))
    parser.add_argument("--python", help="the environment to read (default: this one)")
    args = parser.parse_args(argv)
    if args.command == "closure":  # what _in asks another interpreter for
        print("\n".join(f"{n}=={v}" for n, v in sorted(installed_closure().items())))
        return 0
    closure = (_in(args.python, "closure") if args.python
               else "\n".join(f"{n}=={v}" for n, v in installed_closure().items()))
    # the build backend is not installed in the environment: the newest is what an
    # unlocked install builds with
    env = {**dict(line.split("==") for line in closure.split()), **build_backend_now()}
    lock = read_lock() if LOCK.is_file() else {}
    moved = differences(lock, env)
    if args.command == "write":
        LOCK.write_text(HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(env.items())))
        print("lock refreshed; moved:" if moved else "lock rewritten; nothing moved")
    else:
        print("differs from the lock:" if moved else "matches the lock")
    for line in moved:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

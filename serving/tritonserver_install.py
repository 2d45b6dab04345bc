"""Where the `tritonserver` binary and its Python backend come from, and the environment
the server runs in.

The binary comes from `$TRITONSERVER`, PATH, or the `nvidia-pytriton` wheel. The wheel ships
the server, the Python backend and one backend stub per Python version but no backend
directory laid out the way the server expects, so one is assembled in a temporary folder.
The stub embeds an isolated interpreter that ignores PYTHONPATH and finds its prefix from
`python` on PATH, so our interpreter's folder goes first on PATH: the stage models then
import `cinema_trt`, torch and transformers from this environment.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path


def _pytriton_root() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    return Path(pytriton.__file__).parent


def find_tritonserver(explicit: str | None = None) -> Path:
    """The server binary: `explicit`, `$TRITONSERVER`, PATH, then the nvidia-pytriton wheel.

    A binary named explicitly (argument or variable) must exist: silently falling back to
    another server would hide a typo.
    """
    named_binaries = (("executable", explicit),
                      ("$TRITONSERVER", os.environ.get("TRITONSERVER")))
    for label, named in named_binaries:
        if named:
            if not Path(named).is_file():
                raise FileNotFoundError(f"{label}={named} is not a file; point it at a "
                                        "tritonserver binary or unset it")
            return Path(named)
    on_path = shutil.which("tritonserver")
    if on_path:
        return Path(on_path)
    root = _pytriton_root()
    if root is not None and (root / "tritonserver" / "bin" / "tritonserver").is_file():
        return root / "tritonserver" / "bin" / "tritonserver"
    raise FileNotFoundError(
        "no tritonserver binary found: set $TRITONSERVER, put tritonserver on PATH, or "
        "`pip install 'cinema-trt[serve]'` (the nvidia-pytriton wheel bundles one)")


def _is_wheel_binary(binary: Path) -> bool:
    root = _pytriton_root()
    return root is not None and binary.resolve().is_relative_to(root.resolve())


def assemble_backends(binary: Path, into: Path) -> Path:
    """A backend directory for `binary`: the wheel's Python backend plus our stub version."""
    if not _is_wheel_binary(binary):
        installed = binary.resolve().parent.parent / "backends"
        if not installed.is_dir():
            raise FileNotFoundError(f"{binary} has no backends folder at {installed}")
        return installed
    dist = binary.resolve().parent.parent
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise FileNotFoundError(f"the nvidia-pytriton wheel has no Python backend stub for "
                                f"Python {version} ({stub}); use a supported Python")
    python_dir = into / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in (dist / "backends" / "python").iterdir():
        if source.is_file():
            (python_dir / source.name).symlink_to(source)
    (python_dir / stub.name).symlink_to(stub)
    return into


def server_environment(binary: Path) -> dict[str, str]:
    """The server's environment: the wheel's libraries and our interpreter for the stubs."""
    env = dict(os.environ)
    library_path = []
    # the stub links libpython3.X.so; prefer this interpreter's own over a system copy
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and any(Path(libdir).glob("libpython3*.so*")):
        library_path.append(libdir)
    root = _pytriton_root()
    if root is not None and _is_wheel_binary(binary):
        library_path.append(str(root.parent / "nvidia_pytriton.libs"))
    if env.get("LD_LIBRARY_PATH"):
        library_path.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(library_path)
    # the stub finds its prefix (and so site-packages) from the first `python` on PATH
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env

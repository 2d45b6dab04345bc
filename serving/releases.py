"""The NGC Triton Inference Server container that serves a repository's plans: a `tensorrt`
plan loads only in the TensorRT major.minor.patch that built it, so the release is chosen
by the plans (one table, refusing mismatches); TensorRT-RTX plans run in the Python backend
of any release, with `models.backends.TENSORRT_RTX.wheel` installed at the plans' version.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TritonRelease:
    """One monthly NGC release of `nvcr.io/nvidia/tritonserver:<release>-py3`: the server
    version and the TensorRT inside, which alone can load a `tensorrt` plan of that
    version (a plan loads only in the TensorRT major.minor.patch that built it)."""

    release: str  # the NGC tag, yy.mm
    triton: str  # the server version
    tensorrt: str  # TensorRT in the container

    @property
    def image(self) -> str:
        return f"nvcr.io/nvidia/tritonserver:{self.release}-py3"

    @property
    def tensorrt_container(self) -> str:
        """The container of the same release to build `tensorrt` plans in."""
        return f"nvcr.io/nvidia/tensorrt:{self.release}-py3"


# From NVIDIA's container release notes (Triton Inference Server Release yy.mm, "Contents of
# the Triton Inference Server container"). Add a row for each new release.
TRITON_RELEASES = tuple(TritonRelease(*row) for row in (
    ("24.05", "2.46.0", "10.0.1.6"), ("24.06", "2.47.0", "10.1.0.27"),
    ("24.07", "2.48.0", "10.2.0.19"), ("24.08", "2.49.0", "10.3.0.26"),
    ("24.09", "2.50.0", "10.4.0.26"), ("24.10", "2.51.0", "10.5.0.18"),
    ("24.11", "2.52.0", "10.6.0.26"), ("24.12", "2.53.0", "10.7.0.23"),
    ("25.01", "2.54.0", "10.8.0.43"), ("25.02", "2.55.0", "10.8.0.43"),
    ("25.03", "2.56.0", "10.9.0.34"), ("25.04", "2.57.0", "10.9.0.34"),
    ("25.05", "2.58.0", "10.10.0.31"), ("25.06", "2.59.0", "10.11.0.33"),
))
# the server every serving test ran on (nvidia-pytriton 0.7.0 bundles Triton 2.51): the
# release chosen when no `tensorrt` plan decides it
TESTED_TRITON = "2.51.0"


def _release_of(tensorrt_version: str) -> tuple[int, ...]:
    from packaging.version import Version

    return Version(tensorrt_version).release[:3]  # build numbers differ between packagings


def triton_release(tensorrt_version: str | None = None,
                   release: str | None = None) -> TritonRelease:
    """The release to serve with. `tensorrt_version`: the TensorRT that built the
    repository's `tensorrt` plans, which the release must contain (the newest such, unless
    `release` names one); without plans, `release` or the tested server's release."""
    by_tag = {r.release: r for r in TRITON_RELEASES}
    if release is not None and release not in by_tag:
        raise ValueError(f"Triton release {release!r} is not in serving/releases.py "
                         f"TRITON_RELEASES ({', '.join(by_tag)}); add its row from NVIDIA's "
                         "release notes, or choose a listed one")
    if tensorrt_version is None:
        tested = next(r for r in TRITON_RELEASES if r.triton == TESTED_TRITON)
        return by_tag[release] if release else tested
    matching = [r for r in TRITON_RELEASES
                if _release_of(r.tensorrt) == _release_of(tensorrt_version)]
    if not matching:
        known = ", ".join(dict.fromkeys(r.tensorrt for r in TRITON_RELEASES))
        raise ValueError(
            f"the plans were built by TensorRT {tensorrt_version}, which no Triton release "
            f"in TRITON_RELEASES contains ({known}): rebuild them in the TensorRT container "
            f"of the release you will serve with (e.g. {TRITON_RELEASES[-1].tensorrt_container})")
    if release is not None and by_tag[release] not in matching:
        raise ValueError(
            f"Triton {release} contains TensorRT {by_tag[release].tensorrt}, but the plans "
            f"were built by TensorRT {tensorrt_version}: serve them with "
            f"{' or '.join(r.release for r in matching)}, or rebuild them in "
            f"{by_tag[release].tensorrt_container}")
    return by_tag[release] if release else matching[-1]

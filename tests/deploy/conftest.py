"""Deployment fixtures: the offline validators of Kubernetes manifests, and repositories
placed on GPUs (built on a CPU: a repository only names the GPUs)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

KUBERNETES_VERSION = "1.30"  # the oldest release the manifests target (GRPCRoute v1: 1.29+)
VALIDATE_EXTRA = "pip install kubernetes-validate (in the test extra)"
CRD_VALIDATORS = Path(__file__).parent  # package.json + crd_validate.mjs
NPM_INSTALL = "npm install --prefix tests/deploy --no-package-lock"


@pytest.fixture(scope="session")
def validate_builtin(require):
    """`validate(resource)`: against the Kubernetes OpenAPI schema of KUBERNETES_VERSION,
    strict (an unknown field, such as a misspelt `livenessprobe`, is an error)."""
    kubernetes_validate = require("kubernetes_validate", VALIDATE_EXTRA)

    def validate(resource: dict) -> None:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)

    return validate


@pytest.fixture(scope="session")
def validate_custom(require_binary, missing):
    """`validate(resources) -> [error or None]`: custom resources against their CRDs
    (validators generated from the upstream CRDs, tests/deploy/package.json)."""
    node = require_binary("node", "apt-get install nodejs npm")
    if not (CRD_VALIDATORS / "node_modules" / "@kubernetes-models").is_dir():
        missing("the CRD validators (npm packages)", NPM_INSTALL)

    def validate(resources: list[dict]) -> list[str | None]:
        done = subprocess.run([node, str(CRD_VALIDATORS / "crd_validate.mjs")],
                              input=json.dumps(resources), capture_output=True, text=True,
                              timeout=60, cwd=CRD_VALIDATORS)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return validate


@pytest.fixture(scope="session")
def gpu_repository(serve_extra, tiny_weights, tmp_path_factory):
    """The tiny repository with every stage on GPU 0 (PyTorch stages)."""
    from cinema_trt.serving.repo import RepositoryOptions, build_repository
    from cinema_trt.serving.triton_config import Placement

    return build_repository(None, tmp_path_factory.mktemp("gpu") / "models", tiny_weights,
                            options=RepositoryOptions(stage_placement=Placement.on((0,))))


@pytest.fixture(scope="session")
def png() -> str:
    """A bundled sample reference image."""
    from cinema_trt.models.media import sample_references

    return str(sample_references()[0])

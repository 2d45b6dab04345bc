"""`cinema-trt deploy kubernetes`: the manifests validate offline (built-in kinds against
Kubernetes' schemas, custom resources against their CRDs) and keep the serving contract:
probes on our truthful health, Triton's ports wired through Service, route and monitor,
the repository's GPUs requested, the image of the Triton release its plans need, and a
termination budget that lets a running generation finish. The contract is checked by one
function, which is shown to catch a broken probe path, a missing GPU request, a wrong image
and a short grace period."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import yaml

from cinema_trt.serving import protocol
from cinema_trt.serving.deployment import read_repository, serving_image
from cinema_trt.serving.kubernetes import (
    QUEUE_METRIC,
    KubernetesOptions,
    adapter_rule,
    manifests,
    write_kubernetes,
)
from cinema_trt.serving.releases import TRITON_RELEASES, triton_release
from cinema_trt.serving.server import ServerConfig

pytestmark = pytest.mark.usefixtures("serve_extra")
OPTIONS = KubernetesOptions(model_store="pvc:cinema-models", replicas=3)
CUSTOM = {"GRPCRoute", "ServiceMonitor"}


def _all(files: dict[str, list[dict]]) -> list[dict]:
    return [resource for documents in files.values() for resource in documents]


def _one(files, kind: str) -> dict:
    found = [r for r in _all(files) if r["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def contract_violations(files: dict[str, list[dict]], gpus: int, release: str) -> list[str]:
    """What breaks serving in `files`: each string names one broken promise."""
    problems = []
    deployment = _one(files, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if ports != {"http": 8000, "grpc": 8001, "metrics": 8002}:
        problems.append(f"container ports {ports}")
    for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe",
                        "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        get = container.get(probe, {}).get("httpGet", {})
        if (get.get("path"), ports.get(get.get("port"))) != (path, 8000):
            problems.append(f"{probe} is {get}, not GET {path} on the HTTP port")
    startup = container.get("startupProbe", {})
    if startup.get("periodSeconds", 0) * startup.get("failureThreshold", 0) < \
            ServerConfig(".").startup_timeout:
        problems.append("the startup probe gives up before the models can load")
    for side in ("requests", "limits"):
        if container["resources"].get(side, {}).get("nvidia.com/gpu") != gpus:
            problems.append(f"resources.{side} ask for "
                            f"{container['resources'].get(side, {}).get('nvidia.com/gpu')} "
                            f"GPUs, the repository uses {gpus}")
    if not container["image"].split(":")[-1].startswith(f"{release}-"):
        problems.append(f"image {container['image']} is not of Triton release {release}")
    args = container["args"]
    drain = float(args[args.index("--drain-timeout") + 1])
    stop = float(args[args.index("--stop-timeout") + 1])
    if drain < protocol.GENERATION_TIMEOUT_S:
        problems.append(f"a terminating pod drains {drain} s, shorter than a generation")
    if pod.get("terminationGracePeriodSeconds", 30) < drain + stop:
        problems.append(f"grace period {pod.get('terminationGracePeriodSeconds')} s < drain "
                        f"{drain} s + stop {stop} s: running generations are killed")
    if deployment["spec"]["selector"]["matchLabels"].items() - \
            deployment["spec"]["template"]["metadata"]["labels"].items():
        problems.append("the Deployment's selector does not match its pods")
    return problems


@pytest.fixture(scope="module")
def gpu_files(gpu_repository):
    needs = read_repository(gpu_repository)
    return manifests(needs, serving_image(needs), OPTIONS, admin_token="test-token")


def test_every_builtin_resource_validates_against_the_kubernetes_schema(gpu_files,
                                                                        validate_builtin):
    builtin = [r for r in _all(gpu_files) if r["kind"] not in CUSTOM]
    assert {r["kind"] for r in builtin} == {"Namespace", "Secret", "Deployment", "Service",
                                            "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for resource in builtin:
        validate_builtin(resource)


def test_the_schema_check_is_strict_about_unknown_fields(gpu_files, validate_builtin):
    # what a typo does: Kubernetes would drop the field silently, the probe would be gone
    broken = copy.deepcopy(_one(gpu_files, "Deployment"))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["livenesprobe"] = container.pop("livenessProbe")
    with pytest.raises(Exception, match="livenesprobe"):
        validate_builtin(broken)


def test_custom_resources_validate_against_their_crds(gpu_files, validate_custom):
    custom = [r for r in _all(gpu_files) if r["kind"] in CUSTOM]
    assert validate_custom(custom) == [None, None]
    broken = copy.deepcopy(_one(gpu_files, "GRPCRoute"))
    broken["spec"]["rules"][0]["backendRefs"][0]["port"] = "grpc"  # a name, not a number
    (error,) = validate_custom([broken])
    assert error is not None and "port must be integer" in error


def test_the_manifests_keep_the_serving_contract(gpu_files):
    assert contract_violations(gpu_files, gpus=1, release="24.10") == []


@pytest.mark.parametrize("break_it,named", [
    (lambda c, p: c["readinessProbe"]["httpGet"].update(path="/v2/health/redy"),
     "readinessProbe"),
    (lambda c, p: c["livenessProbe"]["httpGet"].update(port="grpc"), "livenessProbe"),
    (lambda c, p: c["resources"]["limits"].pop("nvidia.com/gpu"), "resources.limits"),
    (lambda c, p: c["resources"]["requests"].pop("nvidia.com/gpu"), "resources.requests"),
    (lambda c, p: c.update(image="cinema-triton:25.01-cinema0.1.0"), "not of Triton release"),
    (lambda c, p: p.update(terminationGracePeriodSeconds=30), "running generations are killed"),
], ids=["probe-path", "probe-port", "gpu-limit", "gpu-request", "image", "grace-period"])
def test_the_contract_check_catches_a_broken_manifest(gpu_files, break_it, named):
    broken = copy.deepcopy(gpu_files)
    pod = _one(broken, "Deployment")["spec"]["template"]["spec"]
    break_it(pod["containers"][0], pod)
    assert any(named in problem for problem in contract_violations(broken, 1, "24.10"))


def test_service_route_and_monitor_reach_the_pods_ports(gpu_files):
    pod = _one(gpu_files, "Deployment")["spec"]["template"]
    cluster, headless = (r for r in _all(gpu_files) if r["kind"] == "Service")
    for service in (cluster, headless):
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: p for p in cluster["spec"]["ports"]}
    # gRPC is HTTP/2 without TLS: a gateway must be told, or it speaks HTTP/1.1
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert headless["spec"]["clusterIP"] == "None"
    route = _one(gpu_files, "GRPCRoute")
    (backend,) = route["spec"]["rules"][0]["backendRefs"]
    assert (backend["name"], backend["port"]) == (cluster["metadata"]["name"], 8001)
    methods = {m["method"]["method"] for m in route["spec"]["rules"][0]["matches"]}
    assert "ModelStreamInfer" in methods and "RepositoryModelLoad" not in methods
    monitor = _one(gpu_files, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        cluster["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert ports["metrics"]["port"] == 8002


def test_the_autoscaler_scales_the_deployment_on_the_adapters_queue_metric(gpu_files):
    hpa = _one(gpu_files, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == _one(gpu_files, "Deployment")["metadata"][
        "name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 6)
    (metric,) = hpa["spec"]["metrics"]
    rule = adapter_rule(OPTIONS)
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"] == QUEUE_METRIC
    assert metric["pods"]["target"]["averageValue"] == "100000"  # 100 ms, in microseconds
    assert 'namespace="cinema"' in rule["seriesQuery"]
    # the rule: queue time per request over 30 s
    assert rule["metricsQuery"] == (
        "avg(delta(nv_inference_queue_duration_us{<<.LabelMatchers>>}[30s])/"
        "(1+delta(nv_inference_request_success{<<.LabelMatchers>>}[30s]))) by (<<.GroupBy>>)")
    pdb = _one(gpu_files, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1


def test_the_admin_token_comes_from_the_secret(gpu_files):
    secret = _one(gpu_files, "Secret")
    env = {e["name"]: e for e in _one(gpu_files, "Deployment")["spec"]["template"]["spec"][
        "containers"][0]["env"]}
    ref = env["CINEMA_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "token")
    assert secret["stringData"]["token"] == "test-token"
    assert env[protocol.REPLICA_VARIABLE]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.name"  # clients name the failed pod


@pytest.mark.parametrize("store,repository,volume", [
    ("pvc:models/cinema", "/models/cinema", "persistentVolumeClaim"),
    ("nfs:10.0.0.5:/srv/models", "/models", "nfs"),
    ("s3://bucket/cinema", "s3://bucket/cinema", None),
    ("gs://bucket/cinema", "gs://bucket/cinema", "secret"),
])
def test_the_repository_comes_from_a_volume_or_object_storage(gpu_repository, store,
                                                              repository, volume):
    needs = read_repository(gpu_repository)
    options = dataclasses.replace(OPTIONS, model_store=store, storage_secret="store-keys")
    files = manifests(needs, serving_image(needs), options)
    pod = _one(files, "Deployment")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--repository") + 1] == repository
    kinds = {key for v in pod["volumes"] for key in v if key not in ("name",)}
    assert kinds == {"emptyDir", *([volume] if volume else [])}
    with pytest.raises(ValueError, match="use pvc:<claim>"):
        KubernetesOptions(model_store="/srv/models")


def test_a_cpu_repository_is_refused_unless_asked(tiny_weights, tmp_path):
    from cinema_trt.serving.repo import build_repository

    needs = read_repository(build_repository(None, tmp_path / "cpu", tiny_weights))
    with pytest.raises(ValueError, match="places no model on a GPU.*--gpus 0"):
        manifests(needs, serving_image(needs), OPTIONS)
    files = manifests(needs, serving_image(needs), dataclasses.replace(OPTIONS, cpu_only=True))
    resources = _one(files, "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "resources"]
    assert "nvidia.com/gpu" not in resources["requests"]


# --- engines: the Triton release and the image ----------------------------------------------


def _plans(root, stage_manifest, runtime, version, targets):
    from cinema_trt.export.manifest import BuildRecord
    from cinema_trt.models.presets import get_preset
    from cinema_trt.models.stages import STAGE_NAMES

    tiny = get_preset("tiny")
    for stage in STAGE_NAMES:  # one plan per stage: each a tensorrt_plan model
        build = BuildRecord(runtime=runtime, runtime_version=version, precision="fp16",
                            build_config={}, profiles={}, onnx_path=f"onnx/{stage}/model.onnx",
                            plan_file="model.plan", plan_sha256="b" * 64, cache_key="k" * 64,
                            rebuild_command="cinema-trt build ...", targets=list(targets))
        stage_manifest(root / stage, tiny, build=build, precision="fp16",
                       compute_dtype="float16")
        (root / stage / "model.plan").write_bytes(b"plan " + stage.encode())
    return root


@pytest.fixture(scope="module")
def plan_repository(tiny_weights, tmp_path_factory, stage_manifest):
    """tensorrt_plan stage models on GPUs 0 and 1, plans of TensorRT 10.5.0.18 for sm90."""
    from cinema_trt.serving.repo import RepositoryOptions, build_repository
    from cinema_trt.serving.triton_config import Placement

    root = tmp_path_factory.mktemp("plans")
    plans = _plans(root / "engines", stage_manifest, "tensorrt", "10.5.0.18", ["sm90"])
    return build_repository(None, root / "models", tiny_weights, plans, RepositoryOptions(
        backend="tensorrt", stage_placement=Placement.on((0, 1))))


def test_plans_pick_the_release_of_their_tensorrt_and_refuse_another(plan_repository):
    needs = read_repository(plan_repository)
    assert {(e.runtime, e.version, e.native) for e in needs.engines} == \
        {("tensorrt", "10.5.0.18", True)}
    image = serving_image(needs)
    assert image.release.release == "24.10" and image.release.tensorrt == "10.5.0.18"
    assert image.dockerfile().splitlines()[3] == "FROM nvcr.io/nvidia/tritonserver:24.10-py3"
    files = manifests(needs, image, OPTIONS)
    assert contract_violations(files, gpus=2, release="24.10") == []
    pod = _one(files, "Deployment")["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert {e["key"]: e["values"] for e in term["matchExpressions"]} == {
        "nvidia.com/gpu.compute.major": ["9"], "nvidia.com/gpu.compute.minor": ["0"]}
    with pytest.raises(ValueError, match="contains TensorRT 10.8.0.43, but the plans were "
                                         "built by TensorRT 10.5.0.18: serve them with 24.10"):
        serving_image(needs, release="25.01")


def test_a_tensorrt_version_no_release_contains_is_refused():
    with pytest.raises(ValueError, match="no Triton release in TRITON_RELEASES contains"):
        triton_release("10.99.0")
    with pytest.raises(ValueError, match="not in serving/releases.py TRITON_RELEASES"):
        triton_release(None, "19.01")
    # one row per release, in order: the table is read newest-last
    tags = [r.release for r in TRITON_RELEASES]
    assert tags == sorted(set(tags))


def test_rtx_plans_run_in_python_on_any_release_with_their_wheel():
    from cinema_trt.serving.deployment import EngineUse, RepositoryNeeds

    needs = RepositoryNeeds(("dit",), (0,), frozenset({"tensorrt"}), (EngineUse(
        "dit", "dit/1/engines/dit", "tensorrt-rtx", "1.7.1.116", ("sm89", "sm120"), False),),
        0)
    image = serving_image(needs)
    assert image.wheels == ("tensorrt-rtx-cu12==1.7.1.*",)
    assert image.release.triton == "2.51.0"  # the tested server: no plan pins a release
    assert image.tag.endswith("-trt-rtx1.7.1.116")
    assert serving_image(needs, release="25.01").release.release == "25.01"


def test_the_written_folder_is_a_kustomization_of_every_manifest(gpu_repository, tmp_path):
    written = write_kubernetes(gpu_repository, tmp_path / "k8s", OPTIONS)
    names = {p.name for p in written}
    assert {"kustomization.yaml", "Dockerfile", "prometheus-adapter-values.yaml"} <= names
    (kustomization,) = yaml.safe_load_all((tmp_path / "k8s/kustomization.yaml").read_text())
    manifests_written = {n for n in names if n.endswith(".yaml")} - {
        "kustomization.yaml", "prometheus-adapter-values.yaml"}
    assert set(kustomization["resources"]) == manifests_written
    for name in manifests_written:
        for resource in yaml.safe_load_all((tmp_path / "k8s" / name).read_text()):
            assert resource["metadata"].get("namespace", "cinema") == "cinema"
    assert (tmp_path / "k8s/admin-token.yaml").stat().st_mode & 0o077 == 0
    (values,) = yaml.safe_load_all((tmp_path / "k8s/prometheus-adapter-values.yaml").read_text())
    assert values["rules"]["custom"] == [adapter_rule(OPTIONS)]


def test_the_cli_writes_the_folder(gpu_repository, tmp_path, capsys):
    from cinema_trt.cli.main import main

    assert main(["deploy", "kubernetes", "--repository", str(gpu_repository),
                 "--model-store", "pvc:models", "-o", str(tmp_path / "k8s"),
                 "--replicas", "2"]) == 0
    assert "kubectl apply -k" in capsys.readouterr().out
    (deployment,) = yaml.safe_load_all((tmp_path / "k8s/deployment.yaml").read_text())
    assert deployment["spec"]["replicas"] == 2
    assert main(["deploy", "kubernetes", "--repository", str(tmp_path / "nothing"),
                 "--model-store", "pvc:models", "-o", str(tmp_path / "k8s2")]) == 2

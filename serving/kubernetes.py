"""Kubernetes manifests for N replicas of a model repository (`cinema-trt deploy kubernetes`):
plain YAML in a Kustomize folder (`kubectl apply -k <folder>`), one resource kind a file.

    namespace.yaml      the namespace
    admin-token.yaml    Secret: the `cinema-admin` token (model control, HTTP inference)
    deployment.yaml     the replicas: `cinema-trt serve` in the serving image (stub
                        watchdog, drain), GPUs, the model store, the three probes
    service.yaml        ClusterIP (http 8000, grpc 8001 as h2c, metrics 8002) + headless
    grpcroute.yaml      Gateway API GRPCRoute: per-request (L7) balancing over ready pods
    servicemonitor.yaml Prometheus Operator: scrape 8002/metrics
    hpa.yaml            HorizontalPodAutoscaler on queue time per request (custom metric)
    pdb.yaml            PodDisruptionBudget: one replica down at a time
    prometheus-adapter-values.yaml   the adapter rule that makes the HPA's metric (Helm
                        values of prometheus-community/prometheus-adapter; not applied here)
    Dockerfile          the serving image (serving/deployment.py)

Why the probes are the truth: readiness is Triton's /v2/health/ready with the stub watchdog
unloading any model whose stub is dead or missing (red within 0.5 s), so the Service and the
Gateway drop a replica that cannot serve. A pod's Python-backend stubs die and come back
without a restart (readiness red, liveness green); tritonserver itself crashing ends the
container (`--max-restarts 0`) and the kubelet restarts it, the startup probe covering the
load. Termination drains: SIGTERM turns readiness red, refuses new requests and lets the
running generations finish (`drain_s`) before the server stops, within the grace period.

Over 300 lines on purpose: one short builder per resource kind above, and they share the
labels, ports and options, so the deployment reads as one document set, as it is applied.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

from cinema_trt.serving import protocol
from cinema_trt.serving.deployment import RepositoryNeeds, ServingImage
from cinema_trt.serving.server import REMOTE_REPOSITORY_SCHEMES, ServerConfig

LOG = logging.getLogger(__name__)
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's, named as probes use them
MOUNT = "/models"
GPU = "nvidia.com/gpu"  # the NVIDIA device plugin's resource
QUEUE_METRIC = "cinema_queue_time_us"  # the adapter's name for the HPA's metric
# what clients call through the route: the streamed generation and the checks before it
CLIENT_METHODS = ("ServerLive", "ServerReady", "ModelReady", "ModelMetadata", "ModelStreamInfer")


@dataclass(frozen=True)
class KubernetesOptions:
    # where the pods read the repository: pvc:<claim>[/<sub folder>], nfs:<server>:<path>,
    # or an s3:// gs:// as:// URL that Triton downloads itself
    model_store: str
    name: str = "cinema-triton"
    namespace: str = "cinema"
    replicas: int = 2
    max_replicas: int = 0  # the autoscaler's ceiling; 0: twice `replicas`
    image_repository: str = "cinema-triton"  # the serving image is <this>:<derived tag>
    triton_release: str | None = None  # None: the one the repository's plans need
    gateway: str = "cinema-gateway"  # the Gateway (its owner's) the GRPCRoute attaches to
    gateway_namespace: str | None = None
    hostname: str | None = None  # the route's host name (None: any)
    storage_secret: str | None = None  # Secret with the object store's credentials
    admin_secret: str | None = None  # an existing Secret (key `token`); None: write one
    prometheus_release: str = "prometheus"  # kube-prometheus-stack selects `release: <it>`
    target_queue_ms: float = 100.0  # the HPA adds replicas above this queue time
    drain_s: float = protocol.GENERATION_TIMEOUT_S  # running generations may finish
    cpu: str = "8"
    memory: str = "64Gi"  # paper scale: 33 GiB of fp16 weights pass host memory at load
    shm: str = "4Gi"  # /dev/shm carries every tensor between server and stubs
    cpu_only: bool = False  # allow a repository that places no model on a GPU

    def __post_init__(self):
        if self.replicas < 1 or self.max_replicas < 0:
            raise ValueError(f"replicas={self.replicas} must be >= 1 and max_replicas="
                             f"{self.max_replicas} >= 0")
        if self.max_replicas and self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas={self.max_replicas} is below replicas="
                             f"{self.replicas}")
        _store(self.model_store)  # fail now, naming the forms


def _store(text: str) -> tuple[str, dict | None]:
    """(the `--repository` the server gets, the volume holding it or None)."""
    if text.startswith(REMOTE_REPOSITORY_SCHEMES):
        return text, None
    kind, _, rest = text.partition(":")
    if kind == "pvc" and rest:
        claim, _, sub = rest.partition("/")
        return f"{MOUNT}/{sub}".rstrip("/"), {"persistentVolumeClaim": {
            "claimName": claim, "readOnly": True}}
    if kind == "nfs" and ":" in rest:
        server, path = rest.split(":", 1)
        return MOUNT, {"nfs": {"server": server, "path": path, "readOnly": True}}
    raise ValueError(f"model store {text!r}: use pvc:<claim>[/<folder>], nfs:<server>:<path>, "
                     f"or a {'/'.join(REMOTE_REPOSITORY_SCHEMES)} URL")


def _gpu_count(needs: RepositoryNeeds, options: KubernetesOptions) -> int:
    if not needs.gpus:
        if options.cpu_only:
            return 0
        raise ValueError("the repository places no model on a GPU, so its pods would request "
                         "none; rebuild it with `cinema-trt repo --gpus 0` (or pass "
                         "--cpu-only to deploy it on CPUs)")
    if needs.gpus != tuple(range(len(needs.gpus))):
        raise ValueError(f"the repository places models on GPUs {list(needs.gpus)}, but a pod "
                         f"sees its GPUs numbered from 0; rebuild it with --gpus "
                         f"{','.join(map(str, range(len(needs.gpus))))}")
    return len(needs.gpus)


def _labels(options: KubernetesOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": options.name, "app.kubernetes.io/part-of": "cinema-trt"}


def _meta(options: KubernetesOptions, name: str | None = None, **extra) -> dict:
    return {"name": name or options.name, "namespace": options.namespace,
            "labels": {**_labels(options), **extra}}


def _probe(path: str, period: int, failures: int) -> dict:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
            "failureThreshold": failures, "timeoutSeconds": min(period, 5)}


def _affinity(targets: tuple[str, ...]) -> dict:
    """Only nodes whose GPU runs the plans (labels of NVIDIA's GPU feature discovery)."""
    terms = [{"matchExpressions": [
        {"key": "nvidia.com/gpu.compute.major", "operator": "In", "values": [t[2:-1]]},
        {"key": "nvidia.com/gpu.compute.minor", "operator": "In", "values": [t[-1]]}]}
        for t in targets]
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": terms}}}


def _container(needs: RepositoryNeeds, image: ServingImage, options: KubernetesOptions,
               server: ServerConfig, gpus: int) -> dict:
    repository, _ = _store(options.model_store)
    env = [{"name": "CINEMA_ADMIN_TOKEN", "valueFrom": {"secretKeyRef": {
               "name": options.admin_secret or f"{options.name}-admin", "key": "token"}}},
           {"name": protocol.REPLICA_VARIABLE, "valueFrom": {"fieldRef": {
               "fieldPath": "metadata.name"}}}]
    mounts: list[dict] = [{"name": "shm", "mountPath": "/dev/shm"}]
    container: dict = {"name": "triton", "image": image.tag, "command": ["cinema-trt", "serve"]}
    if not repository.startswith(REMOTE_REPOSITORY_SCHEMES):
        mounts.append({"name": "models", "mountPath": MOUNT, "readOnly": True})
    elif repository.startswith("gs://"):  # Triton reads a key file for Google Cloud Storage
        env.append({"name": "GOOGLE_APPLICATION_CREDENTIALS",
                    "value": "/var/run/secrets/model-store/key.json"})
        mounts.append({"name": "model-store-key", "mountPath": "/var/run/secrets/model-store",
                       "readOnly": True})
    elif options.storage_secret:  # s3, Azure: variables (AWS_ACCESS_KEY_ID, ...)
        container["envFrom"] = [{"secretRef": {"name": options.storage_secret}}]
    resources: dict[str, dict[str, str | int]] = {
        "requests": {"cpu": options.cpu, "memory": options.memory},
        "limits": {"memory": options.memory}}
    if gpus:
        resources["requests"][GPU] = resources["limits"][GPU] = gpus
    return {**container, "args": [
        "--repository", repository, "--host", "0.0.0.0",
        *(a for name, port in PORTS.items() for a in (f"--{name}-port", str(port))),
        # a crash ends the container: the kubelet restarts it, the startup probe covers the
        # load (an in-container restart would fail the liveness probe meanwhile)
        "--max-restarts", "0", "--startup-timeout", f"{server.startup_timeout:.0f}",
        "--drain-timeout", f"{options.drain_s:.0f}", "--stop-timeout",
        f"{server.stop_timeout:.0f}"],
        "ports": [{"name": name, "containerPort": port} for name, port in PORTS.items()],
        "env": env, "resources": resources, "volumeMounts": mounts,
        # the model loads for minutes: 10 s x ceil(startup_timeout / 10) before liveness
        "startupProbe": _probe("/v2/health/ready", 10, math.ceil(server.startup_timeout / 10)),
        # red within 0.5 s of a dead stub (watchdog): out of the Service within 2 s
        "readinessProbe": _probe("/v2/health/ready", 2, 1),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "securityContext": {"allowPrivilegeEscalation": False}}


def deployment(needs: RepositoryNeeds, image: ServingImage, options: KubernetesOptions) -> dict:
    server = ServerConfig(MOUNT)
    gpus = _gpu_count(needs, options)
    _, volume = _store(options.model_store)
    volumes: list[dict] = [{"name": "shm", "emptyDir": {"medium": "Memory",
                                                        "sizeLimit": options.shm}}]
    if volume is not None:
        volumes.append({"name": "models", **volume})
    elif options.model_store.startswith("gs://"):
        volumes.append({"name": "model-store-key", "secret": {
            "secretName": options.storage_secret or f"{options.name}-model-store"}})
    pod: dict = {
        # the drain, then tritonserver's own stop, then a margin
        "terminationGracePeriodSeconds": math.ceil(options.drain_s + server.stop_timeout + 30),
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
        "containers": [_container(needs, image, options, server, gpus)],
        "volumes": volumes}
    if gpus:
        pod["tolerations"] = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    if needs.targets:
        pod["affinity"] = _affinity(needs.targets)
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _meta(options, **{"app.kubernetes.io/component": "server"}),
            "spec": {"replicas": options.replicas,
                     "selector": {"matchLabels": _labels(options)},
                     # a replacement is ready before a replica goes: capacity never dips
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {
                         "maxSurge": 1, "maxUnavailable": 0}},
                     "template": {"metadata": {"labels": _labels(options)}, "spec": pod}}}


def services(options: KubernetesOptions) -> list[dict]:
    protocols = {"http": "http", "grpc": "kubernetes.io/h2c", "metrics": "http"}
    ports = [{"name": name, "port": port, "targetPort": name, "appProtocol": protocols[name]}
             for name, port in PORTS.items()]
    cluster = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(options),
               "spec": {"selector": _labels(options), "ports": ports}}
    # for clients that balance themselves (gRPC `dns:///...` with round_robin)
    headless = {"apiVersion": "v1", "kind": "Service",
                "metadata": _meta(options, f"{options.name}-headless"),
                "spec": {"clusterIP": "None", "selector": _labels(options),
                         "ports": [p for p in ports if p["name"] == "grpc"]}}
    return [cluster, headless]


def grpc_route(options: KubernetesOptions) -> dict:
    parent = {"name": options.gateway, **({"namespace": options.gateway_namespace}
                                          if options.gateway_namespace else {})}
    spec: dict = {"parentRefs": [parent], "rules": [{
        "matches": [{"method": {"type": "Exact", "service": "inference.GRPCInferenceService",
                                "method": method}} for method in CLIENT_METHODS],
        "backendRefs": [{"name": options.name, "port": PORTS["grpc"]}]}]}
    if options.hostname:
        spec["hostnames"] = [options.hostname]
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": _meta(options), "spec": spec}


def service_monitor(options: KubernetesOptions) -> dict:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": _meta(options, release=options.prometheus_release),
            "spec": {"selector": {"matchLabels": _labels(options)},
                     "namespaceSelector": {"matchNames": [options.namespace]},
                     "endpoints": [{"port": "metrics", "path": "/metrics",
                                    "interval": "15s"}]}}


def autoscaler(options: KubernetesOptions) -> dict:
    ceiling = options.max_replicas or 2 * options.replicas
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": _meta(options),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": options.name},
                     "minReplicas": options.replicas, "maxReplicas": ceiling,
                     "metrics": [{"type": "Pods", "pods": {
                         "metric": {"name": QUEUE_METRIC},
                         "target": {"type": "AverageValue",
                                    "averageValue": str(round(options.target_queue_ms * 1000))}}}],
                     # a replica loads for minutes and a generation runs for minutes:
                     # remove replicas only after the load stayed low for a drain's time
                     "behavior": {"scaleDown": {
                         "stabilizationWindowSeconds": math.ceil(options.drain_s)}}}}


def disruption_budget(options: KubernetesOptions) -> dict:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _meta(options),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(options)}}}


def adapter_rule(options: KubernetesOptions) -> dict:
    """prometheus-adapter's rule: Triton's queue time per request over 30 s, per pod."""
    series = f'nv_inference_queue_duration_us{{namespace="{options.namespace}",pod!=""}}'
    query = ("avg(delta(nv_inference_queue_duration_us{<<.LabelMatchers>>}[30s])/"
             "(1+delta(nv_inference_request_success{<<.LabelMatchers>>}[30s]))) "
             "by (<<.GroupBy>>)")
    return {"seriesQuery": series,
            "resources": {"overrides": {"namespace": {"resource": "namespace"},
                                        "pod": {"resource": "pod"}}},
            "name": {"matches": "nv_inference_queue_duration_us", "as": QUEUE_METRIC},
            "metricsQuery": query}


def manifests(needs: RepositoryNeeds, image: ServingImage, options: KubernetesOptions,
              admin_token: str | None = None) -> dict[str, list[dict]]:
    """File name -> the resources it holds (pure: tests read these)."""
    files: dict[str, list[dict]] = {
        "namespace.yaml": [{"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": options.namespace, "labels": _labels(options)}}]}
    if options.admin_secret is None:
        files["admin-token.yaml"] = [{
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(options, f"{options.name}-admin"),
            "stringData": {"token": admin_token or secrets.token_hex(16)}}]
    files.update({"deployment.yaml": [deployment(needs, image, options)],
                  "service.yaml": services(options),
                  "grpcroute.yaml": [grpc_route(options)],
                  "servicemonitor.yaml": [service_monitor(options)],
                  "hpa.yaml": [autoscaler(options)],
                  "pdb.yaml": [disruption_budget(options)]})
    return files


HEADERS = {
    "namespace.yaml": "The namespace of the CINEMA replicas.",
    "admin-token.yaml": "The `cinema-admin` token (model control, HTTP inference). Generated at "
                        "random:\n# keep this file out of version control.",
    "deployment.yaml": "The CINEMA replicas: `cinema-trt serve` (Triton, the stub watchdog, the "
                       "drain) on GPUs.",
    "service.yaml": "In-cluster endpoints; the Gateway routes gRPC to the ready pods behind them.",
    "grpcroute.yaml": "Gateway API: each gRPC call (not each connection) to a ready replica.",
    "servicemonitor.yaml": "Prometheus Operator: scrape Triton's metrics (port 8002).",
    "hpa.yaml": "More replicas when requests queue (metric from prometheus-adapter-values.yaml).",
    "pdb.yaml": "Voluntary disruptions (node drains) take one replica at a time.",
}


def _dump(documents: list[dict], header: str) -> str:
    body = "---\n".join(yaml.safe_dump(d, sort_keys=False, default_flow_style=False)
                        for d in documents)
    return f"# {header}\n# Written by `cinema-trt deploy kubernetes`.\n{body}"


def write_kubernetes(repository: str | Path, out: str | Path, options: KubernetesOptions,
                     ) -> list[Path]:
    """Read `repository`, then write its manifests, the adapter rule, the image's
    Dockerfile and the kustomization into `out`; returns the files written."""
    from cinema_trt.serving.deployment import read_repository, serving_image

    needs = read_repository(repository)
    if needs.links:
        LOG.warning("%s links %d files from outside it (built without --copy-weights): copy "
                    "it to %s with the links followed (rsync -L; aws s3 sync follows them), "
                    "or rebuild it with --copy-weights", repository, needs.links,
                    options.model_store)
    image = serving_image(needs, options.image_repository, options.triton_release)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = manifests(needs, image, options)
    texts = {name: _dump(documents, HEADERS[name]) for name, documents in files.items()}
    texts.update({
        "kustomization.yaml": _dump([{"apiVersion": "kustomize.config.k8s.io/v1beta1",
                                      "kind": "Kustomization", "resources": list(files)}],
                                    "kubectl apply -k <this folder>"),
        "prometheus-adapter-values.yaml": _dump(
            [{"rules": {"custom": [adapter_rule(options)]}}],
            "Helm values of prometheus-community/prometheus-adapter: the HPA's "
            f"{QUEUE_METRIC} per pod"),
        "Dockerfile": image.dockerfile(),
        ".gitignore": "admin-token.yaml\n",
    })
    for name, text in texts.items():
        (out / name).write_text(text)
        if name == "admin-token.yaml":
            (out / name).chmod(0o600)
    return [out / name for name in texts]

"""`cinema-trt deploy`: scale a model repository out to replicas behind an L7 balancer.

    cinema-trt deploy kubernetes --repository models --model-store pvc:cinema-models -o k8s
    cinema-trt deploy local --repository models --replicas 3      # root: test hosts here
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from .options import defaults, from_args

log = logging.getLogger(__name__)


def _kubernetes(subparsers) -> None:
    from cinema_trt.serving.kubernetes import KubernetesOptions

    p = subparsers.add_parser(
        "kubernetes", help="write Kubernetes manifests for N replicas of a repository",
        description="Reads the repository (GPU placement, engine manifests) and writes a "
                    "Kustomize folder: Deployment, Services, GRPCRoute, ServiceMonitor, HPA, "
                    "PodDisruptionBudget, admin-token Secret, the prometheus-adapter rule and "
                    "the serving image's Dockerfile. Apply with `kubectl apply -k <folder>`.")
    p.add_argument("--repository", type=Path, required=True,
                   help="the model repository (cinema-trt repo; --copy-weights for a copy)")
    p.add_argument("--model-store", required=True,
                   help="where the pods read it: pvc:<claim>[/<folder>], nfs:<server>:<path>, "
                        "or an s3:// gs:// as:// URL")
    p.add_argument("-o", "--output", type=Path, required=True, help="manifest folder")
    p.add_argument("--replicas", type=int, help="replicas (the autoscaler's floor)")
    p.add_argument("--max-replicas", type=int, help="the autoscaler's ceiling (0: 2x)")
    p.add_argument("--name", help="name of the Deployment and Services")
    p.add_argument("--namespace")
    p.add_argument("--image-repository", help="where the serving image is pushed")
    p.add_argument("--triton-release", help="NGC release (yy.mm); default: the one the "
                                            "repository's TensorRT plans need")
    p.add_argument("--gateway", help="the Gateway the GRPCRoute attaches to")
    p.add_argument("--gateway-namespace")
    p.add_argument("--hostname", help="the route's host name")
    p.add_argument("--storage-secret", help="Secret with the object store's credentials")
    p.add_argument("--admin-secret", help="an existing Secret (key `token`) instead of a new "
                                          "random token")
    p.add_argument("--prometheus-release", help="`release` label the ServiceMonitor carries")
    p.add_argument("--target-queue-ms", type=float,
                   help="queue time per request above which the HPA adds replicas")
    p.add_argument("--drain-s", type=float,
                   help="seconds a terminating pod lets running generations finish")
    p.add_argument("--cpu")
    p.add_argument("--memory")
    p.add_argument("--shm", help="size of /dev/shm (tensors between server and stubs)")
    p.add_argument("--cpu-only", action="store_true",
                   help="accept a repository that places no model on a GPU")
    p.set_defaults(func=run_kubernetes, **defaults(KubernetesOptions))


def run_kubernetes(args: argparse.Namespace) -> int:
    from cinema_trt.serving.kubernetes import KubernetesOptions, write_kubernetes

    written = write_kubernetes(args.repository, args.output, from_args(KubernetesOptions, args))
    for path in written:
        print(path)
    image = next(p for p in written if p.name == "Dockerfile").read_text().splitlines()[2]
    print(f"next: {image.lstrip('# ')}; copy the repository to {args.model_store}; "
          f"kubectl apply -k {args.output}")
    return 0


def _local(subparsers) -> None:
    from cinema_trt.serving.replicas import ReplicaSetConfig

    p = subparsers.add_parser(
        "local", help="serve N replicas on test hosts of this machine behind HAProxy (root)",
        description="Each replica is `cinema-trt serve` in a network namespace with its own "
                    "address; HAProxy balances gRPC over the ready ones. Prints the address "
                    "for `cinema-trt generate --url`; Ctrl-C stops and removes everything.")
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--replicas", type=int)
    p.add_argument("--port", type=int, default=0, help="the balancer's port (0: a free one)")
    p.add_argument("--startup-timeout", type=float)
    p.set_defaults(func=run_local, **defaults(ReplicaSetConfig))


def run_local(args: argparse.Namespace) -> int:
    from cinema_trt.serving.balancer import BalancerConfig
    from cinema_trt.serving.replicas import ReplicaSet, ReplicaSetConfig

    config = from_args(ReplicaSetConfig, args,
                       balancer=BalancerConfig(port=args.port))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ReplicaSet(config) as replicas:
        print(f"grpc: {replicas.url}", flush=True)
        for replica in replicas.replicas:
            print(f"replica {replica.name}: {replica.grpc}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            log.info("Ctrl-C: stopping the replicas")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("deploy", help="replicas behind an L7 balancer: Kubernetes "
                                             "manifests, or test hosts on this machine")
    targets = p.add_subparsers(dest="target", required=True)
    _kubernetes(targets)
    _local(targets)

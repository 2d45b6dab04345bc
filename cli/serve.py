"""`cinema-trt serve`: run Triton Inference Server on a model repository until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cinema_trt.serving.server import TritonServer

log = logging.getLogger(__name__)


def print_endpoints(server: TritonServer) -> None:
    # stdout, not the log: scripts read these lines to find the ports
    endpoints = server.endpoints
    print(f"grpc: {endpoints.grpc}", flush=True)
    print(f"http: {endpoints.http}", flush=True)
    print(f"metrics: {endpoints.metrics}", flush=True)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("serve", help="serve a model repository with Triton")
    p.add_argument("--repository", type=Path, required=True,
                   help="model repository folder (cinema-trt repo)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--grpc-port", type=int, default=0, help="0: a free port")
    p.add_argument("--http-port", type=int, default=0, help="0: a free port")
    p.add_argument("--metrics-port", type=int, default=0, help="0: a free port")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds")
    p.add_argument("--log-verbose", type=int, default=0, help="Triton's verbosity level")
    p.add_argument("--tritonserver", help="server binary (default: $TRITONSERVER, PATH, "
                                          "or the nvidia-pytriton wheel)")
    p.add_argument("--admin-token", help="value of the `cinema-admin` header that unlocks "
                   "model control and HTTP inference (default: $CINEMA_ADMIN_TOKEN, else a "
                   "random token nobody outside knows)")
    p.add_argument("--max-restarts", type=int, default=5,
                   help="restarts after crashes within 10 minutes before giving up")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cinema_trt.serving.server import ServerConfig, ServerError
    from cinema_trt.serving.supervisor import RestartPolicy, serve_forever

    config = ServerConfig(
        repository=args.repository, host=args.host, http_port=args.http_port,
        grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        startup_timeout=args.startup_timeout, log_verbose=args.log_verbose,
        log_level=logging.INFO, executable=args.tritonserver,
        admin_token=args.admin_token or os.environ.get("CINEMA_ADMIN_TOKEN"))
    try:
        return serve_forever(config, on_ready=print_endpoints,
                             policy=RestartPolicy(max_restarts=args.max_restarts))
    except ServerError as error:
        log.error("%s", error)
        return 1

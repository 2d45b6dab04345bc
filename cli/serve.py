"""`cinema-trt serve`: run Triton Inference Server on a model repository until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

from .options import defaults, from_args

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
    from cinema_trt.serving.server import ServerConfig, repository_location
    from cinema_trt.serving.supervisor import RestartPolicy

    p = subparsers.add_parser("serve", help="serve a model repository with Triton")
    p.add_argument("--repository", required=True, type=repository_location,
                   help="model repository folder (cinema-trt repo), or an s3:// gs:// as:// "
                        "URL that tritonserver reads itself (built with --copy-weights)")
    p.add_argument("--host", help="address to listen on (default %(default)s)")
    p.add_argument("--grpc-port", type=int, help="0: a free port")
    p.add_argument("--http-port", type=int, help="0: a free port")
    p.add_argument("--metrics-port", type=int, help="0: a free port")
    p.add_argument("--startup-timeout", type=float,
                   help="seconds for every model to load (default %(default)s)")
    p.add_argument("--log-verbose", type=int, help="Triton's verbosity level")
    p.add_argument("--tritonserver", help="server binary (default: $TRITONSERVER, PATH, "
                                          "or the nvidia-pytriton wheel)")
    p.add_argument("--admin-token", help="value of the `cinema-admin` header that unlocks "
                   "model control and HTTP inference (default: $CINEMA_ADMIN_TOKEN, else a "
                   "random token nobody outside knows)")
    p.add_argument("--replica", help="the name responses give this server, which clients "
                                      "name when it fails (default: $CINEMA_REPLICA, else "
                                      "the host name)")
    p.add_argument("--drain-timeout", type=float,
                   help="seconds SIGTERM lets running generations finish, refusing new ones "
                        "(default %(default)s)")
    p.add_argument("--stop-timeout", type=float,
                   help="seconds tritonserver gets to exit after the drain before it is "
                        "killed (default %(default)s)")
    p.add_argument("--max-restarts", type=int,
                   help="restarts after crashes within 10 minutes before giving up")
    p.set_defaults(func=run, **defaults(ServerConfig), **defaults(RestartPolicy))


def run(args: argparse.Namespace) -> int:
    from cinema_trt.serving.server import ServerConfig, ServerError
    from cinema_trt.serving.supervisor import RestartPolicy, serve_forever

    config = from_args(ServerConfig, args, log_level=logging.INFO, executable=args.tritonserver,
                       admin_token=args.admin_token or os.environ.get("CINEMA_ADMIN_TOKEN"))
    try:
        return serve_forever(config, on_ready=print_endpoints,
                             policy=from_args(RestartPolicy, args))
    except ServerError as error:
        log.error("%s", error)
        return 1

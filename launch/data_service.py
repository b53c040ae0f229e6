#!/usr/bin/env python3
"""Run a tf.data service for imgtrain: a dispatcher, N workers, or both on this host.

    python launch/data_service.py --port 5050 --workers 2          # all on this host
    python launch/data_service.py --role dispatcher --port 5050    # one pod: the dispatcher
    python launch/data_service.py --role worker --dispatcher HOST:5050 --port 5051   # each worker pod

Trainers then read their training pipeline from it with
``--set data.service=grpc://HOST:5050``: decoding and augmentation run on the service's
workers, so CPU-poor GPU nodes are fed by CPU-rich ones. The servers run until the
process gets SIGINT or SIGTERM. ``--work-dir`` keeps the dispatcher's journal, so a
restarted dispatcher picks up where it was (fault-tolerant mode).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=("all", "dispatcher", "worker"), default="all")
    p.add_argument("--port", type=int, default=5050, help="the dispatcher's port (role worker: this worker's)")
    p.add_argument("--workers", type=int, default=2, help="role all: how many workers to start beside it")
    p.add_argument("--dispatcher", help="role worker: the dispatcher's HOST:PORT")
    p.add_argument("--worker-host", default=socket.gethostname(), help="how trainers reach this worker")
    p.add_argument("--work-dir", help="dispatcher journal directory (fault-tolerant mode)")
    p.add_argument(
        "--worker-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="dispatcher: a worker silent this long is dropped and its work given to the others (default 10)",
    )
    args = p.parse_args(argv)
    if args.role == "worker" and not args.dispatcher:
        p.error("--role worker needs --dispatcher HOST:PORT")
    if not 0 < args.port < 65536 or args.workers < 0:
        p.error("--port must be 1-65535 and --workers 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    service = tf.data.experimental.service
    servers = []
    if args.role in ("all", "dispatcher"):
        config = service.DispatcherConfig(
            port=args.port,
            work_dir=args.work_dir,
            fault_tolerant_mode=bool(args.work_dir),
            worker_timeout_ms=int(args.worker_timeout * 1000),
        )
        servers.append(service.DispatchServer(config))
        print(f"data service: dispatcher on grpc://{socket.gethostname()}:{args.port}", flush=True)
    dispatcher = args.dispatcher or f"localhost:{args.port}"
    ports = (
        [args.port]
        if args.role == "worker"
        else [free_port() for _ in range(args.workers if args.role == "all" else 0)]
    )
    for port in ports:
        host = args.worker_host if args.role == "worker" else "localhost"
        config = service.WorkerConfig(dispatcher_address=dispatcher, worker_address=f"{host}:{port}", port=port)
        servers.append(service.WorkerServer(config))
        print(f"data service: worker on {host}:{port} -> {dispatcher}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    for server in reversed(servers):
        if hasattr(server, "stop"):  # WorkerServer has stop(); the dispatcher ends with the process
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

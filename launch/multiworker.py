#!/usr/bin/env python3
"""Start N MultiWorkerMirroredStrategy workers on this host, each with its TF_CONFIG.

    python launch/multiworker.py --workers 2 -- imgtrain train --config cfg.yaml --output runs/x

Each worker gets free localhost ports and a TF_CONFIG naming all of them;
its output is streamed with a ``[worker i]`` prefix. If any worker fails, the
others are stopped (SIGTERM, then SIGKILL after --grace seconds) and the
launcher exits with the failed worker's code, so a dead worker never leaves
the rest hanging in a collective. SIGTERM or SIGINT to the launcher is passed
on to every worker, which stop together at one step and write a checkpoint
there (a worker that stops so, exit 143 or 130, is not a failure: the others
get --grace seconds to stop at the same step by themselves); the launcher then
prints every worker's last lines and exits 128 + the signal. Running the same
command again resumes from the last complete checkpoint.

The workers run in a session of their own, so a signal to the launcher's
process group (a terminal's Ctrl-C, ``kill -- -PGID``, ``tini -g``, Slurm's
``scancel``) reaches each worker once, from the launcher; the same signal again
within a second is the same request. A signal the launcher was started
ignoring (``nohup``, a background job) stays ignored. If the launcher itself is
killed (SIGKILL), its workers get SIGTERM (Linux): they stop at a step with a
checkpoint instead of training on without it.

On several nodes, start one worker per node yourself with the same cluster
list and that node's index, e.g. on node 1 of 2:

    TF_CONFIG='{"cluster": {"worker": ["node0:12345", "node1:12345"]},
                "task": {"type": "worker", "index": 1}}' imgtrain train ...
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Optional


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux; a common default elsewhere)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int, host: str, rng: Optional[random.Random] = None) -> list[int]:
    """``n`` distinct ports that are free now and lie outside the ephemeral range.

    Why not bind to port 0: the kernel then hands out an ephemeral port, and
    between our probe and the worker's own bind, any outgoing connection on
    the host (gRPC dialling a peer that is not up yet included) may be given
    that same port, and the worker dies with "address already in use". Ports
    outside the ephemeral range are never handed out that way.
    """
    rng = rng or random.Random()
    low, high = ephemeral_range()
    candidates = [p for p in range(10000, 65536) if not low <= p <= high]
    chosen: list[int] = []
    for port in rng.sample(candidates, len(candidates)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        chosen.append(port)
        if len(chosen) == n:
            return chosen
    raise RuntimeError(f"no {n} free ports outside the ephemeral range {low}-{high} on {host}")


def tf_config(hosts: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})


def resolve_command(cmd: list[str]) -> list[str]:
    """``imgtrain ...`` runs with this Python when no imgtrain script is on PATH."""
    if cmd and cmd[0] == "imgtrain" and shutil.which("imgtrain") is None:
        return [sys.executable, "-m", "imgtrain", *cmd[1:]]
    return cmd


def stream(prefix: str, pipe: IO[bytes], out: IO[str], lock: threading.Lock) -> None:
    """Copy a worker's output line by line with a prefix; progress-bar redraws keep their last state."""
    for raw in iter(pipe.readline, b""):
        text = raw.decode(errors="replace").rstrip("\n").split("\r")[-1]
        if text.strip():
            with lock:
                out.write(f"{prefix} {text}\n")
                out.flush()
    pipe.close()


# imgtrain's exit codes after SIGTERM and SIGINT: it wrote a checkpoint, and so will the others.
STOPPED_CODES = (128 + signal.SIGTERM, 128 + signal.SIGINT)


def wait_all(procs: list[subprocess.Popen], seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)


def stop_all(procs: list[subprocess.Popen], grace: float, sig: int = signal.SIGTERM) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    deadline = time.time() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


SAME_REQUEST_SECONDS = 1.0  # the same signal again within this is the same request


class Forwarder:
    """The launcher's SIGTERM and SIGINT: passed on to every worker, once per request, from the
    handler (which only sends, and never exits: the main loop waits for the workers' last
    lines). A signal ignored at the start stays ignored."""

    def __init__(self, procs: list[subprocess.Popen]) -> None:
        self.procs, self.signum, self.at = procs, 0, 0.0
        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, self.forward)

    def forward(self, signum: int, _frame: object) -> None:
        now = time.monotonic()
        if signum == self.signum and now - self.at < SAME_REQUEST_SECONDS:
            return  # the terminal's copy of one Ctrl-C, or a repeat: one request
        self.signum, self.at = self.signum or signum, now
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signum)  # Ctrl-C stays SIGINT for the workers (exit 130)
                except ProcessLookupError:
                    pass


def _die_with_parent() -> None:
    """In a worker, before it runs: SIGTERM when the launcher dies, however it dies (Linux's
    PR_SET_PDEATHSIG; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def launch(
    workers: int, cmd: list[str], host: str = "localhost", grace: float = 30.0, env: Optional[dict[str, str]] = None
) -> int:
    hosts = [f"{host}:{p}" for p in free_ports(workers, "127.0.0.1" if host == "localhost" else host)]
    base_env = dict(env or os.environ)
    base_env.setdefault("PYTHONUNBUFFERED", "1")
    procs: list[subprocess.Popen] = []
    for i in range(workers):
        worker_env = {**base_env, "TF_CONFIG": tf_config(hosts, i)}
        procs.append(
            subprocess.Popen(
                resolve_command(cmd),
                env=worker_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a signal to the launcher's group reaches the workers from it alone
                preexec_fn=_die_with_parent,  # before any thread starts: the streams start below
            )
        )
    forwarder = Forwarder(procs)
    lock = threading.Lock()
    threads = [
        threading.Thread(target=stream, args=(f"[worker {i}]", p.stdout, sys.stdout, lock), daemon=True)
        for i, p in enumerate(procs)
    ]
    for t in threads:
        t.start()
    code = supervise(procs, grace, lock, forwarder)
    for t in threads:
        t.join(timeout=5)
    return code


def supervise(procs: list[subprocess.Popen], grace: float, lock: threading.Lock, forwarder: Forwarder) -> int:
    """Wait for the workers; when one fails, stop the others; the launcher's exit code."""
    told_at = None
    while True:
        codes = [p.poll() for p in procs]
        if all(c == 0 for c in codes):
            return 0  # finished, even if a signal came as they did
        if all(c is not None for c in codes) and forwarder.signum:
            return 128 + forwarder.signum  # told to stop, and every worker has
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            i, c = failed[0]
            if c in STOPPED_CODES:  # told to stop: the others stop at the same step by themselves
                with lock:
                    print(f"[launcher] worker {i} stopped ({c}); waiting for the others to stop too", flush=True)
                wait_all(procs, grace)
            else:
                with lock:
                    print(f"[launcher] worker {i} exited with code {c}; stopping the others", flush=True)
            stop_all(procs, grace)
            if forwarder.signum:
                return 128 + forwarder.signum
            return c if c > 0 else 128 - c  # a signal -N becomes 128+N, as a shell reports it
        if forwarder.signum and told_at is None:
            told_at = time.monotonic()
        if told_at is not None and time.monotonic() - told_at > grace:
            stop_all(procs, 0.0, signal.SIGKILL)  # the grace period is over
        time.sleep(0.1)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print(
            "launch/multiworker.py: error: put the command after --, e.g. "
            "--workers 2 -- imgtrain train --config cfg.yaml",
            file=sys.stderr,
        )
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="launch/multiworker.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, required=True, help="number of worker processes on this host")
    parser.add_argument("--host", default="localhost", help="address the workers use to reach each other")
    parser.add_argument(
        "--grace", type=float, default=30.0, help="seconds a stopping worker gets to write its checkpoint (default 30)"
    )
    args = parser.parse_args(argv[:split])
    cmd = argv[split + 1 :]
    if args.workers < 1 or not cmd:
        print("launch/multiworker.py: error: need --workers >= 1 and a command after --", file=sys.stderr)
        return 2
    return launch(args.workers, cmd, args.host, args.grace)


if __name__ == "__main__":
    sys.exit(main())

"""A bucket on this machine measured as if it were a region away (``bench --latency-ms``): a TCP
proxy in a process of its own that holds every chunk a client sends (a request) for the given
milliseconds before passing it on; answers flow back at once. One request, one delay: what a
far endpoint adds to each call, the bandwidth left as it is. The proxy's own copying runs in its
process, so the bench's CPU figures are the client's alone.

Run as ``python latency.py HOST:PORT MS``; it prints the port it listens on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Iterator
from urllib.parse import urlsplit


@contextlib.contextmanager
def delayed(url: str, ms: float) -> Iterator[None]:
    """Within the block, calls to ``url``'s endpoint go through a proxy adding ``ms`` per request
    (nothing changes when ``ms`` is 0). The endpoint must be named by the scheme's variable."""
    if ms <= 0:
        yield
        return
    from imgtrain.errors import UserError
    from imgtrain.storage import urls

    name = urls.SCHEMES[urls.scheme_of(url)].endpoint or ""
    endpoint = os.environ.get(name, "")
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if not endpoint or parts.scheme != "http" or not parts.port:
        raise UserError(
            f"--latency-ms delays a server on this machine: set {name} to its http://HOST:PORT (it is "
            f"{endpoint or 'unset'})"
        )
    proxy = subprocess.Popen(
        [sys.executable, __file__, f"{parts.hostname}:{parts.port}", str(ms)],  # this file alone: no imgtrain
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(proxy.stdout.readline())  # type: ignore[union-attr]
        with variable(name, endpoint.replace(parts.netloc, f"127.0.0.1:{port}")):
            yield
    finally:
        proxy.kill()
        proxy.wait()


@contextlib.contextmanager
def variable(name: str, value: str) -> Iterator[None]:
    """The environment variable ``name`` set to ``value`` within the block, as it was after."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
    try:
        while chunk := src.recv(1 << 20):
            if delay:
                time.sleep(delay)
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def serve(upstream: tuple[str, int], delay: float) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        client, _ = listener.accept()
        server = socket.create_connection(upstream)
        for a, b, d in ((client, server, delay), (server, client, 0.0)):
            threading.Thread(target=_pump, args=(a, b, d), daemon=True).start()


if __name__ == "__main__":
    # Ctrl-C reaches the bench's whole process group: the bench ends the proxy, which says nothing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    host, port = sys.argv[1].rsplit(":", 1)
    serve((host, int(port)), float(sys.argv[2]) / 1000)

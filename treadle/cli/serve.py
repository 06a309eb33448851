"""``python -m treadle serve``: the web console on a local port, with a per-start access token."""

from __future__ import annotations

import argparse
import ipaddress
import socket
from typing import Any, TextIO

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8321


def add_arguments(c: argparse.ArgumentParser) -> None:
    """The options of ``serve`` (the parser comes from the CLI's ``cmd`` helper)."""
    c.add_argument("--host", default=DEFAULT_HOST,
                   help=f"interface to listen on (default {DEFAULT_HOST}: this machine only)")
    c.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="N",
                   help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    c.add_argument("--read-only", action="store_true", help="show everything, change nothing")
    c.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="also serve Prometheus metrics on :PORT/metrics (treadle[prometheus])")


def run(args: argparse.Namespace, runner: Any, url: str, stdin: TextIO, stdout: TextIO,
        stderr: TextIO) -> int:
    """Print the console's URL (with a fresh token), then serve until Ctrl-C."""
    from ..store.urls import mask_url
    from . import UsageError

    # main() refused a missing or foreign store before opening it (open_store(create=False)).
    try:
        import uvicorn

        from ..web import create_app
        from ..web.security import new_token
    except ImportError as exc:
        raise UsageError(f"the web console needs the web extra ({exc.name} is missing): "
                         "pip install 'treadle[web]'") from None
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise UsageError("--metrics-port must be a port number, 0-65535")
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    port = sock.getsockname()[1]
    token = new_token()
    app = create_app(runner.pipeline, runner.store, read_only=args.read_only, token=token)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    stdout.write(f"treadle console for pipeline {runner.pipeline.name!r} on {mask_url(url)}"
                 f"{' (read-only)' if args.read_only else ''}\n"
                 f"  open: http://{shown}:{port}/?token={token}\n")
    if not _loopback(args.host):
        stdout.write(f"  warning: listening on {args.host}; anyone who can reach this port and "
                     "learns the token can decide reviews. The token is sent in clear (no TLS).\n")
    metrics = None
    if args.metrics_port is not None:  # the store's gauges (and counters of this process)
        try:
            from ..contrib.prometheus import instrument as metrics_for
        except ImportError:
            raise UsageError("--metrics-port needs prometheus-client: "
                             "pip install 'treadle[prometheus]'") from None
        metrics = metrics_for(runner)
        stdout.write(f"  metrics: http://{shown}:{metrics.serve(args.metrics_port, args.host)}"
                     "/metrics\n")
    stdout.write("Ctrl-C stops it.\n")
    stdout.flush()
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if metrics is not None:
            metrics.close()
    return 0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # before the URL is printed: a client that is quick is queued, not refused
    sock.set_inheritable(True)
    return sock


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

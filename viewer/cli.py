"""`python -m engine view [runs/]`: serve the read-only run viewer on 127.0.0.1 and print its URL."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from engine.errors import SpecError


def add_view_command(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "view",
        help="a local web page to read runs' records and compare runs side by side (read-only)",
        description="Serve a read-only web view of every run under DIR: the run table, each stage's "
        "outcomes and records, and two runs' answers side by side.",
    )
    parser.add_argument("dir", nargs="?", type=Path, default=Path("runs"), help="folder searched for runs")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default 0: a free one)")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other than loopback: anyone who reaches it can read the records",
    )
    parser.set_defaults(func=cmd_view)
    return parser


def cmd_view(args: argparse.Namespace) -> int:
    if not args.dir.is_dir():
        raise SpecError(f"{args.dir}: no such folder; pass the folder that holds your runs, e.g. runs/")
    if not args.allow_remote and not is_loopback(args.host):
        raise SpecError(
            f"--host {args.host} is not a loopback address: anyone on that network could read the runs; "
            "add --allow-remote to serve it anyway"
        )
    if not 0 <= args.port <= 65535:
        raise SpecError(f"--port {args.port}: expected 0 (a free port) to 65535")
    try:
        asyncio.run(serve(args.dir, args.host, args.port))
    except KeyboardInterrupt:
        pass
    print("engine view: stopped", file=sys.stderr)
    return 0


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback one (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


async def serve(root: Path, host: str, port: int) -> None:
    from aiohttp import web

    from viewer.server import make_app

    runner = web.AppRunner(make_app(root), access_log=None, shutdown_timeout=1)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise SpecError(
            f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port, or 0 for a free one"
        ) from None
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    _say(f"engine view: {root} at http://{shown}:{bound_port}/  (read-only; Ctrl-C to stop)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _say(line: str) -> None:
    try:
        print(line, flush=True)
    except BrokenPipeError:  # nobody reads our output: keep serving
        sys.stdout = open("/dev/null", "w")  # noqa: SIM115 (lives as long as the process)

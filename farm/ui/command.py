"""`farm ui [--root DIR] [--port N] [--host H]`: serve the live web view with uvicorn."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

DEFAULT_ROOT = Path("renders")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8470


def register(subparsers) -> None:
    """Add the `ui` subcommand; its handler is stored as ``args.handler``."""
    parser = subparsers.add_parser(
        "ui", help="serve a read-only live web view of the runs in an output folder",
        description="Serve a web page that follows the runs under an output root: state, "
                    "progress, latest frame and preview, video, settings and errors. "
                    "Read-only; listens on 127.0.0.1 unless --host says otherwise.")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help=f"output root holding the runs (default: {DEFAULT_ROOT}/)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"TCP port (default: {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default: {DEFAULT_HOST}, this machine only)")
    parser.set_defaults(handler=run_ui)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); a UIError names what went wrong."""
    from farm.ui.app import UIError

    if not 0 <= port <= 65535:
        raise UIError(f"--port {port}: expected a port number in 0..65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UIError(f"--host {host}: cannot resolve it ({reason})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)  # connections queue from now on, even before uvicorn serves
    except OSError as exc:
        sock.close()
        raise UIError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def is_loopback(sock: socket.socket) -> bool:
    """True when the socket only accepts connections from this machine."""
    try:
        return ipaddress.ip_address(sock.getsockname()[0]).is_loopback
    except ValueError:
        return False


def page_url(sock: socket.socket) -> str:
    """http://host:port/ of a bound socket (IPv6 addresses in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run_ui(args) -> int:
    """Serve the web view until interrupted; returns the exit code."""
    import uvicorn

    from farm.ui.app import UIError, create_app

    root = Path(args.root)
    if root.exists() and not root.is_dir():
        raise UIError(f"--root {root}: is a file, not a folder of renders")
    if not root.is_dir():
        raise UIError(f"--root {root}: no such folder (render a scene first, or pass --root DIR)")
    # the Host header must name this machine (DNS rebinding): the loopback names, the
    # address a request came in on, and the --host given when it is a name or an address
    wildcard = args.host.strip("[]") in ("", "0.0.0.0", "::")
    app = create_app(root, allowed_hosts=() if wildcard else (args.host,))
    sock = bind_socket(args.host, args.port)
    print(f"farm ui: serving the runs in {root} at {page_url(sock)} (Ctrl+C stops)", flush=True)
    if not is_loopback(sock):
        print(f"farm ui: warning: listening on {args.host}: anyone who can reach this address "
              f"can see the renders", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it caught once it has stopped
        pass
    finally:
        sock.close()
    print("farm ui: stopped", flush=True)
    return 0

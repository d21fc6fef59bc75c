"""`lmscope lab`: start the local web laboratory on one model and print its address."""
from __future__ import annotations

import sys

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub) -> None:
    """Add `lab` to the `lmscope` parser's subparsers `sub`."""
    from lmscope.cli import _model_args
    p = sub.add_parser("lab", help="the local web laboratory: every view in a browser, offline")
    _model_args(p)
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--runs", default="runs", help="runs folder: cached results, SAEs, circuits, vectors (default runs)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only); anything else is reachable from "
                        "the network and prints a warning")
    p.set_defaults(func=cmd_lab)


def hosts_for(host: str, port: int) -> set[str]:
    from .security import allowed_hosts
    names = allowed_hosts(host, port)
    if host in ("0.0.0.0", "::"):
        import socket
        name = socket.gethostname()
        addresses = {name}
        try:
            addresses |= set(socket.gethostbyname_ex(name)[2])
        except OSError:
            pass
        names |= {f"{a}:{port}" for a in addresses} | allowed_hosts("127.0.0.1", port)
    return names


def cmd_lab(args) -> None:
    from lmscope.cli import _load
    from lmscope.errors import InputError
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be in 1..65535, got {args.port}")
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        raise InputError(f"the lab needs its extra: pip install 'lmscope[lab]' ({e.name} is missing)") from None
    if args.host not in LOOPBACK:
        print(f"lmscope lab: WARNING: binding {args.host}: anyone who can reach this machine on port {args.port} "
              f"can run the model and read the runs folder. Use the default 127.0.0.1 unless you mean it.",
              file=sys.stderr)
    model = _load(args)
    app = create_app(model, args.model, args.runs, hosts_for(args.host, args.port))
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"lmscope lab: {args.model} at http://{shown}:{args.port}/  (runs folder {args.runs}; Ctrl-C stops)",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)

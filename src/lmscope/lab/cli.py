"""`lmscope lab`: start the local web laboratory on one model and print its address.

The lab sits above the command line (it uses lmscope.cli.common), so lmscope.cli.main finds this module by name;
the web stack (lmscope.lab.app: Starlette, uvicorn) is an optional extra, imported only when the lab starts.
"""
from __future__ import annotations

import importlib
import socket
import sys

from lmscope.cli.common import load_model, model_options
from lmscope.core.errors import InputError
from lmscope.lab.security import allowed_hosts

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub) -> None:
    """Add `lab` to the `lmscope` parser's subparsers `sub`."""
    p = sub.add_parser("lab", help="the local web laboratory: every view in a browser, offline")
    model_options(p)
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--runs", default="runs", help="runs folder: cached results, SAEs, circuits, vectors (default runs)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only); anything else is reachable from "
                        "the network and prints a warning")
    p.set_defaults(func=cmd_lab)


def hosts_for(host: str, port: int) -> set[str]:
    """Host header values the lab answers when bound to `host` (all of this machine's names for 0.0.0.0 / ::)."""
    names = allowed_hosts(host, port)
    if host in ("0.0.0.0", "::"):
        name = socket.gethostname()
        addresses = {name}
        try:
            addresses |= set(socket.gethostbyname_ex(name)[2])
        except OSError:
            pass
        names |= {f"{a}:{port}" for a in addresses} | allowed_hosts("127.0.0.1", port)
    return names


def cmd_lab(args) -> None:
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be in 1..65535, got {args.port}")
    try:
        uvicorn = importlib.import_module("uvicorn")
        importlib.import_module("starlette")
    except ImportError as e:
        raise InputError(f"the lab needs its extra: pip install 'lmscope[lab]' ({e.name} is missing)") from None
    app = importlib.import_module("lmscope.lab.app")
    if args.host not in LOOPBACK:
        print(f"lmscope lab: WARNING: binding {args.host}: anyone who can reach this machine on port {args.port} "
              f"can run the model and read the runs folder. Use the default 127.0.0.1 unless you mean it.",
              file=sys.stderr)
    model = load_model(args)
    web = app.create_app(model, args.model, args.runs, hosts_for(args.host, args.port))
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"lmscope lab: {args.model} at http://{shown}:{args.port}/  (runs folder {args.runs}; Ctrl-C stops)",
          file=sys.stderr, flush=True)
    uvicorn.run(web, host=args.host, port=args.port, log_level="warning", access_log=False)

"""`coldint-validator hub serve DIR`: a model hub on 127.0.0.1 over a git mirror dir.

The mirror is the layout validator.adapters.hub.localhub.LocalHub (olah) serves: git repos at
`DIR/models/<org>/<name>` and `DIR/datasets/<org>/<name>`, branch `main` (what
`scripts/upload_model.py --hub local:DIR` and `coldint-validator demo` write). The command
prints the endpoint (and its port) and serves until SIGINT or SIGTERM, then stops olah:
no process is left behind.

`open_endpoint` is the same thing for one run of another command: `--hf-endpoint local:DIR`
starts a LocalHub for the run, a plain URL is used as it is.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

LOCAL_PREFIX = "local:"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class EndpointError(ValueError):
    """An endpoint spec that cannot be used; the message names it and why."""


def _noop() -> None:
    return None


def _mirror_dir(text: str, what: str) -> Path:
    path = Path(text).expanduser()
    if not text or not path.is_dir():
        raise EndpointError(f"{what}: {text or '(empty)'} is not a directory (a git mirror: models/<org>/<name>)")
    return path.resolve()


def open_endpoint(spec: str | None) -> tuple[str | None, Callable[[], None]]:
    """(endpoint URL, closer) for a hub spec: None -> (None, no-op: huggingface_hub's default);
    an http(s) URL -> itself; `local:DIR` -> a LocalHub started over the mirror DIR, and the
    closer stops it (call it once the run is over; calling it twice is safe)."""
    if spec is None or spec == "":
        return None, _noop
    if spec.startswith(LOCAL_PREFIX):
        from validator.adapters.hub.localhub import LocalHub, LocalHubError

        hub = LocalHub(_mirror_dir(spec[len(LOCAL_PREFIX):], spec))
        try:
            hub.start()
        except LocalHubError as e:
            raise EndpointError(f"{spec}: {e}") from e
        return hub.endpoint, hub.stop
    url = urlparse(spec)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise EndpointError(f"{spec!r}: expected an http(s):// URL or local:<mirror dir>")
    return spec.rstrip("/"), _noop


def serve(mirror: Path, port: int | None = None, out: Any = None,
          stop: threading.Event | None = None) -> int:
    """Serve `mirror` until SIGINT/SIGTERM (or `stop` is set); the exit status."""
    from validator.adapters.hub.localhub import LocalHub, LocalHubError

    out = out or sys.stdout
    stop = stop or threading.Event()
    hub = LocalHub(mirror, port=port)
    previous = {}
    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        try:
            hub.start()
        except LocalHubError as e:
            print(f"hub serve: error: {e}", file=sys.stderr)
            return EXIT_FAILED
        print(f"hub: serving {mirror} at {hub.endpoint} (port {hub.port}); Ctrl-C stops it", file=out)
        print(f"use it with: --hf-endpoint {hub.endpoint}  or  export HF_ENDPOINT={hub.endpoint}", file=out)
        out.flush()
        while not stop.wait(0.5):
            if not hub.running:
                print(f"hub serve: error: olah exited; log:\n{hub.log_tail()}", file=sys.stderr)
                return EXIT_FAILED
        print("hub: stopped", file=out)
        out.flush()
        return EXIT_OK
    finally:
        hub.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_hub_serve(args: argparse.Namespace) -> int:
    try:
        mirror = _mirror_dir(str(args.dir), "hub serve")
    except EndpointError as e:
        print(f"hub serve: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.port is not None and not 0 < args.port < 65536:
        print(f"hub serve: error: --port {args.port}: expected 1-65535", file=sys.stderr)
        return EXIT_BAD_INPUT
    return serve(mirror, args.port)


def register_hub_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add `hub` (with `hub serve DIR`) to a `coldint-validator` subparsers object; returns its parser."""
    p = subparsers.add_parser("hub", help="a local model hub: serve a git mirror dir on 127.0.0.1")
    sub = p.add_subparsers(dest="hub_command", required=True)
    s = sub.add_parser("serve", help="serve DIR (models/<org>/<name> git repos) with olah on 127.0.0.1",
                       description="Serve the git mirror DIR (the layout `upload_model --hub local:DIR` and "
                                   "`coldint-validator demo` write) as a Hugging Face hub on 127.0.0.1, until "
                                   "Ctrl-C or SIGTERM. Prints the endpoint to pass as --hf-endpoint / HF_ENDPOINT.",
                       epilog="exit status: 0 stopped by a signal; 1 olah failed; 2 bad input")
    s.add_argument("dir", type=Path, help="the mirror dir (e.g. demo/mirror)")
    s.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    s.add_argument("--log-level", default="WARNING", help="DEBUG | INFO | WARNING | ERROR (default: WARNING)")
    s.set_defaults(func=cmd_hub_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m validator.cli.hub serve DIR`: the same command outside coldint-validator."""
    parser = argparse.ArgumentParser(prog="coldint-validator")
    register_hub_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["hub", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

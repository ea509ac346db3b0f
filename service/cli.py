"""`pmerge serve` (registered through the `pmerge.commands` entry point) and `python -m service`.

CLI flags override the PMERGE_* environment (service/settings.py); unset flags leave it alone.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from models_store.cli import Command

# flag -> Settings field, for the flags that map one to one
FLAGS = {"store": "store", "family": "family", "device": "device", "dtype": "dtype", "host": "host", "port": "port",
         "max_batch": "max_batch", "max_wait_ms": "max_wait_ms", "queue_size": "queue_size",
         "cached_towers": "cached_towers"}


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--store", help="family store directory (env PMERGE_STORE)")
    parser.add_argument("--family", help="family id to serve (env PMERGE_FAMILY; default: the newest)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), help="env PMERGE_DEVICE (default auto)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"),
                        help="GPU dtype, env PMERGE_DTYPE (default bf16; the CPU always uses fp32)")
    parser.add_argument("--host", help="bind address, env PMERGE_HOST (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="env PMERGE_PORT (default 8000)")
    parser.add_argument("--max-batch", type=int, help="images per forward pass, env PMERGE_MAX_BATCH (default 64)")
    parser.add_argument("--max-wait-ms", type=float, help="batching window, env PMERGE_MAX_WAIT_MS (default 5)")
    parser.add_argument("--queue-size", type=int, help="queued images before 503, env PMERGE_QUEUE_SIZE (default 1024)")
    parser.add_argument("--cached-towers", type=int, help="materialised towers kept on the device (point-set "
                        "families), env PMERGE_CACHED_TOWERS (default 4)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def settings_from_args(args: argparse.Namespace) -> Any:
    from .settings import Settings
    overrides = {field: getattr(args, flag) for flag, field in FLAGS.items() if getattr(args, flag, None) is not None}
    return Settings(**overrides)  # init values win over PMERGE_* variables


def check(args: argparse.Namespace) -> None:
    """The settings are valid and the port is free (said before `pmerge demo` builds for minutes)."""
    from pydantic import ValidationError

    from .server import check_port_free
    try:
        settings = settings_from_args(args)
    except ValidationError as e:
        raise SystemExit(f"pmerge serve: error: invalid settings: {e}") from None
    try:
        check_port_free(settings.host, settings.port)
    except OSError as e:
        raise ValueError(e.strerror or str(e)) from None


def serve(args: argparse.Namespace) -> None:
    import uvicorn
    from pydantic import ValidationError

    from models_store import StoreError
    from models_store.store import family_path

    from .app import create_app
    from .server import check_port_free, uvicorn_config

    try:
        settings = settings_from_args(args)
    except ValidationError as e:
        raise SystemExit(f"pmerge serve: error: invalid settings: {e}") from None
    try:  # fail fast on a wrong store or family id, or a taken port; hashes are checked while loading
        path = family_path(settings.store, settings.family)
        check_port_free(settings.host, settings.port)
    except (StoreError, OSError) as e:
        raise SystemExit(f"pmerge serve: error: {e.strerror if isinstance(e, OSError) and e.strerror else e}") from None
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger(__name__).info("serving %s on http://%s:%d", path, settings.host, settings.port)
    app = create_app(settings)
    # one process per GPU: scale out with replicas, not uvicorn workers
    server = uvicorn.Server(uvicorn_config(app, settings, log_level=args.log_level))
    failure: list[str] = []

    def stop(error: str) -> None:  # a family that does not load is an exit, so compose and Kubernetes show it
        failure.append(error)
        server.should_exit = True

    app.state.on_load_failure = stop
    server.run()
    if failure:
        raise SystemExit(f"pmerge serve: error: could not load the family: {failure[0]}")
    if not server.started:
        raise SystemExit(f"pmerge serve: error: the server did not start on {settings.host}:{settings.port}")


COMMANDS = [Command("serve", "serve a family over HTTP (classify, download merged checkpoints)", add_serve_arguments,
                    serve, check=check)]

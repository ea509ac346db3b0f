"""`pmerge serve` (registered through the `pmerge.commands` entry point) and `python -m service`.

CLI flags override the PMERGE_* environment (service/settings.py); unset flags leave it alone.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from models_store.cli import Command
from models_store.flags import add_model_flags, describe_flags, model_values

from .settings import ENV_PREFIX, Settings

# the settings that are also flags; the others are environment variables only (README, Settings)
SERVE_FLAGS = ("store", "family", "device", "dtype", "host", "port", "max_batch", "max_wait_ms", "queue_size",
               "cached_towers", "families", "max_families")


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_model_flags(parser, {"serve": Settings}, include=SERVE_FLAGS, env_prefix=ENV_PREFIX)
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def settings_from_args(args: argparse.Namespace) -> Any:
    return Settings(**model_values(args, Settings))  # init values win over PMERGE_* variables


def check(args: argparse.Namespace) -> None:
    """The settings are valid and the port is free (said before `pmerge demo` builds for minutes)."""
    from pydantic import ValidationError

    from .server import check_port_free
    try:
        settings = settings_from_args(args)
    except ValidationError as e:
        raise SystemExit(f"pmerge serve: error: {describe_flags(e, ENV_PREFIX)}") from None
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
        raise SystemExit(f"pmerge serve: error: {describe_flags(e, ENV_PREFIX)}") from None
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

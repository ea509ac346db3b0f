"""`pmerge serve` (registered through the `pmerge.commands` entry point) and `python -m service`.

CLI flags override the PMERGE_* environment (service/settings.py); unset flags leave it alone.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from pydantic import BaseModel

from models_store.cli import Command
from models_store.flags import add_model_flags, describe_flags, model_values

from service.settings import ENV_PREFIX, GROUPS, Settings

# the settings that are also flags; the others are environment variables only (README, Settings)
SERVE_FLAGS = ("store", "family", "device", "dtype", "host", "port", "max_batch", "max_wait_ms", "queue_size",
               "device_cache_bytes", "cuda_graphs", "families", "max_families", "front_ends", "decode")
SETTINGS_MODELS: tuple[type[BaseModel], ...] = (Settings, *GROUPS.values())  # the flags' fields: top level and groups


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for model in SETTINGS_MODELS:
        add_model_flags(parser, {"serve": model}, include=SERVE_FLAGS, env_prefix=ENV_PREFIX)
    parser.add_argument("--fronts", dest="front_ends", type=int, default=None, help=argparse.SUPPRESS)  # the old
    # name of --front-ends ("front" means a Pareto front everywhere else), accepted until the next release
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    ray = parser.add_argument_group("Ray Serve (pip install 'pmerge[ray]')")
    ray.add_argument("--ray", action="store_true", help="serve on Ray Serve replicas (a local Ray cluster, or the one "
                                                        "RAY_ADDRESS names), each with its own engine")
    scale = ray.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, default=None, metavar="N", help="--ray: this many replicas (default 1)")
    scale.add_argument("--autoscale", default=None, metavar="MIN,MAX",
                       help="--ray: between MIN and MAX replicas, on ongoing requests per replica (a batch's worth)")
    ray.add_argument("--gpus-per-replica", type=float, default=None, metavar="G", help="--ray: GPUs each replica "
                                                                                        "reserves (default 0)")
    return parser


def ray_options(args: argparse.Namespace) -> dict:
    """--replicas / --autoscale / --gpus-per-replica as `application`'s arguments; refused without --ray."""
    given = [f for f, v in (("--replicas", args.replicas), ("--autoscale", args.autoscale),
                            ("--gpus-per-replica", args.gpus_per_replica)) if v is not None]
    if not args.ray:
        if given:
            raise SystemExit(f"pmerge serve: error: {', '.join(given)} need --ray")
        return {}
    options: dict = {"gpus_per_replica": args.gpus_per_replica or 0.0}
    if args.replicas is not None:
        if args.replicas < 1:
            raise SystemExit("pmerge serve: error: --replicas must be at least 1")
        options["replicas"] = args.replicas
    if args.autoscale is not None:
        try:
            low, high = (int(x) for x in args.autoscale.split(","))
        except ValueError:
            raise SystemExit(f"pmerge serve: error: --autoscale {args.autoscale!r}: expected MIN,MAX") from None
        if not 0 <= low <= high or high < 1:
            raise SystemExit(f"pmerge serve: error: --autoscale {args.autoscale!r}: need 0 <= MIN <= MAX, MAX >= 1")
        options["autoscale"] = (low, high)
    return options


def serve_on_ray(settings: Settings, options: dict) -> None:
    try:
        import ray
        from ray import serve

        from service.ray_serve import application
    except ImportError as e:
        raise SystemExit(f"pmerge serve: error: --ray needs Ray Serve: pip install 'pmerge[ray]' ({e})") from None
    ray.init()  # a local cluster, or the one RAY_ADDRESS names
    # SIGTERM (docker stop, Kubernetes) ends the deployment as Ctrl-C does, not leaving Ray's processes behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve.start(http_options={"host": settings.topology.host, "port": settings.topology.port})
        serve.run(application(settings, **options), name="pmerge", route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()


def settings_from_args(args: argparse.Namespace) -> Any:
    given = {k: v for model in SETTINGS_MODELS for k, v in model_values(args, model).items()}
    return Settings(**given)  # init values win over PMERGE_* variables


def check(args: argparse.Namespace) -> None:
    """The settings are valid and the port is free (said before `pmerge demo` builds for minutes)."""
    from pydantic import ValidationError

    from service.http.server import check_port_free
    try:
        settings = settings_from_args(args)
    except ValidationError as e:
        raise SystemExit(f"pmerge serve: error: {describe_flags(e, ENV_PREFIX, GROUPS)}") from None
    try:
        check_port_free(settings.topology.host, settings.topology.port)
    except OSError as e:
        raise ValueError(e.strerror or str(e)) from None


def serve(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from models_store import StoreError
    from models_store.store import family_path

    from service.http.server import check_port_free

    try:
        settings = settings_from_args(args)
    except ValidationError as e:
        raise SystemExit(f"pmerge serve: error: {describe_flags(e, ENV_PREFIX, GROUPS)}") from None
    options = ray_options(args)
    try:  # fail fast on a wrong store or family id, or a taken port; hashes are checked while loading
        path = family_path(settings.store, settings.family)
        check_port_free(settings.topology.host, settings.topology.port)
    except (StoreError, OSError) as e:
        raise SystemExit(f"pmerge serve: error: {e.strerror if isinstance(e, OSError) and e.strerror else e}") from None
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger(__name__).info("serving %s on http://%s:%d", path, settings.topology.host, settings.topology.port)
    if args.ray:  # each replica serves in its own process, Ray's proxies parse HTTP
        return serve_on_ray(settings, options)
    front_ends = settings.topology.front_end_count()
    if front_ends:
        from service.runtime.processes import serve_with_front_ends
        stopped = serve_with_front_ends(settings, front_ends, args.log_level)
        if stopped:
            raise SystemExit(f"pmerge serve: error: {stopped}")
        return
    import uvicorn

    from service.http.app import create_app
    from service.http.server import uvicorn_config
    app = create_app(settings)
    # one engine process per GPU: scale out with replicas
    server = uvicorn.Server(uvicorn_config(app, settings, log_level=args.log_level))
    failure: list[str] = []

    def stop(error: str) -> None:  # a family that does not load is an exit, so compose and Kubernetes show it
        failure.append(error)
        server.should_exit = True

    app.state.hooks.on_load_failure = stop
    server.run()
    if failure:
        raise SystemExit(f"pmerge serve: error: could not load the family: {failure[0]}")
    if not server.started:
        raise SystemExit(f"pmerge serve: error: the server did not start on {settings.topology.host}:{settings.topology.port}")


COMMANDS = [Command("serve", "serve a family over HTTP (classify, download merged checkpoints)", add_serve_arguments,
                    serve, check=check)]

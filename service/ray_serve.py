"""`pmerge serve --ray`: the same FastAPI app (service/http/app.py) on Ray Serve replicas.

Each replica builds the app (`@serve.ingress` with `__serve_build_asgi_app__`), so each owns one
engine and batches its own requests; the preference stays in the request. A replica takes
traffic once its default family is loaded. The family id is Serve's multiplexed model id: once a
request under /families/<id>/ has acquired its family, the app tells Serve that the replica holds
<id> (bounded by max_families, as the app's own resident families are), and a request with the header
`serve_multiplexed_model_id: <id>` (pmerge's client sends it) is routed to a replica holding it.
Every answer says which replica gave it (`X-Pmerge-Replica`).

Ray is an optional extra: `pip install 'pmerge[ray]'`. `ray/serve.yaml` is the same
deployment for `serve run` / KubeRay; `build` is its import path.
"""
from __future__ import annotations

from typing import Any, Optional

from ray import serve

from service.http.app import create_app
from service.settings import Settings

REPLICA_HEADER = b"x-pmerge-replica"


class NameReplica:
    """ASGI middleware: every response says which replica gave it."""

    def __init__(self, app, replica: str):
        self.app, self.replica = app, replica.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named(message):
            if message["type"] == "http.response.start":
                message = message | {"headers": [*message.get("headers", []), (REPLICA_HEADER, self.replica)]}
            await send(message)
        await self.app(scope, receive, named)


@serve.ingress()
class Replica:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.replica = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self):
        self.fastapi = create_app(self.settings)
        self.fastapi.state.hooks.load_before_serving = True

        @serve.multiplexed(max_num_models_per_replica=self.settings.caches.max_families)
        async def hold(family_id: str) -> str:  # the app calls it once the family is acquired: a known id
            return family_id
        self.fastapi.state.hooks.on_named_family = hold
        return NameReplica(self.fastapi, self.replica)

    def check_health(self) -> None:
        error = getattr(getattr(self.fastapi.state, "runtime", None), "error", None)
        if error:
            raise RuntimeError(f"could not load the family: {error}")


def application(settings: Settings, replicas: int = 1, autoscale: Optional[tuple[int, int]] = None,
                gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0) -> serve.Application:
    """The deployment: `replicas` replicas, or autoscaling between MIN and MAX on ongoing requests."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_gpus": gpus_per_replica, "num_cpus": cpus_per_replica},
        # a replica must be sent at least a whole batch to fill it; beyond its queue it answers 503 itself
        "max_ongoing_requests": settings.engine.max_batch + settings.engine.queue_size}
    if autoscale is None:
        options["num_replicas"] = replicas
    else:
        low, high = autoscale
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high,
                                         "target_ongoing_requests": settings.engine.max_batch}
    return serve.deployment(name="pmerge", **options)(Replica).bind(settings)


def build(args: dict[str, Any]) -> serve.Application:
    """`serve run service.ray_serve:build store=... family=...`: the settings from the args (and
    PMERGE_* variables); replicas, autoscaling and GPUs come from the config's deployment options."""
    unknown = sorted(set(args) - set(Settings.fields()))
    if unknown:
        raise ValueError(f"unknown pmerge settings in the Serve config's args: {unknown} (settings: "
                         f"{', '.join(Settings.fields())})")
    return application(Settings(**args))

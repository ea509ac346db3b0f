"""GET /families (every family served) and /family (and /families/{family_id}/family): what a family is."""
from __future__ import annotations

from pathlib import PurePath

from fastapi import APIRouter, Depends

from service.http.dependencies import RuntimeDep
from service.errors import ErrorBody
from service.engine.families import FamilyView
from service.http.schemas import FamilyOut, FamilySummary, TaskOut
from service.http.routers import Naming, Tags

async def families(runtime: RuntimeDep) -> list[FamilySummary]:
    """Every family this service serves (newest first): which is the default, which are resident."""
    return [FamilySummary(**f) for f in await runtime.list_families()]


def add_listing(routes: APIRouter) -> None:
    routes.add_api_route("/families", families, methods=["GET"], tags=["models"], response_model=list[FamilySummary],
                         responses={503: {"model": ErrorBody}})


def family_out(family: FamilyView) -> FamilyOut:
    m = family.manifest
    # the zoo is a path on the server that trained the family: its name is what a client can use
    zoo = PurePath(m.zoo).name if m.zoo else None
    hyperparameters = {k: v for k, v in m.hyperparameters.items() if k != "zoo"}  # format 1 kept it there
    return FamilyOut(family_id=m.family_id, created=m.created, method=m.method, kind=m.kind,
                     kind_params=m.kind_params, zoo=zoo,
                     tasks=[TaskOut(name=t.name, classes=t.classes) for t in m.tasks],
                     architecture=m.architecture, image_size=m.preprocess.image_size,
                     hyperparameters=hyperparameters, metrics=m.metrics, files=list(family.files),
                     disk_bytes=sum(f.disk_bytes for f in family.files),
                     resident_bytes=sum(f.resident_bytes for f in family.files),
                     host_bytes=sum(f.host_bytes for f in family.files), device_cache_bytes=family.cache_bytes)


def add_routes(routes: APIRouter, naming: Naming) -> None:
    """This resource's routes for one naming of the family, added to `routes` (one router for all of them:
    every included router is one more step of each request's route matching)."""
    tags: Tags = ["models"]
    held = Depends(naming.family)

    @routes.get(naming.prefix + "/family", tags=tags, response_model=FamilyOut, responses={503: {"model": ErrorBody}, 404: {"model": ErrorBody}},
                operation_id=naming.op("family_info"))
    async def family_info(family: FamilyView = held) -> FamilyOut:
        return family_out(family)


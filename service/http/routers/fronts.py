"""GET /front (and /families/{family_id}/front): the family's evaluated front, as `pmerge front`
kept it in the store; POST /select (and /families/{family_id}/select): the preference for images
of a task the family was not trained on."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from models_store import StoreError
from models_store.fronts import StoredFront, read_front

from service.http.dependencies import RuntimeDep
from service.errors import ErrorBody, FrontUnavailable, NoFront, json_bytes
from service.engine.families import FamilyView
from service.http.schemas import SelectResponse
from service.http.select import MAX_SELECT_IMAGES, MAX_SELECT_SAMPLES, select_preference
from service.http.routers import ERRORS, Naming
from service.http.routers.classify import MULTIPART_DOC, read_uploads


def add_routes(routes: APIRouter, naming: Naming) -> None:
    """This resource's routes for one naming of the family, added to `routes`."""
    held = Depends(naming.family)

    @routes.get(naming.prefix + "/front", tags=["models"], response_model=StoredFront,
                responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}}, operation_id=naming.op("front"))
    async def front(runtime: RuntimeDep, family: FamilyView = held) -> StoredFront:
        """The family's front: per-task accuracy at each evaluated preference (and a point-set's members)."""
        try:
            stored = await asyncio.to_thread(read_front, runtime.settings.store, family.family_id)
        except StoreError as e:
            raise FrontUnavailable(f"{e}; run `pmerge front` for this family again", retry_after=60) from None
        if stored is None:
            raise NoFront(f"no front was evaluated for family {family.family_id}: run `pmerge front --store STORE "
                          f"--family {family.family_id} --out DIR` where the store is")
        return stored

    @routes.post(naming.prefix + "/select", tags=["inference"], response_class=Response,
                 responses=ERRORS | {200: {"model": SelectResponse}, 404: {"model": ErrorBody}},
                 openapi_extra=MULTIPART_DOC, operation_id=naming.op("select"))
    async def select(
        request: Request,
        runtime: RuntimeDep,
        samples: int = Query(30, ge=0, le=MAX_SELECT_SAMPLES, description="Dirichlet(1) preferences tried beside "
                                                                           "the equal one and the vertices"),
        seed: int = Query(0, ge=0, le=2**31 - 1, description="the draws' seed"),
        family: FamilyView = held,
    ) -> Response:
        """The preference whose tower is most confident on a new task's unlabeled images: the lowest mean
        prediction entropy over the family's heads (Pareto Merging, section 4.3; `pmerge select`)."""
        await runtime.admit(family, 1)
        files = await read_uploads(request, min(runtime.settings.limits.max_files, MAX_SELECT_IMAGES))
        answer = await select_preference(runtime, family, files, samples, seed)
        return Response(json_bytes(answer), media_type="application/json")

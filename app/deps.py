"""Request dependencies as Annotated aliases (async: no threadpool hop to read app.state).

StoreDep and LiveDep are those of the model named by the `{model}` of the route's path
(app.state.catalog, see catalog.py): a route that takes them must have `{model}` in its
path. An unknown model is a 404 before the route runs. Routes about every model take
CatalogDep.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from actscope.app.catalog import Catalog
from actscope.app.live_service import LiveService
from actscope.app.settings import Settings
from actscope.indexer.store.reader import Store


def _model(request: Request) -> str:
    model = request.path_params.get("model")
    if model is None:  # a programming error: the route has no {model} to resolve
        raise LookupError(f"{request.url.path}: StoreDep and LiveDep need a {{model}} in the route's path")
    return model


async def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog


async def get_store(request: Request) -> Store:
    return request.app.state.catalog.store(_model(request))


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_live(request: Request) -> LiveService:
    return request.app.state.catalog.live(_model(request))


CatalogDep = Annotated[Catalog, Depends(get_catalog)]
StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
LiveDep = Annotated[LiveService, Depends(get_live)]

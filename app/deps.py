"""Request dependencies as Annotated aliases (async: no threadpool hop to read app.state)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from actscope.app.live_service import LiveService
from actscope.app.settings import Settings
from actscope.indexer.store.reader import Store


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_live(request: Request) -> LiveService:
    return request.app.state.live


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
LiveDep = Annotated[LiveService, Depends(get_live)]

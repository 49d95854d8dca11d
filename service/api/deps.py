"""Dependencies shared by the routes, declared once as ``Annotated`` aliases.

They are ``async`` although they block for a moment (a cached lookup, one indexed SQLite read): FastAPI runs a
plain ``def`` dependency in its thread pool, and the hops cost more than the work (see bench/service.py).

``ScanDep`` is "this scan exists, is not deleted, and is the caller's": another key's scan is a 404, so a
caller cannot even learn that it exists.
"""

from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Header, Path

from service.dispatch import Dispatcher
from service.errors import NotFound, Unauthorized
from worker.core.settings import AuthMode, Settings, get_settings
from worker.core.store import ScanRecord, Store, store_for
from worker.core.store.keys import hash_api_key

OPEN_MODE_OWNER = "local"

async def settings() -> Settings:
    return get_settings()


SettingsDep = Annotated[Settings, Depends(settings)]


async def get_store(settings: SettingsDep) -> Store:
    return store_for(settings)


StoreDep = Annotated[Store, Depends(get_store)]


@lru_cache
def get_dispatcher() -> Dispatcher:
    settings = get_settings()
    return Dispatcher(settings, store_for(settings))


async def dispatcher() -> Dispatcher:
    return get_dispatcher()


DispatcherDep = Annotated[Dispatcher, Depends(dispatcher)]


async def get_caller(settings: SettingsDep, store: StoreDep,
               authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None) -> str:
    """The owner name of the caller's API key (``local`` in open mode)."""
    if settings.auth == AuthMode.open:
        return OPEN_MODE_OWNER
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("send 'Authorization: Bearer <API key>'; an operator creates keys with "
                           "'bdscreen keys create NAME'.", headers={"WWW-Authenticate": "Bearer"})
    owner = store.records.key_owner(hash_api_key(key.strip()))
    if owner is None:
        raise Unauthorized("this API key is unknown or was revoked; ask the operator for a new one.",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return owner


CallerDep = Annotated[str, Depends(get_caller)]


async def get_scan(scan_id: Annotated[str, Path(description="The id POST /v1/scans returned.")], caller: CallerDep,
             store: StoreDep, settings: SettingsDep) -> ScanRecord:
    owner = None if settings.auth == AuthMode.open else caller
    record = store.records.get(scan_id, owner=owner)
    if record is None:
        raise NotFound(f"no scan {scan_id!r} for this API key; GET /v1/scans lists yours.")
    return record


ScanDep = Annotated[ScanRecord, Depends(get_scan)]

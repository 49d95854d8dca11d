"""The gateway app: ``uvicorn service.main:app`` (or ``bdscreen serve``)."""

from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

import anyio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service.api.deps import get_dispatcher
from service.api.main import api_router
from service.errors import add_exception_handlers


def _version() -> str:
    try:
        return version("bdscreen")
    except PackageNotFoundError:
        return "0+unknown"


@asynccontextmanager
async def lifespan(app: FastAPI):
    dispatcher = get_dispatcher()  # reads and checks the settings: a bad one stops the start-up here
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(dispatcher.reconcile_forever)
        yield
        tasks.cancel_scope.cancel()


# Swagger UI and ReDoc from the assets packaged in fastapi-offline (FastAPI's own pages load them from a CDN and
# are blank without internet); no validator badge, which Swagger UI would fetch from validator.swagger.io.
app = FastAPIOffline(title="bdscreen", version=_version(), lifespan=lifespan,
                     swagger_ui_parameters={"validatorUrl": None},
                     description="Screen image classifiers for backdoors, repair them and wrap them into a GoodNet.")
add_exception_handlers(app)
app.include_router(api_router)

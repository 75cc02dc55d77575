"""The app factory and `actscope serve`."""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from actscope import __version__
from actscope.app import errors, routes_api, routes_html
from actscope.app.live_service import LiveService
from actscope.app.render import make_templates, prepare_tokens
from actscope.app.resources import resource_dir
from actscope.app.response_cache import CacheMiddleware, ResponseCache
from actscope.app.settings import Settings
from actscope.indexer.errors import ActscopeError
from actscope.indexer.store.reader import Store

log = logging.getLogger("actscope.app")

DESCRIPTION = """Browse what the MLP neurons and SAE features of a language model respond to.

Every page has a JSON twin under `/api` with the same data. Errors always have the shape
`{"error": {"status": 404, "message": "..."}}`."""


def create_app(settings: Settings) -> FastAPI:
    """Build the app over one index file (opened read-only, schema version checked)."""
    store = Store(settings.index_file, resident_mb=settings.resident_mb)
    models = store.models()
    if not models:
        raise ActscopeError(f"{settings.index_file}: the index holds no model")
    # One file holds one model; live inference runs that model.
    first = models[0]
    live = LiveService(
        first,
        store.sources(first.model),
        device=settings.device,
        max_waiting=settings.live_max_waiting,
        timeout_s=settings.live_timeout_s,
        max_chars=settings.max_text_chars,
        cache_size=settings.live_cache_size,
        enabled=settings.live,
        max_batch=settings.live_max_batch,
        threads=settings.live_threads,
        token_strings=lambda ids: store.token_strings(first.model, ids),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.live and settings.preload_live:
            # Load in the background: pages answer at once, live requests wait for it.
            threading.Thread(target=_preload, args=(live,), daemon=True).start()
        yield
        store.close()

    app = FastAPI(
        title="actscope", description=DESCRIPTION, version=__version__, lifespan=lifespan, redoc_url=None, docs_url=None
    )
    app.state.settings = settings
    app.state.store = store
    app.state.live = live
    app.state.templates = make_templates()
    for m in models:
        prepare_tokens(store.vocab(m.model))
    app.state.response_cache = ResponseCache(settings.response_cache_mb * 2**20)
    app.add_middleware(CacheMiddleware, cache=app.state.response_cache)
    errors.install(app)
    app.mount("/static", StaticFiles(directory=str(resource_dir("static"))), name="static")
    _docs_route(app)
    app.include_router(routes_api.router)
    app.include_router(routes_html.router)
    return app


def _docs_route(app: FastAPI) -> None:
    """/docs: Swagger UI from static/vendor when the build put it there (npm package
    swagger-ui-dist, works offline), else from FastAPI's default CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html

    vendor = resource_dir("static") / "vendor"
    local = (vendor / "swagger-ui-bundle.js").is_file() and (vendor / "swagger-ui.css").is_file()
    urls = (
        {"swagger_js_url": "/static/vendor/swagger-ui-bundle.js", "swagger_css_url": "/static/vendor/swagger-ui.css"}
        if local
        else {}
    )

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="actscope API", **urls)


def _preload(live: LiveService) -> None:
    try:
        live.load()
    except Exception as exc:  # the error is kept and shown on live requests
        log.warning("live inference unavailable: %s", getattr(exc, "message", exc))


def app_from_env() -> FastAPI:
    """The app of one `serve` worker process: settings from ACTSCOPE_* variables."""
    return create_app(Settings())


def serve(index_file: str, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu") -> None:
    """Run the explorer with uvicorn until interrupted.

    ACTSCOPE_WORKERS (default 1) processes each open the index read-only, load their own
    live model and keep their own response cache: on a machine with idle cores, more
    workers serve more pages per second (on the shared 2-core test machine they did
    not: bench/server.py measured no gain and a colder cache). ACTSCOPE_LIVE_THREADS
    (default 1) torch threads per process.
    """
    import os

    import uvicorn

    os.environ["ACTSCOPE_INDEX_FILE"] = str(Path(index_file).resolve())
    os.environ["ACTSCOPE_DEVICE"] = device
    os.environ.setdefault("ACTSCOPE_PRELOAD_LIVE", "true")
    os.environ.setdefault("ACTSCOPE_LIVE_THREADS", "1")
    workers = int(os.environ.get("ACTSCOPE_WORKERS") or 1)
    # Fail here, with one line, on a missing, unreadable or incompatible file.
    Store(index_file, resident_mb=0).close()
    print(
        f"actscope: serving {index_file} on http://{host}:{port}/ (JSON API at /api, docs at /docs)"
        f" with {workers} worker process{'es' if workers > 1 else ''}"
    )
    if workers > 1:
        uvicorn.run(
            "actscope.app.server:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            access_log=False,
        )
    else:
        # access_log off: at log level warning nothing is printed anyway, but uvicorn
        # would still format every request's log line.
        uvicorn.run(app_from_env(), host=host, port=port, log_level="warning", access_log=False)

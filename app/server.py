"""The app factory and `actscope serve`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from actscope import __version__
from actscope.app import errors, limits, routes_api, routes_embed, routes_html, routes_hypothesis
from actscope.app import urls as site_urls
from actscope.app.catalog import Catalog, check_files, open_catalog
from actscope.app.fast_route import HotRoutes, PlainParamsRoute
from actscope.app.head import HeadAsGet
from actscope.app.hypothesis_jobs import HypothesisJobs
from actscope.app.live_service import LiveService
from actscope.app.reload import ReloadingApp
from actscope.app.render import make_templates
from actscope.app.resources import resource_dir
from actscope.app.response_cache import CacheMiddleware, ResponseCache
from actscope.app.security_headers import SecurityHeaders
from actscope.app.settings import Settings, index_paths
from actscope.indexer.errors import ActscopeError

log = logging.getLogger("actscope.app")

DESCRIPTION = """Browse what the MLP neurons and SAE features of a language model respond to.

Every page has a JSON twin under `/api` with the same data. Errors always have the shape
`{"error": {"status": 404, "message": "..."}}`."""


class RootPath:
    """Serve under `settings.root_path` when the server did not set an ASGI root_path
    itself (`actscope serve` has uvicorn set it; another server may not)."""

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app = app
        self.root_path = root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not scope.get("root_path"):
            scope["root_path"] = self.root_path
        await self.app(scope, receive, send)


def create_app(settings: Settings, reload_of: FastAPI | None = None, changed: Collection[Path] = ()) -> FastAPI:
    """Build the app over the index files of `settings` (opened read-only, schema
    versions checked), serving every model of every file. `reload_of`: the app it
    replaces (reload.py), whose files not in `changed` are carried over, with their live
    models and cached pages."""
    previous: Catalog | None = reload_of.state.catalog if reload_of is not None else None
    catalog = open_catalog(settings, previous, changed)
    first = catalog.models()[0].live

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        limit_blas_threads(settings)
        if settings.live and settings.preload_live:
            # Load in the background: pages answer at once, live requests wait for it.
            threading.Thread(target=_preload, args=(first,), daemon=True).start()
        yield
        catalog.close()

    app = FastAPI(
        title="actscope", description=DESCRIPTION, version=__version__, lifespan=lifespan, redoc_url=None, docs_url=None
    )
    app.state.settings = settings
    app.state.catalog = catalog
    app.state.templates = make_templates({m.model: m.tokens for m in catalog.models()})
    app.state.response_cache = ResponseCache(settings.response_cache_mb * 2**20)
    if reload_of is not None:  # the pages of the models whose file did not change stay valid
        kept = {m.model for m in catalog.models() if m.index not in catalog.opened}
        app.state.response_cache.adopt(reload_of.state.response_cache, kept)
    app.state.hypotheses = HypothesisJobs()  # regex hypothesis tests: running, and their results
    # Built with each served model, so a reload carries it over for files that did not change.
    app.state.corpus_json = {m.model: m.corpus_json for m in catalog.models()}
    hot = [r for r in (*routes_api.router.routes, *routes_html.router.routes) if isinstance(r, PlainParamsRoute)]
    app.add_middleware(HotRoutes, routes=hot)  # inside the cache: a cached page never gets here
    app.add_middleware(CacheMiddleware, cache=app.state.response_cache)
    app.add_middleware(HeadAsGet)  # outside the cache: a HEAD is answered from it too
    # Outside the cache: cached answers carry the headers, and the limits come first.
    budget = limits.LiveBudget(settings.live_tokens_per_minute) if settings.live_tokens_per_minute > 0 else None
    trusted = limits.parse_networks(settings.trusted_proxies)
    app.add_middleware(limits.Limits, max_body_bytes=settings.body_limit, budget=budget, trusted=trusted)
    app.add_middleware(SecurityHeaders)
    if settings.root_path:
        app.add_middleware(RootPath, root_path=settings.root_path)  # outermost: before the cache
    errors.install(app)
    app.mount("/static", StaticFiles(directory=str(resource_dir("static"))), name="static")
    _docs_route(app)
    app.include_router(routes_api.router)
    app.include_router(routes_embed.router)
    app.include_router(routes_html.router)
    app.include_router(routes_hypothesis.api_router)
    app.include_router(routes_hypothesis.router)
    return app


def _docs_route(app: FastAPI) -> None:
    """/docs: Swagger UI from static/vendor (npm package swagger-ui-dist: works offline),
    inside the site's own page, so it follows the site's theme; /favicon.ico for clients
    that ask for it without reading the page."""

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        urls = site_urls.for_request(request)
        return app.state.templates.TemplateResponse(
            request,
            "docs.html",
            {"d": {"openapi_url": urls.openapi()}, "title": "API docs · actscope", "json_url": urls.openapi()},
        )

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(site_urls.FAVICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


def _preload(live: LiveService) -> None:
    try:
        live.load()
    except Exception as exc:  # the error is kept and shown on live requests
        log.warning("live inference unavailable: %s", getattr(exc, "message", exc))


def settings_from_env() -> Settings:
    """Settings from the ACTSCOPE_* environment variables; invalid values are one
    ActscopeError."""
    try:
        # index_file comes from ACTSCOPE_INDEX_FILE: pydantic-settings reads the
        # environment, mypy only sees the fields' signature.
        return Settings()  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = "; ".join(f"ACTSCOPE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ActscopeError(f"invalid setting: {problems}") from None


def app_from_env(sighup: bool = False) -> ReloadingApp:
    """The app of one `serve` worker process: settings from ACTSCOPE_* variables;
    `sighup`: it reloads its changed index files on SIGHUP."""
    return ReloadingApp(settings_from_env(), create_app, sighup=sighup)


def limit_blas_threads(settings: Settings) -> None:
    """Cap this process's BLAS threads at settings.blas_threads (if set), for good."""
    if settings.blas_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=settings.blas_threads, user_api="blas")


def worker_count(value: str | None) -> int:
    """ACTSCOPE_WORKERS as a number of processes: empty for 1, `auto` for one per core
    this process may run on, or a whole number from 1."""
    import os

    text = (value or "1").strip().lower()
    if text == "auto":
        cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
        return max(1, len(cores))
    if not text.isdigit() or int(text) < 1:
        raise ActscopeError(f"ACTSCOPE_WORKERS must be a whole number from 1 or 'auto', not {value!r}")
    return int(text)


def serve(
    index_files: str | list[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    root_path: str | None = None,
    reload_on_change: bool = False,
) -> None:
    """Run the explorer with uvicorn until interrupted.

    ACTSCOPE_WORKERS (default 1; `auto`: one per core this process may use) processes
    each open the index read-only, load their own live model and keep their own response
    cache: a process renders pages on one core (Python's lock), so one per core serves
    more pages and live requests a second (bench/server.py). ACTSCOPE_LIVE_THREADS
    (default 1) torch threads and ACTSCOPE_BLAS_THREADS (default 1) BLAS threads per
    process. `root_path` (default: ACTSCOPE_ROOT_PATH, or
    none) is the path prefix the site is served under behind a reverse proxy that strips
    it; uvicorn passes it to the app as the ASGI root_path.

    An index rebuilt in place (`actscope index` renames the finished file over the old
    one) is served once the server is told: on SIGHUP with one worker process, or as
    soon as each worker sees the file change with `reload_on_change` (see reload.py).
    Until then it serves the file it opened.

    `index_files`: one index file or several, or directories (every *.duckdb file in
    each); every model of every file is served under its own name.
    """
    import os

    import uvicorn

    from actscope.app import worker_processes

    try:
        paths = index_paths(index_files)
    except ValueError as exc:
        raise ActscopeError(str(exc)) from None
    # The worker processes read the same files, whatever their working directory.
    os.environ["ACTSCOPE_INDEX_FILE"] = os.pathsep.join(str(p.resolve()) for p in paths)
    os.environ["ACTSCOPE_DEVICE"] = device
    os.environ.setdefault("ACTSCOPE_PRELOAD_LIVE", "true")
    os.environ.setdefault("ACTSCOPE_LIVE_THREADS", "1")
    os.environ.setdefault("ACTSCOPE_BLAS_THREADS", "1")
    if root_path is not None:
        os.environ["ACTSCOPE_ROOT_PATH"] = root_path
    if reload_on_change:
        os.environ["ACTSCOPE_RELOAD_ON_CHANGE"] = "true"
    settings = settings_from_env()  # the worker processes read the same variables
    workers = worker_count(os.environ.get("ACTSCOPE_WORKERS"))
    # Fail here, with one line, on a missing, unreadable, damaged or incompatible file,
    # or on two files holding models of the same name.
    found = check_files(paths)
    prefix = settings.root_path
    where = (
        f"http://{host}:{port}/ for a proxy that serves it under {prefix}/ and strips the prefix"
        f" (JSON API at {prefix}/api, docs at {prefix}/docs)"
        if prefix
        else f"http://{host}:{port}/ (JSON API at /api, docs at /docs)"
    )
    listed = "; ".join(f"{path}: {', '.join(names)}" for path, names in found)
    what = str(paths[0]) if len(found) == 1 else f"{len(found)} index files ({listed})"
    print(f"actscope: serving {what} on {where} with {workers} worker process{'es' if workers > 1 else ''}")
    # access_log off: at log level warning nothing is printed anyway, but uvicorn would
    # still format every request's log line.
    # proxy_headers off: uvicorn would believe X-Forwarded-For from 127.0.0.1; the app
    # believes it only from ACTSCOPE_TRUSTED_PROXIES (app/limits.py).
    options: dict[str, Any] = dict(
        host=host,
        port=port,
        root_path=settings.root_path,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
    )
    if workers > 1 and worker_processes.supported():
        worker_processes.run_workers(workers, host, port, options)
    elif workers > 1:  # no SO_REUSEPORT balancing here: uvicorn's workers share one socket
        uvicorn.run("actscope.app.server:app_from_env", factory=True, workers=workers, **options)
    else:
        uvicorn.run(ReloadingApp(settings, create_app, sighup=True), **options)

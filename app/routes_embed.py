"""The embed view: a compact unit card made to be framed by blogs and notebooks (the
only pages that may be; see security_headers)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from actscope.app import pages, params
from actscope.app import urls as site_urls

router = APIRouter(include_in_schema=False)

# Top examples on the card: enough to see the pattern, few enough for a small frame.
EMBED_EXAMPLES = 5


def embed_data(request: Request, model: str, source: str, index: int) -> dict:
    """The unit's page data, cut to what the card shows: its top examples and a few
    statistics, with the URL of its full page."""
    served = request.app.state.catalog.served(model)
    store, live = served.store, served.live
    urls = site_urls.for_request(request)
    data = pages.unit_data(store, live, urls, model, source, index, shown_only=True)
    data["top"] = data["top"][:EMBED_EXAMPLES]
    data["page_url"] = urls.unit(model, source, index)
    return data


@router.get("/embed/{model}/{source}/{index}", response_class=HTMLResponse)  # urls.embed
def embed_unit(request: Request, model: str, source: str, index: params.UnitIndex):
    data = embed_data(request, model, source, index)
    urls = site_urls.for_request(request)
    return request.app.state.templates.TemplateResponse(
        request,
        "embed.html",
        {
            "d": data,
            "title": f"{source}/{index} · {model}",
            "json_url": urls.api(data["page_url"]),
            "page_url": data["page_url"],
        },
    )

"""The visitor's parameters: their checks, in one place, and their declarations.

The page data functions (app/pages.py) call the checks, so an HTML page and its JSON
twin refuse the same input with the same message. The route signatures of both
routers use the `Annotated` declarations below: they document the bounds in the
OpenAPI schema (`json_schema_extra`) without checking them a second time.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from pydantic import BeforeValidator

from actscope.app.errors import bad_input

SORT_COLUMNS = ("unit", "max", "mean", "density", "cos_in_out")
ORDERS = ("asc", "desc")
PER_PAGE_MAX = 500
K_MAX = 100  # units per token of the try page and the activations API


def check_table(sort: str, order: str, page: int, per_page: int) -> None:
    """The sort, order and page of a source's unit table."""
    if sort not in SORT_COLUMNS:
        raise bad_input(f"sort must be one of {', '.join(SORT_COLUMNS)}, not {sort!r}.")
    if order not in ORDERS:
        raise bad_input(f"order must be asc or desc, not {order!r}.")
    if page < 1 or not 1 <= per_page <= PER_PAGE_MAX:
        raise bad_input(f"page must be >= 1 and per_page between 1 and {PER_PAGE_MAX}.")


def check_page_exists(page: int, n_pages: int) -> None:
    if page > n_pages:
        raise bad_input(f"page {page} is past the last page ({n_pages}).")


def check_k(k: int) -> None:
    if not 1 <= k <= K_MAX:
        raise bad_input(f"k must be between 1 and {K_MAX}.")


def check_pos(pos: int | None, n_tokens: int) -> None:
    if pos is not None and not 0 <= pos < n_tokens:
        raise bad_input(f"pos must be between 0 and {n_tokens - 1}.")


def check_page(page: int, per_page: int) -> None:
    if page < 1 or not 1 <= per_page <= PER_PAGE_MAX:
        raise bad_input(f"page must be >= 1 and per_page between 1 and {PER_PAGE_MAX}.")


def visitor_text(text: str | None) -> str | None:
    """A visitor's text with its line ends as the model reads them: a browser sends a
    textarea's lines ending in CRLF, and the tokenizer would see every CR."""
    return None if text is None else text.replace("\r\n", "\n").replace("\r", "\n")


def band_choice(band: str | None, n_bands: int) -> str:
    """The example set a unit page shows: "top" (the default) or a band number."""
    if band is None or band in ("", "top"):
        return "top"
    if band.isascii() and band.isdigit() and int(band) < n_bands:
        return str(int(band))  # "01" shows band 1
    raise bad_input(f"band must be 'top' or a band number from 0 to {n_bands - 1}, not {band!r}.")


EXAMPLES_PER_PAGE = 20  # examples of a unit page's set shown at once
EXAMPLES_PER_PAGE_MAX = 200


def _count(value: str | None, name: str, default: int, low: int, high: int | None = None) -> int:
    if value is None or value == "":
        return default
    text = value.strip()
    if text.isascii() and text.isdigit() and int(text) >= low and (high is None or int(text) <= high):
        return int(text)
    bound = f"between {low} and {high}" if high is not None else f"a whole number >= {low}"
    raise bad_input(f"{name} must be {bound}, not {value!r}.")


def example_page(page: str | None, per_page: str | None) -> tuple[int, int]:
    """(page, examples per page) of a unit page's example set, from the visitor's text."""
    return _count(page, "page", 1, 1), _count(per_page, "per_page", EXAMPLES_PER_PAGE, 1, EXAMPLES_PER_PAGE_MAX)


def check_example_page(page: int, n_pages: int, what: str) -> None:
    if page > n_pages:
        raise bad_input(f"page {page} is past the last page of {what} ({n_pages}).")


def open_example(value: str | None) -> tuple[int, int] | None:
    """The expanded example of a unit page, `SEQ:POS` (sequence and focus position)."""
    if value is None or value == "":
        return None
    seq, sep, pos = value.partition(":")
    if sep and seq.isascii() and seq.isdigit() and pos.isascii() and pos.isdigit():
        return int(seq), int(pos)
    raise bad_input(f"open must be SEQ:POS (a sequence and a position, e.g. 12:40), not {value!r}.")


def unit_number(value: str, n_units: int) -> int:
    """The unit a "go to unit" box asks for, checked against the source's width."""
    text = value.strip()
    if text.isascii() and text.isdigit() and int(text) < n_units:
        return int(text)
    raise bad_input(f"Give a unit number from 0 to {n_units - 1}, not {value!r}.")


# -- declarations: documentation, and the parsing of form values; the checks above are
# the only checks --------------------------------------------------------------------
Sort = Annotated[str, Query(description="Column to sort by", json_schema_extra={"enum": list(SORT_COLUMNS)})]
Order = Annotated[str, Query(description="Sort order", json_schema_extra={"enum": list(ORDERS)})]
Page = Annotated[int, Query(description="Page number, from 1", json_schema_extra={"minimum": 1})]
PerPage = Annotated[int, Query(description="Rows per page", json_schema_extra={"minimum": 1, "maximum": PER_PAGE_MAX})]
K = Annotated[int, Query(description="Units per token", json_schema_extra={"minimum": 1, "maximum": K_MAX})]


def _blank_is_none(value: object) -> object:
    # A form's empty number box is sent as `name=`: no bound, not an invalid number.
    return None if value == "" else value


Density = Annotated[
    float | None,
    BeforeValidator(_blank_is_none),
    Query(description="Bound on the share of tokens the unit fires on (0 to 1); empty: none"),
]

"""The visitor's parameters: their checks, in one place, and their declarations.

The page data functions (app/pages.py) call the checks, so an HTML page and its JSON
twin refuse the same input with the same message. The route signatures of both
routers use the `Annotated` declarations below: they document the bounds in the
OpenAPI schema (`json_schema_extra`) without checking them a second time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Literal

from fastapi import Path, Query
from pydantic import BeforeValidator, JsonValue

from actscope.app.errors import AppError, bad_input
from actscope.indexer.store.unit_table import SORTABLE

SORT_COLUMNS = SORTABLE
ORDERS = ("asc", "desc")
PER_PAGE_MAX = 500
PER_PAGE_CHOICES = (25, 50, 100, 200, 500)  # the form's choices; any 1..PER_PAGE_MAX is accepted
K_MAX = 100  # units per token of the try page and the activations API
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class FieldError(AppError):
    """Bad input in one field of a form: pages show it next to that field's form.

    422 when the value is outside what the OpenAPI schema allows; 404 when it is well
    formed but names something the index lacks (a page past the last one, a band or a
    position that is not there), as the API contract says."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(status, message)
        self.field = field


def missing(field: str, message: str) -> FieldError:
    """A well-formed value naming something that is not there: a 404."""
    return FieldError(field, message, 404)


@dataclass(frozen=True)
class TableQuery:
    """What a source's unit table shows. Densities are fractions of indexed tokens."""

    sort: str = "max"
    order: str = "desc"
    page: int = 1
    per_page: int = 50
    q: str = ""
    min_density: float | None = None
    max_density: float | None = None
    hide_dead: bool | None = None  # None: the kind's default

    def without(self, fields: Iterable[str]) -> TableQuery:
        """This query with `fields` back at their defaults (the view without bad input)."""
        fields = set(fields)
        if fields & {"min_density", "max_density"}:
            fields |= {"min_density", "max_density"}  # min > max: both go
        return replace(self, **{f: getattr(TableQuery, f) for f in fields if hasattr(TableQuery, f)})


@dataclass(frozen=True)
class DensityUnit:
    """How a density bound is written: a fraction (the API) or a percentage (the form)."""

    scale: float
    params: tuple[str, str]  # the parameters (min, max)
    names: tuple[str, str]  # the bounds as messages name them
    words: str


FRACTION = DensityUnit(
    1.0, ("min_density", "max_density"), ("min_density", "max_density"), "a fraction of tokens, 0 to 1"
)
PERCENT = DensityUnit(
    100.0, ("min_pct", "max_pct"), ("density ≥ (min_pct)", "density ≤ (max_pct)"), "a percentage of tokens, 0 to 100"
)


def table_errors(query: TableQuery, unit: DensityUnit = FRACTION) -> dict[str, str]:
    """Every error of a table query, by field (empty: none)."""
    errors: dict[str, str] = {}
    if query.sort not in SORT_COLUMNS:
        errors["sort"] = f"sort must be one of {', '.join(SORT_COLUMNS)}, not {query.sort!r}."
    if query.order not in ORDERS:
        errors["order"] = f"order must be asc or desc, not {query.order!r}."
    if query.page < 1:
        errors["page"] = f"page must be 1 or more, not {query.page}."
    if not 1 <= query.per_page <= PER_PAGE_MAX:
        errors["per_page"] = f"per_page must be between 1 and {PER_PAGE_MAX}, not {query.per_page}."
    for field, name in zip(("min_density", "max_density"), unit.names):
        value = getattr(query, field)
        if value is not None and not (0 <= value <= 1):  # NaN fails too
            errors[field] = f"{name} must be {unit.words}, not {value * unit.scale:g}."
    lo, hi = query.min_density, query.max_density
    if not errors.keys() & {"min_density", "max_density"} and lo is not None and hi is not None and lo > hi:
        errors["min_density"] = (
            f"{unit.names[0]} ({lo * unit.scale:g}) is above {unit.names[1]} ({hi * unit.scale:g}): no unit can match."
        )
    return errors


def check_table(query: TableQuery) -> None:
    """The API's check: the first error of the query, as a 422."""
    for field, message in table_errors(query).items():
        raise FieldError(field, message)


def table_error_status(query: TableQuery, field: str) -> int:
    """The API's status for a table error: 404 where the query is well formed but nothing
    can match (a sort column the source has no value in, min above max); else 422."""
    if field == "sort":
        return 404 if query.sort in SORT_COLUMNS else 422
    lo, hi = query.min_density, query.max_density
    bounded = lo is not None and hi is not None and 0 <= lo <= 1 and 0 <= hi <= 1
    return 404 if field == "min_density" and bounded else 422


def parse_bool(name: str, raw: str) -> bool | None:
    text = raw.strip().lower()
    if text == "":
        return None
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise FieldError(name, f"{name} must be true or false, not {raw!r}.")


def parse_int(name: str, raw: str, words: str) -> int | None:
    text = raw.strip()
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise FieldError(name, f"{name} must be {words}, not {raw!r}.") from None


def parse_table_query(raw: Mapping[str, str], unit: DensityUnit = PERCENT) -> tuple[TableQuery, dict[str, str]]:
    """A page's table query from the visitor's text: (the query without the fields that
    failed, the errors by field). An empty field is no bound / the default."""
    errors: dict[str, str] = {}
    values: dict[str, object] = {}

    def attempt(field: str, parse) -> None:
        try:
            value = parse()
        except FieldError as exc:
            errors[field] = exc.message
            return
        if value is not None:
            values[field] = value

    for field in ("sort", "order"):
        if raw.get(field, "").strip():
            values[field] = raw.get(field, "").strip()
    values["q"] = raw.get("q", "")
    attempt("page", lambda: parse_int("page", raw.get("page", ""), "a page number"))
    attempt("per_page", lambda: parse_int("per_page", raw.get("per_page", ""), "a number of rows"))
    attempt("hide_dead", lambda: parse_bool("hide_dead", raw.get("hide_dead", "")))
    for field, param, name in zip(("min_density", "max_density"), unit.params, unit.names):
        attempt(
            field, lambda param=param, name=name, field=field: _parse_density(field, name, raw.get(param, ""), unit)
        )
    query = TableQuery(**values)  # type: ignore[arg-type]
    errors.update({f: m for f, m in table_errors(query, unit).items() if f not in errors})
    return query.without(errors), errors


def _parse_density(field: str, name: str, raw: str, unit: DensityUnit) -> float | None:
    text = raw.strip().rstrip("%").strip()
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise FieldError(field, f"{name} must be {unit.words}, not {raw!r}.") from None
    return value / unit.scale


def density_text(value: float | None, unit: DensityUnit = PERCENT) -> str:
    """A density bound as the form shows it ("" for none)."""
    return "" if value is None else f"{value * unit.scale:.10g}"


def check_page_exists(page: int, n_pages: int) -> None:
    if page > n_pages:
        raise missing("page", f"page {page} is past the last page ({n_pages:,}).")


def check_k(k: int) -> None:
    if not 1 <= k <= K_MAX:
        raise FieldError("k", f"k must be between 1 and {K_MAX}.")


def check_pos(pos: int | None, n_tokens: int) -> None:
    if pos is None:
        return
    if pos < 0:
        raise FieldError("pos", f"pos must be between 0 and {n_tokens - 1}.")
    if pos >= n_tokens:
        raise missing("pos", f"pos must be between 0 and {n_tokens - 1}: the text has {n_tokens} tokens.")


def check_page(page: int, per_page: int) -> None:
    if page < 1 or not 1 <= per_page <= PER_PAGE_MAX:
        raise bad_input(f"page must be >= 1 and per_page between 1 and {PER_PAGE_MAX}.")


def visitor_text(text: str | None) -> str | None:
    """A visitor's text with its line ends as the model reads them: a browser sends a
    textarea's lines ending in CRLF, and the tokenizer would see every CR."""
    return None if text is None else text.replace("\r\n", "\n").replace("\r", "\n")


def whole_number(text: str) -> int | None:
    """The number `text` writes in digits, a zero fraction allowed ("5", "5.0"), as the
    schema's integer type and FastAPI's own int parameters take it; else None."""
    digits, dot, fraction = text.partition(".")
    if (
        digits.isascii()
        and digits.isdigit()
        and (not dot or (fraction.isascii() and fraction != "" and fraction.strip("0") == ""))
    ):
        return int(digits)
    return None


def band_choice(band: str | None, n_bands: int) -> str:
    """The example set a unit page shows: "top" (the default) or a band number."""
    if band is None or band in ("", "top"):
        return "top"
    number = whole_number(band)
    if number is not None:
        if number < n_bands:
            return str(number)  # "01" shows band 1
        raise missing("band", f"band must be 'top' or a band number from 0 to {n_bands - 1}, not {band!r}.")
    raise bad_input(f"band must be 'top' or a band number from 0 to {n_bands - 1}, not {band!r}.")


EXAMPLES_PER_PAGE = 20  # examples of a unit page's set shown at once
EXAMPLES_PER_PAGE_MAX = 200


def _count(value: str | None, name: str, default: int, low: int, high: int | None = None) -> int:
    if value is None or value == "":
        return default
    number = whole_number(value)  # no sign, no spaces
    if number is not None and number >= low and (high is None or number <= high):
        return number
    bound = f"between {low} and {high}" if high is not None else f"a whole number >= {low}"
    raise bad_input(f"{name} must be {bound}, not {value!r}.")


def example_page(page: str | None, per_page: str | None) -> tuple[int, int]:
    """(page, examples per page) of a unit page's example set, from the visitor's text."""
    return _count(page, "page", 1, 1), _count(per_page, "per_page", EXAMPLES_PER_PAGE, 1, EXAMPLES_PER_PAGE_MAX)


def check_example_page(page: int, n_pages: int, what: str) -> None:
    if page > n_pages:
        raise missing("page", f"page {page} is past the last page of {what} ({n_pages}).")


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
# Python's whitespace (str.isspace), as literal characters: a text made only of it is
# refused (live_service.clean_text), and \s differs between regex dialects.
_SPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
TEXT_SCHEMA: dict[str, JsonValue] = {"minLength": 1, "pattern": f"[^{_SPACE}]"}
TEXT_RULE = "At least one character that is not whitespace; longer than the model's context, it is cut (`truncated`)."
Sort = Annotated[
    str,
    Query(
        description="Column to sort by. `cos_in_out` only where the source has it (neurons; "
        "SAE features have no input weight): the source's `columns` lists the sortable ones.",
        json_schema_extra={"enum": list(SORT_COLUMNS)},
    ),
]
Order = Annotated[
    str, Query(description="Sort order: asc (smallest first) or desc", json_schema_extra={"enum": list(ORDERS)})
]
Page = Annotated[
    int, Query(description="Page number, from 1; past the last page: 404", json_schema_extra={"minimum": 1})
]
PerPage = Annotated[int, Query(description="Rows per page", json_schema_extra={"minimum": 1, "maximum": PER_PAGE_MAX})]
K = Annotated[int, Query(description="Units per token", json_schema_extra={"minimum": 1, "maximum": K_MAX})]
TableText = Annotated[
    str,
    Query(description="Keep units whose index is this number or whose top token contains this text (any case)"),
]
HideDead = Annotated[
    bool | None,
    Query(
        description="Leave out dead units (density 0: never above 0 on any indexed token). "
        "Default: the source kind's choice (true for SAE features, false for neurons)."
    ),
]


def _blank_is_none(value: object) -> object:
    # A form's empty number box is sent as `name=`: no bound, not an invalid number.
    return None if value == "" else value


def _density(bound: Literal["Lower", "Upper"]) -> object:
    return Query(
        description=f"{bound} bound on density, as a fraction of indexed tokens (0 to 1; the pages' "
        "form takes a percentage, min_pct/max_pct). Empty: no bound.",
        json_schema_extra={
            "anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "string", "maxLength": 0}]
        },
    )


MinDensity = Annotated[float | None, BeforeValidator(_blank_is_none), _density("Lower")]
MaxDensity = Annotated[float | None, BeforeValidator(_blank_is_none), _density("Upper")]


# Path and query parameters of the API, described once for the OpenAPI document.
ModelName = Annotated[str, Path(description="A model of the index, by its name in URLs (e.g. toy-2l); see GET /api")]
SourceSlug = Annotated[str, Path(description="A source of the model (e.g. 1-mlp, 1-res-pre-sae); see GET /api/{model}")]
UnitIndex = Annotated[
    int,
    Path(
        description="The unit's index in its source, from 0; past the last unit: 404", json_schema_extra={"minimum": 0}
    ),
]
SequenceNumber = Annotated[
    int, Path(description="A corpus sequence's number, from 0; past the last: 404", json_schema_extra={"minimum": 0})
]
ExportFormat = Annotated[str, Path(description="parquet or jsonl (any other: 404)")]
Text = Annotated[
    str,
    Query(
        description=f"The text (BOS is prepended); CRLF and CR line ends read as LF. {TEXT_RULE}",
        json_schema_extra=TEXT_SCHEMA,
    ),
]


def _or_empty(schema: dict) -> dict:
    # The pages' links and forms send `name=` for "the default": the schema says so.
    return {"anyOf": [schema, {"type": "string", "maxLength": 0}]}


UnitText = Annotated[
    str | None,
    Query(
        description=f"Your text: adds `live`, the unit's activation on every token of it. {TEXT_RULE}",
        json_schema_extra={"anyOf": [{"type": "string", **TEXT_SCHEMA}]},
    ),
]
UnitBand = Annotated[
    str | None,
    Query(
        description="The example set shown: top (default; also empty) or a band number (B0 = the lowest; "
        "past the unit's bands: 404)",
        json_schema_extra={"anyOf": [{"type": "string", "enum": ["top", ""]}, {"type": "integer", "minimum": 0}]},
    ),
]
UnitPage = Annotated[
    str | None,
    Query(
        description="Page of the example set shown, from 1 (empty: 1); past the last page: 404",
        json_schema_extra=_or_empty({"type": "integer", "minimum": 1}),
    ),
]
UnitPerPage = Annotated[
    str | None,
    Query(
        description=f"Examples per page, 1 to {EXAMPLES_PER_PAGE_MAX} (empty: {EXAMPLES_PER_PAGE})",
        json_schema_extra=_or_empty({"type": "integer", "minimum": 1, "maximum": EXAMPLES_PER_PAGE_MAX}),
    ),
]
UnitOpen = Annotated[
    str | None,
    Query(
        description="The expanded example, as SEQ:POS (empty: none); a sequence or position the index lacks: 404",
        json_schema_extra={"anyOf": [{"type": "string", "pattern": "^([0-9]+:[0-9]+)?$"}]},
    ),
]
SearchText = Annotated[
    str | None,
    Query(
        description=f"A text: units ranked by their activation on it. {TEXT_RULE}",
        json_schema_extra={"anyOf": [{"type": "string", **TEXT_SCHEMA}]},
    ),
]
Pos = Annotated[
    int | None,
    Query(
        description="The token selected, from 0 (BOS); past the text's last token: 404",
        json_schema_extra={"anyOf": [{"type": "integer", "minimum": 0}]},
    ),
]

# The explain routes' parameters: text as the pages' forms send it (empty: the default),
# parsed and checked by explain_data.parse_form and check_settings.
ExplainSeq = Annotated[
    str | None,
    Query(
        description="A stored sequence (with pos): the example to explain; past the last: 404",
        json_schema_extra=_or_empty({"type": "integer", "minimum": 0}),
    ),
]
ExplainPos = Annotated[
    str | None,
    Query(
        description="The focus position, from 1 (0 is BOS; past the last measured one: 404). With text: "
        "default its last measured token",
        json_schema_extra=_or_empty({"type": "integer", "minimum": 0}),
    ),
]
ExplainText = Annotated[
    str | None,
    Query(
        description=f"Your text instead of a stored example (BOS is prepended). {TEXT_RULE}",
        json_schema_extra=_or_empty({"type": "string", **TEXT_SCHEMA}),
    ),
]
ExplainMethod = Annotated[
    str | None,
    Query(
        description="How a token is ablated: replace (default: swapped for the baseline token) or noise "
        "(Gaussian noise added to its embedding)",
        json_schema_extra={"anyOf": [{"type": "string", "enum": ["replace", "noise", ""]}]},
    ),
]
ExplainBaseline = Annotated[
    str | None,
    Query(
        description="replace: the token id swapped in (default the model's BOS/EOS id); past the vocabulary: 404",
        json_schema_extra=_or_empty({"type": "integer", "minimum": 0}),
    ),
]
ExplainSigma = Annotated[
    str | None,
    Query(
        description="noise: its scale, in per-dimension stds of W_E's rows (default 1)",
        json_schema_extra=_or_empty({"type": "number", "exclusiveMinimum": 0, "maximum": 100}),
    ),
]
ExplainDraws = Annotated[
    str | None,
    Query(
        description="noise: draws averaged (default 8)",
        json_schema_extra=_or_empty({"type": "integer", "minimum": 1, "maximum": 32}),
    ),
]
ExplainSeed = Annotated[
    str | None,
    Query(
        description="noise: the draws' seed, 0 to 2^32 - 1 (default 0)",
        json_schema_extra=_or_empty({"type": "integer", "minimum": 0, "maximum": 2**32 - 1}),
    ),
]
ExplainThreshold = Annotated[
    str | None,
    Query(
        description="The share of the full activation a minimal example keeps at least (default 0.9)",
        json_schema_extra=_or_empty({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
    ),
]

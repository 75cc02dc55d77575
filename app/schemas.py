"""Shapes of the JSON API, for the OpenAPI schema at /docs (and checked by the tests).

The routes return the page data directly (fast); these models document it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from actscope.app.params import K_MAX, TEXT_RULE, TEXT_SCHEMA

TokenBytes = Annotated[
    list[str | None],
    Field(
        description="Per token: its bytes in hex (e.g. 'c3') where they are not valid UTF-8 on their own "
        "(its entry of `tokens` then holds U+FFFD), else null"
    ),
]


class ErrorDetail(BaseModel):
    status: int
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


class SourceOut(BaseModel):
    slug: str
    hook_name: str = Field(description="TransformerLens hook name, e.g. blocks.1.mlp.hook_post")
    kind: str = Field(description="The unit kind: its name in the kind registry, e.g. neuron, sae or direction")
    label: str = Field(description="What one of its units is called, e.g. neuron, SAE feature, attention head")
    layer: int
    n_units: int
    band_basis: str
    description: str | None = Field(
        None, description="What the activation is beyond the hook, e.g. a head metric's definition; else null"
    )


class CorpusOut(BaseModel):
    name: str = Field(description="The dataset spec (a built-in corpus, a Hub name, or local files by file name)")
    source: str = Field(description='"built-in", "local files", "Hugging Face Hub", or "" for older indexes')
    description: str


class ModelOut(BaseModel):
    model: str
    n_layers: int
    d_model: int
    d_vocab: int
    n_ctx: int
    ctx: int = Field(description="Sequence length of the index, BOS included")
    n_sequences: int
    n_tokens: int = Field(description="Indexed tokens, BOS excluded")
    sources: list[SourceOut]
    index: str = Field(description="The index file the model is served from (its `file` in `GET /api`'s `indexes`)")


class IndexOut(BaseModel):
    file: str = Field(
        description="The index file's name (with the folders that tell it apart, when two served files share a name)"
    )
    models: list[str] = Field(description="The models served from it")
    corpus: CorpusOut
    built_at: str | None = Field(description="When the index was written (UTC)")
    meta: dict[str, Any] = Field(description="The run record, absolute paths reduced to file names")


class HomeOut(BaseModel):
    models: list[ModelOut] = Field(description="Every model served, from every index file")
    n_tokens: int
    n_sequences: int
    corpus: CorpusOut = Field(description="The corpus of the first index file (see `indexes` for each)")
    built_at: str | None = Field(description="When the first index file was written (UTC)")
    meta: dict[str, Any] = Field(description="The run record of the first index file, paths reduced to file names")
    indexes: list[IndexOut] = Field(description="The index files served, each with its corpus and run record")


class UnitRowOut(BaseModel):
    index: int
    max: float
    mean: float
    density: float
    cos_in_out: float | None
    top_token_id: int | None
    top_token: str | None


class ColumnOut(BaseModel):
    key: str = Field(description="The column's `sort` value")
    label: str
    help: str = Field(description="What the column holds")


class SourceTableOut(BaseModel):
    model: str
    source: SourceOut
    sort: str
    order: str
    q: str
    min_density: float | None = Field(description="Lower density bound used, a fraction of indexed tokens")
    max_density: float | None = Field(description="Upper density bound used, a fraction of indexed tokens")
    hide_dead: bool = Field(description="Whether dead units (density 0) are left out")
    hide_dead_default: bool = Field(description="The source kind's default for hide_dead")
    n_dead: int = Field(description="Dead units of the source: never above 0 on an indexed token")
    columns: list[ColumnOut] = Field(description="The columns the source has a value in, which it can be sorted by")
    page: int
    per_page: int
    n_pages: int
    total: int = Field(description="Units kept by the filters")
    units: list[UnitRowOut]
    prev_page: str | None = Field(description="The page before, as a page URL (densities in percent there)")
    next_page: str | None


class StrongestSourceOut(BaseModel):
    pos: int = Field(description="Sequence position of the source the focus token attends to most, BOS aside")
    weight: float = Field(description="A[focus, pos]")
    token_id: int
    token: str
    in_window: bool = Field(description="The source is among the example's tokens")
    url: str = Field(description="The example's whole sequence")


class AttentionOut(BaseModel):
    weights: list[float] = Field(description="A[focus, s] for every token of the example (0 after the focus)")
    bos: float = Field(description="A[focus, 0], the attention to BOS")
    strongest: StrongestSourceOut


class UnitAttentionOut(BaseModel):
    hook: str = Field(description="The attention pattern hook")
    head: int
    error: str | None = Field(description="Why the examples have no attention (live inference failed), else null")


class ExampleOut(BaseModel):
    seq: int
    pos: int = Field(description="Focus position in its sequence (0 is BOS)")
    act: float = Field(description="Activation at the focus token")
    start: int = Field(description="Sequence position of tokens[0]")
    tokens: list[str]
    token_ids: list[int]
    token_bytes: TokenBytes
    acts: list[float] = Field(description="One activation per token")
    focus: int = Field(description="Index of the focus token in tokens")
    attention: AttentionOut | None = Field(
        None,
        description="Attention heads, the examples of the shown set's page: where the focus token attends "
        "(computed live; null when live inference failed)",
    )


class HistogramOut(BaseModel):
    edges: list[float]
    counts: list[int]


class StatsOut(BaseModel):
    max: float
    min: float
    mean: float
    std: float
    density: float = Field(description="Share of indexed tokens with activation > 0")
    n_tokens: int
    n_fired: int
    histogram: HistogramOut


class BandOut(BaseModel):
    band: int = Field(description="Its number, 0 for the lowest; stable: `band=N` always means the same band")
    name: str = Field(description='Its quantile range, e.g. "top 1%", "90–95%", "bottom 50%"')
    label: str = Field(description='Its name with what it is a quantile of, e.g. "top 1% of active tokens"')
    q_lo: float
    q_hi: float
    lo: float
    hi: float
    count: int
    share: float = Field(description="Share of all indexed tokens inside the band")
    empty: bool = Field(description="No indexed token fell inside it (count 0); pages offer no tab for it")
    stored: int = Field(description="Examples stored for it (a uniform random sample, `--band-size`)")
    examples: list[ExampleOut]


class ShownOut(BaseModel):
    band: str = Field(description='The example set the page shows: "top" or a band number')
    page: int
    per_page: int
    n_pages: int
    stored: int = Field(description="Examples stored for the set")
    first: int = Field(description="Index of the page's first example in the set's examples")
    count: int = Field(description="Examples on the page: the set's examples[first:first + count]")
    empty: bool = Field(description="The set is empty (a band no token fell in, or no top examples)")
    prev_page: str | None
    next_page: str | None


class OpenOut(BaseModel):
    seq: int
    pos: int
    url: str = Field(description="The sequence's page, tinted by this unit")
    on_page: bool = Field(description="The example is among those the page shows")


class LogitOut(BaseModel):
    token: str
    token_id: int
    token_bytes: str | None = Field(
        description="The token's bytes in hex where they are not valid UTF-8 on their own, else null"
    )
    value: float


class LogitsOut(BaseModel):
    top: list[LogitOut]
    bottom: list[LogitOut]


class TwinOut(BaseModel):
    source: str = Field(description="The twin source's slug")
    examples_by: str = Field(description="What the twin's examples are ranked by")
    url: str = Field(description="The same unit's page in the twin source")


class UnitOut(BaseModel):
    model: str
    source: SourceOut
    index: int
    examples_by: str = Field(
        description='What the examples are ranked by: "activation", or "direct effect on the next token" '
        "for a --dla twin (the unit's effect on the logit of the token that comes next)"
    )
    twin: TwinOut | None = Field(
        description="The same unit ranked the other way: a source's --dla twin, or the source a twin is of"
    )
    stats: StatsOut
    cos_in_out: float | None = Field(description="cos(w_in, w_out), neurons only")
    dead: bool = Field(description="The unit never fired (activation > 0) on an indexed token")
    n_dead: int = Field(description="Dead units in the source")
    scale: float
    top: list[ExampleOut]
    bands: list[BandOut]
    logits: LogitsOut | None = Field(description="null for units without one output direction (attention heads)")
    attention: UnitAttentionOut | None = Field(
        None, description="Attention heads: the pattern their examples' `attention` comes from; else null"
    )
    links: dict[str, str | None] = Field(
        description="prev/next: the neighbouring units that fired (dead ones skipped); prev_any/next_any: the "
        "units at index -1/+1; random (a unit that fired), random_dead (null without dead units), source; "
        "compare: this unit beside itself at the other hooks of its layer (null if none)"
    )
    band: str
    shown: ShownOut
    open: OpenOut | None = Field(description="The expanded example (`open=SEQ:POS`)")
    text: str | None
    live: LiveUnitOut | None = None
    other_hooks: list[OtherHookOut] = Field(
        description="The same unit at the other hooks of its layer (a neuron's hook_pre, hook_mid, hook_post), "
        "where the index has them; links.compare puts them side by side"
    )


class OtherHookOut(BaseModel):
    source: str
    hook_name: str
    url: str = Field(description="The same unit's page at that hook")


class CompareExampleOut(ExampleOut):
    shared_with: list[int] = Field(
        description="The other units (by their place in `units`) whose top examples share this focus token"
    )


class CompareUnitOut(BaseModel):
    ref: str = Field(description="The unit as written in `units`: source/index, or model:source/index")
    model: str
    source: SourceOut
    index: int
    url: str = Field(description="The unit's page")
    dead: bool
    stats: StatsOut
    bands: list[dict[str, Any]] = Field(description="Each band's number, activation range (lo, hi) and count")
    scale: float
    top: list[CompareExampleOut]


class FocusOut(BaseModel):
    seq: int
    pos: int
    url: str = Field(description="The sequence, tinted by the first unit of the pair")


class OverlapPairOut(BaseModel):
    a: int = Field(description="A unit, by its place in `units`")
    b: int
    comparable: bool = Field(description="Both units are of one model (one corpus): their focus tokens compare")
    n_shared: int | None = Field(
        description="Focus tokens (seq, pos) both units' top examples have; null if not comparable"
    )
    shared: list[FocusOut]


class OverlapOut(BaseModel):
    pairs: list[OverlapPairOut]
    in_all: list[FocusOut] | None = Field(
        description="Focus tokens every unit's top examples share (null: units of several models)"
    )


class CorrelationOut(BaseModel):
    a: int = Field(description="A unit, by its place in `units`")
    b: int
    r: float | None = Field(description="Pearson r of the two units' fingerprints (activations on the reservoir)")
    reason: str | None = Field(
        description="Why r is null: a unit too sparse or constant on the reservoir, or two "
        "models whose reservoirs do not line up"
    )


class CompareOut(BaseModel):
    model: str
    units_text: str = Field(description="The units, as the page's URL writes them")
    units: list[CompareUnitOut]
    overlap: OverlapOut | None
    correlations: list[CorrelationOut] | None = Field(description="Every pair's correlation over the reservoir")
    error: str | None = Field(description="Always null here (bad units are a 422)")


class NeighbourOut(BaseModel):
    model: str
    source: str
    index: int
    r: float = Field(description="Pearson r of its fingerprint with the unit's, over the reservoir")
    url: str = Field(description="Its page")
    compare: str = Field(description="The compare view of the two units")


class DecoderNeighbourOut(BaseModel):
    source: str
    index: int
    cos: float = Field(description="Cosine of the two units' decoder directions in the residual stream")
    url: str
    compare: str


class ReservoirRefOut(BaseModel):
    n: int = Field(description="Positions in the reservoir")
    seed: int = Field(description="The --seed they were drawn with")
    url: str = Field(description="The positions (GET /api/{model}/reservoir)")


class OtherModelOut(BaseModel):
    model: str
    reason: str | None = Field(
        description="Why its units are not neighbours of this model's (null: they are, with scope=all)"
    )


class SimilarOut(BaseModel):
    model: str
    source: str
    index: int
    scope: str = Field(description="source, model or all")
    k: int
    url: str = Field(description="The unit's page")
    scopes: dict[str, str] = Field(description="This list in each scope")
    reservoir: ReservoirRefOut | None = Field(description="Null: the index has no fingerprints")
    note: str | None = Field(description="Why `similar` is empty: too sparse or constant on the reservoir")
    similar: list[NeighbourOut] = Field(description="Units whose fingerprints correlate most, largest r first")
    decoder_cosine: list[DecoderNeighbourOut] | None = Field(
        description="SAE features: the features with the closest decoder directions (null for other kinds)"
    )
    models: list[OtherModelOut] = Field(description="The other models served, and whether their units are compared")


class ReservoirPositionOut(BaseModel):
    slot: int
    seq: int
    pos: int
    token_id: int


class ReservoirOut(BaseModel):
    model: str
    n: int
    capacity: int = Field(description="--reservoir (n is smaller when the corpus has fewer eligible positions)")
    seed: int
    positions: list[ReservoirPositionOut] = Field(description="Slot i of every fingerprint is the activation here")


class RandomOut(BaseModel):
    model: str
    source: str
    index: int = Field(description="The unit picked")
    url: str = Field(description="Its JSON URL, as in Location")


class HypothesisExampleOut(ExampleOut):
    matched: list[bool] = Field(description="Per token of the example: whether the regex matched it")


class HypothesisFiguresOut(BaseModel):
    n_sequences: int = Field(description="Sequences tested")
    seqs: list[int] = Field(description="Their numbers (GET /api/{model}/sequences/{seq} gives their tokens)")
    n_tokens: int = Field(description="Tokens scored: every token of the sequences but BOS (and unmeasured ones)")
    n_matched: int = Field(description="Tokens the regex matched")
    n_active: int = Field(description="Tokens whose activation is above the threshold")
    n_active_matched: int = Field(description="Tokens both active and matched")
    precision: float | None = Field(description="n_active_matched / n_active; null when no token is active")
    recall: float | None = Field(description="n_active_matched / n_matched; null when no token is matched")
    auroc: float | None = Field(
        description="ROC AUC of the activation as a score for matched tokens (ties count one half); "
        "null when every token or none is matched"
    )
    false_positives: list[HypothesisExampleOut] = Field(
        description="Active tokens no match explains, highest activation first (one per sequence, at most 5)"
    )
    false_negatives: list[HypothesisExampleOut] = Field(
        description="Matched tokens that are not active, lowest activation first (one per sequence, at most 5)"
    )


class HypothesisOut(HypothesisFiguresOut):
    model: str
    source: str
    index: int
    regex: str
    sequences: int = Field(description="Sequences asked for (all the index has when it has fewer)")
    seed: int
    threshold: float = Field(description="Active means activation > threshold")
    threshold_default: bool = Field(
        description="The threshold is the unit's default: its 99th-percentile band edge, or 0 for a sparse kind"
    )
    top_examples: HypothesisFiguresOut = Field(
        description="The same figures over the sequences of the unit's top examples"
    )


class SequenceOut(BaseModel):
    model: str
    seq: int
    token_ids: list[int] = Field(description="Exactly what was fed to the model, BOS first")
    tokens: list[str]
    token_bytes: TokenBytes


class TruncationOut(BaseModel):
    start: int = Field(description="The sequence position of the minimal example's first token")
    tokens: list[str] = Field(description="The minimal example, from `start` to the focus (the model saw BOS first)")
    token_ids: list[int]
    act: float = Field(description="The focus activation on the minimal example (BOS + tokens)")
    threshold: float = Field(description="The share of the full activation it keeps at least")


class ExplainOut(BaseModel):
    model: str
    source: str
    index: int
    seq: int | None = Field(description="The stored sequence explained; null for a text")
    pos: int = Field(description="The focus: its position in the sequence or text (0 is BOS)")
    text: str | None
    method: str = Field(description="replace or noise")
    sigma: float | None = Field(description="noise: the noise scale, in per-dimension stds of W_E's rows")
    draws: int | None = Field(description="noise: draws averaged")
    seed: int | None = Field(description="noise: the seed of the draws")
    baseline_token_id: int | None = Field(description="replace: the token swapped in")
    tokens: list[str] = Field(description="The window, the same as the stored example's")
    token_ids: list[int]
    token_bytes: TokenBytes
    start: int = Field(description="The sequence position of the window's first token")
    focus: int = Field(description="The focus token's index in the window")
    act: float = Field(description="The focus activation on the whole prefix, from BOS")
    ablated: list[float | None] = Field(
        description="Per window token: the focus activation with that token ablated; null for BOS and after the focus"
    )
    delta: list[float | None] = Field(description="act - ablated per window token (positive: the token helped)")
    truncation: TruncationOut | None = Field(
        description="The shortest suffix ending at the focus that keeps threshold of act; null when none in the window does"
    )
    threshold: float
    url: str = Field(description="This explanation's page")
    unit_url: str


class MinimalExampleOut(BaseModel):
    seq: int
    pos: int
    act: float = Field(description="The focus activation on the whole prefix, computed live")
    start: int = Field(description="The sequence position of the example's window's first token")
    token_ids: list[int] = Field(description="The example's window, where its minimal example is looked for")
    focus: int = Field(description="The focus token's index in the window")
    truncation: TruncationOut | None = Field(
        description="The minimal example; null when no suffix within the window keeps `threshold` of `act`"
    )
    url: str = Field(description="This example's explanation page")


class MinimalOut(BaseModel):
    model: str
    source: str
    index: int
    threshold: float
    n_examples: int = Field(description="Top examples summed up (the first 20 at most)")
    n_found: int = Field(description="Of them, those with a minimal example within their window")
    max_tokens: int | None = Field(
        description="The longest of those minimal examples, in tokens (BOS not counted): every one of the "
        "`n_found` keeps `threshold` within this many tokens; null when none"
    )
    examples: list[MinimalExampleOut]
    url: str
    unit_url: str


class ActivationsIn(BaseModel):
    text: str = Field(
        description=f"Text to run the model on (BOS is prepended). {TEXT_RULE}", json_schema_extra=TEXT_SCHEMA
    )
    source: str = Field(description="Source slug, e.g. 1-mlp")
    index: int | None = Field(
        None,
        description="A unit: its activation on every token; past the source's last unit: 404",
        json_schema_extra={"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}]},
    )
    # Checked by params.check_k, like the k of the try page.
    k: int = Field(5, description="Without index: units per token", json_schema_extra={"minimum": 1, "maximum": K_MAX})


class LiveUnitOut(BaseModel):
    model: str
    source: str
    index: int
    text: str
    tokens: list[str]
    token_ids: list[int]
    token_bytes: TokenBytes
    acts: list[float | None] = Field(
        description="One activation per token; null where it is not measured (a --dla twin's last token, "
        "which has no next token)"
    )
    truncated: bool
    max: float
    ctx: int


class UnitAct(BaseModel):
    index: int
    act: float
    url: str
    pos: int | None = None


class LiveTopOut(BaseModel):
    model: str
    source: str
    text: str
    tokens: list[str]
    token_ids: list[int]
    token_bytes: TokenBytes
    truncated: bool
    k: int
    top: list[list[UnitAct]] = Field(description="Per token: the k units firing most")
    overall: list[UnitAct] = Field(description="Units with the largest activation over the text")
    pos: int | None
    max_per_token: list[float]
    ctx: int


class TrySourceOut(BaseModel):
    source: str
    hook_name: str
    kind: str
    top: list[list[UnitAct]] = Field(description="Per token: the k units of this source firing most")
    overall: list[UnitAct] = Field(description="The k units with the largest activation over the text")
    max_per_token: list[float]


class TryOut(BaseModel):
    model: str
    text: str
    tokens: list[str]
    token_ids: list[int]
    token_bytes: TokenBytes
    truncated: bool
    ctx: int
    k: int
    pos: int | None
    source: str = Field(description="The source whose activations colour the tokens")
    sources: list[TrySourceOut] = Field(description="Every source of the model but control ones")


class SnippetOut(BaseModel):
    seq: int
    pos: int = Field(description="Focus position in its sequence")
    act: float = Field(description="Activation at the focus token")
    start: int = Field(description="Sequence position of tokens[0]")
    tokens: list[str]
    token_ids: list[int]
    token_bytes: TokenBytes
    acts: list[float]
    focus: int = Field(description="Index of the focus token in tokens")


class TokenVariantOut(BaseModel):
    token: str
    token_id: int
    match: str = Field(description='How it matches the query: "exact", "with leading space", "case", ...')
    n_units: int = Field(description="Units whose strongest matching example is on this token")


class SearchHit(BaseModel):
    source: str
    index: int
    n_top_examples: int = Field(description="Top examples of the unit whose focus is one of the matched tokens")
    best_act: float = Field(description="The strongest of those examples' activation")
    token: str = Field(description="The matched token of that example")
    token_id: int
    match: str = Field(description="How that token matches the query")
    top_token: str | None = Field(description="The focus token of the unit's strongest top example")
    top_token_id: int | None
    snippet: SnippetOut | None = Field(description="A short window of the strongest matching example")
    url: str


class SearchOut(BaseModel):
    model: str
    token: str | None = None
    source: str | None = Field(None, description="The token search's source filter")
    variants: list[TokenVariantOut] = Field([], description="The vocabulary's tokens the token matched")
    token_ids: list[int] = []
    total: int = Field(0, description="Units matching the token")
    page: int = 1
    per_page: int
    n_pages: int = 1
    units: list[SearchHit] = Field([], description="One page of them, most matching top examples first")
    prev_page: str | None = None
    next_page: str | None = None
    text: str | None = None
    text_source: str | None = Field(None, description="The source the text search ranks")
    live: LiveTopOut | None = None
    sources: list[dict[str, Any]] = []


UnitOut.model_rebuild()

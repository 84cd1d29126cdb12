"""Request and response models of the HTTP API (with the examples shown in the docs).

Limits that come from settings (item count, text length) are checked by the routers,
since they are not known when these classes are defined.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    field_validator,
    model_validator,
)

SCORE_EXAMPLE = {
    "query": "angle bracket",
    "items": [
        {"id": "100001", "text": "Simpson Strong-Tie 12-Gauge Angle"},
        {"id": "100002", "text": "BEHR Premium Textured DeckOver 1-gal. Tugboat Coating"},
        "Everbilt 3/4 in. Brass FIP Gate Valve",
    ],
    "top_k": None,
    "deadline_ms": 1000,
    "truncate": True,
}


# "Has a character that ``str.strip`` keeps", as a JSON Schema pattern, so the published
# schema refuses exactly what the validator refuses. The class is spelled out because the
# schema's regex dialect (ECMA-262) and Python disagree on what \s is (U+001C..U+001F, U+0085).
NOT_BLANK_PATTERN = "[^" + "".join(c for c in map(chr, range(0x3001)) if c.isspace()) + "]"
QUERY_SCHEMA = {"pattern": NOT_BLANK_PATTERN}


def _integral(value: Any) -> Any:
    """JSON Schema counts 2.0 as an integer; strict mode alone would refuse it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Strict scalars: pydantic's lax mode would take "true", 1 or "0.5" for a bool or a number,
# which the published schema calls invalid (and a client sending them has a bug).
# (BeforeValidator last: placed first it hides ge from the JSON schema.)
PositiveJsonInt = Annotated[int, Field(strict=True, ge=1), BeforeValidator(_integral)]
NonNegativeJsonInt = Annotated[int, Field(strict=True, ge=0), BeforeValidator(_integral)]
CASCADE_FIELD = (
    "Representation packages: re-score the best k items with the cascade's cross-encoder "
    "(the head is ranked above the rest); 0 = off; unset = the server's default."
)
JsonBool = Annotated[bool, Field(strict=True)]
JsonFloat = Annotated[float, Field(strict=True)]


def _valid_unicode(value: str) -> str:
    """Refuse lone UTF-16 surrogates: JSON can spell them (``"\\ud800"``), Unicode cannot.

    The tokenizer (Rust) and the UTF-8 response encoder both fail on them, so they are
    refused here, as text-embeddings-inference's JSON parser does.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"unpaired UTF-16 surrogate \\u{ord(value[exc.start]):04x} at character "
            f"{exc.start}; not valid Unicode"
        ) from None
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]

# A serving name or a package name in the admin API: one path segment, never a path
# (service.models.NAME_PATTERN checks the same).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# A model's name as a request gives it (a loaded serving name or an alias of one).
ModelName = Annotated[str, Field(min_length=1, max_length=256)]
MODEL_FIELD = (
    "A loaded model's name (GET /v1/models lists them; 404 otherwise); unset = the default "
    "model, or the canary for its share of queries."
)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or whitespace")
    return value


# An item's text: valid Unicode and not blank (a blank text has nothing to score; refused
# with the item's field named, like a blank query).
ItemText = Annotated[
    str,
    AfterValidator(_valid_unicode),
    AfterValidator(_not_blank),
    Field(json_schema_extra=QUERY_SCHEMA),
]
# A field that may be absent (None) but is never JSON null: typed without None, so the
# published schema has no null and a null is refused; a default is not validated. (An
# Optional would also name its union member in errors: ``texts.list[...][1]``.)
OptionalTexts = Annotated[list[ItemText], Field(min_length=1)]


class ScoreItem(BaseModel):
    """A candidate to score; a plain string in the request becomes ``{"id": "<index>"}``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256, description="Echoed back with the score.")
    text: ItemText = Field(description="Item text, e.g. the product title; not blank.")


class _ScoreBody(BaseModel):
    """One query and its candidate items (the fields /score and /shadow/score share)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SCORE_EXAMPLE]})

    query: Text = Field(
        description="The search query; must not be blank.", json_schema_extra=QUERY_SCHEMA
    )
    items: list[ScoreItem] = Field(
        min_length=1,
        description="Candidates: objects with id and text, or plain strings (id = index).",
        json_schema_extra={
            "items": {
                "anyOf": [
                    {"$ref": "#/components/schemas/ScoreItem"},
                    {"type": "string", **QUERY_SCHEMA},
                ]
            }
        },
    )
    top_k: PositiveJsonInt | None = Field(
        None, description="Return only the best k items, ranked, instead of input order."
    )
    deadline_ms: PositiveJsonInt | None = Field(
        None, description="Give up (504) after this long; default from the server settings."
    )
    truncate: JsonBool = Field(
        True, description="Cut texts that are too long instead of refusing them (413)."
    )
    cache: JsonBool = Field(
        True, description="False: score every item with the model, not from the score cache."
    )

    _check_query = field_validator("query")(_not_blank)

    @field_validator("items", mode="before")
    @classmethod
    def _strings_to_items(cls, items: Any) -> Any:
        if isinstance(items, list):
            return [
                {"id": str(i), "text": x} if isinstance(x, str) else x for i, x in enumerate(items)
            ]
        return items

    @field_validator("items")
    @classmethod
    def _unique_ids(cls, items: list[ScoreItem]) -> list[ScoreItem]:
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.id in seen:
                raise ValueError(f"duplicate id {item.id!r} at items[{i}]")
            seen.add(item.id)
        return items


class ScoreRequest(_ScoreBody):
    """One query and its candidate items, scored by the named model or the default."""

    model: ModelName | None = Field(None, description=MODEL_FIELD)
    cascade_top_k: NonNegativeJsonInt | None = Field(None, description=CASCADE_FIELD)
    # Positions of the items sent as plain strings: their id is only their index.
    _plain: frozenset[int] = PrivateAttr(default_factory=frozenset)

    @model_validator(mode="wrap")
    @classmethod
    def _note_plain_items(
        cls, data: Any, handler: ModelWrapValidatorHandler[ScoreRequest]
    ) -> ScoreRequest:
        request = handler(data)
        items = data.get("items") if isinstance(data, dict) else None
        if isinstance(items, list):
            request._plain = frozenset(i for i, x in enumerate(items) if isinstance(x, str))
        return request

    def item_ids(self) -> list[str | None]:
        """Each item's id; None for a plain string, which the item store keys by its text."""
        return [None if i in self._plain else item.id for i, item in enumerate(self.items)]


class ShadowScoreRequest(_ScoreBody):
    """``/score``'s request for the teacher (its own schema: a lower item limit)."""


class ModelRef(BaseModel):
    """The model that scored a request: its serving name and its package's version."""

    name: str
    version: str


class ItemScore(BaseModel):
    id: str
    index: int = Field(description="Position of the item in the request.")
    score: float = Field(description="Relevance in [0, 1] (sigmoid of the model's logit).")
    label: str = Field(description="Relevance class of the score (irrelevant, partial, exact).")


class Timing(BaseModel):
    """Where the request's time went, in milliseconds."""

    total_ms: float
    tokenize_ms: float | None = None
    queue_ms: float | None = None
    inference_ms: float | None = None
    batches: int | None = Field(None, description="Inference batches that carried its items.")


class ScoreResponse(BaseModel):
    model: ModelRef
    scores: list[ItemScore] = Field(description="Input order, or ranked best first with top_k.")
    timing: Timing
    truncated: int = Field(0, description="Items whose text was cut to fit the model.")


class RerankRequest(BaseModel):
    """``/rerank``: text-embeddings-inference's request (``texts``), or vLLM's and
    Infinity's (``documents``, ``top_n``, ``return_documents``); extra fields are ignored.

    Exactly one of ``texts`` and ``documents``; the answer takes the shape of the one given.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": ["texts"]}, {"required": ["documents"]}],
            "examples": [
                {
                    "query": "angle bracket",
                    "texts": ["Simpson Strong-Tie 12-Gauge Angle", "Everbilt Brass Gate Valve"],
                    "raw_scores": False,
                    "return_text": True,
                },
                {
                    "model": "minilm-homedepot",
                    "query": "angle bracket",
                    "documents": ["Simpson Strong-Tie 12-Gauge Angle", "Everbilt Brass Gate Valve"],
                    "top_n": 1,
                    "return_documents": True,
                },
            ],
        }
    )

    model: str = Field(None, description=MODEL_FIELD)
    query: Text = Field(json_schema_extra=QUERY_SCHEMA)
    texts: OptionalTexts = Field(None, description="TEI's candidates; not blank.")
    documents: OptionalTexts = Field(
        None, description="vLLM's and Infinity's candidates (instead of texts); not blank."
    )
    top_n: PositiveJsonInt = Field(None, description="Return only the best n results.")
    cascade_top_k: NonNegativeJsonInt = Field(None, description=CASCADE_FIELD)
    truncate: JsonBool = True
    # TEI's values are "Left" and "Right"; only "Right" is served, and "Left" gets a message
    # saying so (hence a plain string checked below rather than a one-value Literal).
    truncation_direction: str = Field(
        "Right",
        description="Only 'Right' (the item text is cut).",
        json_schema_extra={"enum": ["Right"]},
    )
    raw_scores: JsonBool = Field(False, description="Return logits instead of sigmoid scores.")
    return_text: JsonBool = Field(False, description="TEI: echo each text.")
    return_documents: JsonBool = Field(False, description="vLLM, Infinity: echo each document.")
    cache: JsonBool = Field(
        True, description="False: score every item with the model, not from the score cache."
    )

    _check_query = field_validator("query")(_not_blank)

    @field_validator("truncation_direction")
    @classmethod
    def _right_only(cls, value: str) -> str:
        if value != "Right":
            raise ValueError("only 'Right' truncation is supported (the item text is cut)")
        return value


class RerankResult(BaseModel):
    index: int
    score: float
    text: str | None = None


class ShadowRateUpdate(BaseModel):
    """Admin: change the share of /score traffic mirrored to the teacher."""

    model_config = ConfigDict(extra="forbid")

    mirror_rate: JsonFloat = Field(ge=0, le=1)


class ModelPackageUpdate(BaseModel):
    """Admin: serve a model name with a package of the models directory (by name)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"package": "minilm-homedepot"}]}
    )

    package: str = Field(
        pattern=NAME_PATTERN,
        description="A directory name in RELEVANCE_MODELS_DIR (never a path): letters, digits, "
        "'.', '_' or '-', not starting with '.', '_' or '-'.",
    )


class CanaryUpdate(BaseModel):
    """Admin: send a share of the requests that name no model to another loaded model."""

    model_config = ConfigDict(extra="forbid")

    model: ModelName = Field(description="A loaded model, not the default.")
    share: JsonFloat = Field(ge=0, le=1, description="Share of queries, sticky per query.")


class ErrorBody(BaseModel):
    """Every error answer: a message naming the field, a kind, and the field."""

    error: str
    error_type: str
    field: str | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    # 400 is not listed: a body that cannot be parsed at all is a 422 like malformed JSON.
    404: {"model": ErrorBody, "description": "The model named is not loaded."},
    413: {"model": ErrorBody, "description": "Too many items, a text too long, or body too big."},
    415: {"model": ErrorBody, "description": "The body is not application/json."},
    422: {"model": ErrorBody, "description": "Invalid field; the message names it."},
    429: {"model": ErrorBody, "description": "Queue full; retry after the Retry-After header."},
    503: {"model": ErrorBody, "description": "Not ready or shutting down."},
    504: {"model": ErrorBody, "description": "The deadline passed before scoring ended."},
}

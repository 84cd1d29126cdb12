"""Request and response models of the rerank shapes other servers speak.

Cohere's ``/v1/rerank`` (which Jina's API shares) and ``/v2/rerank``, vLLM's answer to a
``documents`` body on ``/rerank``, and Infinity's. text-embeddings-inference's ``/rerank``
request (``texts`` or ``documents``) is :class:`service.schemas.RerankRequest`. Each
model follows what the clients send and parse (the ``cohere`` SDK's response types,
litellm's provider transformations), so their own response models accept the answers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
)

# Optional fields are typed without None and default to None: absent is None, JSON null
# is refused (see service.schemas.OptionalTexts).
from service.schemas import (
    MODEL_FIELD,
    QUERY_SCHEMA,
    ItemText,
    JsonBool,
    PositiveJsonInt,
    Text,
    _integral,
    _not_blank,
)

NonNegativeJsonInt = Annotated[int, Field(strict=True, ge=0), BeforeValidator(_integral)]

# The tags of a document's two forms. pydantic puts a tagged union's tag in an error's
# location (``documents.2.<object>.text``); the error handler leaves these out, so the
# field is named as the client wrote it: ``documents[2]`` or ``documents[2].text``.
STRING_TAG = "<string>"
OBJECT_TAG = "<object>"
UNION_TAGS = frozenset({STRING_TAG, OBJECT_TAG})

DOCUMENTS = ["Simpson Strong-Tie 12-Gauge Angle", {"text": "Everbilt 3/4 in. Brass Gate Valve"}]


class RerankDocument(BaseModel):
    """A document given as an object: its ``text`` is ranked; other fields are ignored."""

    text: ItemText = Field(description="The text to rank; not blank.")


def _document_form(value: Any) -> str | None:
    if isinstance(value, str):
        return STRING_TAG
    if isinstance(value, dict):
        return OBJECT_TAG
    return None


Document = Annotated[
    Annotated[ItemText, Tag(STRING_TAG)] | Annotated[RerankDocument, Tag(OBJECT_TAG)],
    Discriminator(
        _document_form,
        custom_error_type="document_type",
        custom_error_message="must be a string or an object with a text field",
    ),
]


def document_text(document: str | RerankDocument) -> str:
    return document if isinstance(document, str) else document.text


class CohereRerankRequest(BaseModel):
    """Cohere's ``/v1/rerank`` request, which Jina's ``/v1/rerank`` shares.

    Extra fields are ignored. ``max_chunks_per_doc`` is accepted and has no effect: a
    document is one chunk, cut to the model's length.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "minilm-homedepot",
                    "query": "angle bracket",
                    "documents": DOCUMENTS,
                    "top_n": 1,
                    "return_documents": True,
                }
            ]
        }
    )

    model: str = Field(None, description=MODEL_FIELD)
    query: Text = Field(description="Must not be blank.", json_schema_extra=QUERY_SCHEMA)
    documents: list[Document] = Field(
        min_length=1, description="Strings, or objects whose `text` is ranked; not blank."
    )
    top_n: PositiveJsonInt = Field(
        None, description="Return only the best n results (default: all)."
    )
    return_documents: JsonBool = Field(False, description="Echo each document's text.")
    rank_fields: list[Literal["text"]] = Field(None, description="Only `text` is ranked.")
    max_chunks_per_doc: PositiveJsonInt = None
    cache: JsonBool = Field(
        True, description="False: score every item with the model, not from the score cache."
    )

    _check_query = field_validator("query")(_not_blank)


class CohereV2RerankRequest(CohereRerankRequest):
    """Cohere's ``/v2/rerank`` request. ``max_tokens_per_doc`` and ``priority`` are
    accepted and have no effect (documents are cut to the model's length)."""

    max_tokens_per_doc: PositiveJsonInt = None
    priority: NonNegativeJsonInt = None


class InfinityRerankRequest(BaseModel):
    """Infinity's ``/rerank`` request (extra fields are ignored)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "query": "angle bracket",
                    "documents": ["Simpson Strong-Tie 12-Gauge Angle", "Everbilt Gate Valve"],
                    "return_documents": True,
                }
            ]
        }
    )

    model: str = Field(None, description=MODEL_FIELD)
    query: Text = Field(json_schema_extra=QUERY_SCHEMA)
    documents: list[ItemText] = Field(min_length=1, description="Not blank.")
    top_n: PositiveJsonInt = None
    return_documents: JsonBool = False
    raw_scores: JsonBool = Field(False, description="Return logits instead of sigmoid scores.")
    cache: JsonBool = Field(
        True, description="False: score every item with the model, not from the score cache."
    )

    _check_query = field_validator("query")(_not_blank)


class RankedDocument(BaseModel):
    text: str


class RankedResult(BaseModel):
    """One result, best first; ``index`` is the document's position in the request."""

    index: int
    relevance_score: float
    document: RankedDocument | None = None


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    search_units: int = Field(description="One per request, as Cohere bills reranking.")


class ApiMeta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits


class CohereRerankResponse(BaseModel):
    """Cohere's rerank answer (v1 and v2), with Jina's ``model`` as well."""

    id: str
    model: str = Field(description="The model that scored (its serving name).")
    results: list[RankedResult] = Field(description="Best first.")
    meta: ApiMeta


class VllmRerankResponse(BaseModel):
    """vLLM's answer to a ``documents`` body on ``/rerank``."""

    id: str
    model: str
    results: list[RankedResult] = Field(description="Best first.")


class InfinityRankedResult(BaseModel):
    index: int
    relevance_score: float
    document: str | None = Field(None, description="The text, with return_documents.")


class InfinityRerankResponse(BaseModel):
    """Infinity's rerank answer: the document is a string, not an object."""

    object: Literal["rerank"] = "rerank"
    id: str
    model: str
    created: int
    results: list[InfinityRankedResult] = Field(description="Best first.")

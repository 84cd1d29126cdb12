"""The ``cohere`` SDK's v1 and v2 clients, pointed at the service with ``base_url``."""

from __future__ import annotations

import cohere
from clienttools import QUERY, TEXTS, assert_ranking, ranked_reference

MODEL = "minilm-homedepot"


def test_v1_client_reranks_strings_and_objects(service_url: str) -> None:
    expected = ranked_reference(service_url)
    documents: list[str | dict[str, str]] = [
        {"text": t} if i % 2 else t for i, t in enumerate(TEXTS)
    ]
    client = cohere.Client(api_key="unused", base_url=service_url, timeout=30)
    response = client.rerank(
        model=MODEL, query=QUERY, documents=documents, top_n=3, return_documents=True
    )
    got = [(r.index, r.relevance_score) for r in response.results]
    assert_ranking(got, expected[:3])
    assert [r.document.text for r in response.results if r.document] == [
        TEXTS[i] for i, _ in expected[:3]
    ]
    assert response.id
    assert response.meta is not None and response.meta.billed_units is not None
    assert response.meta.billed_units.search_units == 1
    assert response.meta.api_version is not None and response.meta.api_version.version == "1"


def test_v1_client_without_top_n_ranks_everything(service_url: str) -> None:
    expected = ranked_reference(service_url)
    client = cohere.Client(api_key="unused", base_url=service_url, timeout=30)
    response = client.rerank(query=QUERY, documents=TEXTS)
    assert_ranking([(r.index, r.relevance_score) for r in response.results], expected)
    assert all(r.document is None for r in response.results)


def test_v2_client_honours_top_n(service_url: str) -> None:
    expected = ranked_reference(service_url)
    client = cohere.ClientV2(api_key="unused", base_url=service_url, timeout=30)
    response = client.rerank(model=MODEL, query=QUERY, documents=TEXTS, top_n=4)
    assert_ranking([(r.index, r.relevance_score) for r in response.results], expected[:4])
    assert response.meta is not None and response.meta.api_version is not None
    assert response.meta.api_version.version == "2"


def test_v2_client_sees_the_services_refusal(service_url: str) -> None:
    client = cohere.ClientV2(api_key="unused", base_url=service_url, timeout=30)
    try:
        client.rerank(model=MODEL, query=QUERY, documents=["drill", " "])
    except cohere.core.ApiError as exc:
        assert exc.status_code == 422
        assert isinstance(exc.body, dict) and exc.body["field"] == "documents[1]"
    else:
        raise AssertionError("a blank document was accepted")

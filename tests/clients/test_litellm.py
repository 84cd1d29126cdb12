"""litellm's ``rerank`` with each provider whose server shape the service speaks."""

from __future__ import annotations

import litellm
import pytest
from clienttools import QUERY, TEXTS, assert_ranking, ranked_reference

# provider -> the api_base a user gives it: the service's root, except for Infinity,
# whose request is vLLM's byte for byte (the answers differ: its document is a string).
PROVIDERS = {
    "cohere": "",  # /v2/rerank
    "jina_ai": "",  # /v1/rerank
    "hosted_vllm": "",  # /rerank, documents
    "huggingface": "",  # /rerank, texts (TEI)
    "infinity": "/infinity",  # /infinity/rerank
}


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_provider_ranks_as_score_does_and_honours_top_n(service_url: str, provider: str) -> None:
    expected = ranked_reference(service_url)
    response = litellm.rerank(
        model=f"{provider}/minilm-homedepot",
        query=QUERY,
        documents=TEXTS,
        top_n=3,
        api_base=service_url + PROVIDERS[provider],
        api_key="unused",
        timeout=30,
    )
    results = response.results or []
    assert_ranking([(r["index"], r["relevance_score"]) for r in results], expected[:3])
    # litellm asks for the documents back by default; each is the one at its index.
    assert [r["document"]["text"] for r in results] == [TEXTS[i] for i, _ in expected[:3]]


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_provider_without_top_n_gets_every_document(service_url: str, provider: str) -> None:
    expected = ranked_reference(service_url)
    response = litellm.rerank(
        model=f"{provider}/minilm-homedepot",
        query=QUERY,
        documents=TEXTS,
        return_documents=False,
        api_base=service_url + PROVIDERS[provider],
        api_key="unused",
        timeout=30,
    )
    results = response.results or []
    assert_ranking([(r["index"], r["relevance_score"]) for r in results], expected)

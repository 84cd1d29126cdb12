"""The text-embeddings-inference clients: Haystack's ``HuggingFaceTEIRanker``
(huggingface-api-haystack) and LlamaIndex's ``TextEmbeddingInference`` rerank."""

from __future__ import annotations

from clienttools import QUERY, TEXTS, assert_ranking, ranked_reference
from haystack import Document
from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.tei_rerank import TextEmbeddingInference


def test_haystack_tei_ranker(service_url: str) -> None:
    expected = ranked_reference(service_url)
    ranker = HuggingFaceTEIRanker(url=service_url, top_k=4, token=None)
    out = ranker.run(query=QUERY, documents=[Document(content=t) for t in TEXTS])
    got = [(TEXTS.index(d.content or ""), d.score or 0.0) for d in out["documents"]]
    assert_ranking(got, expected[:4])


def test_llama_index_tei_rerank(service_url: str) -> None:
    expected = ranked_reference(service_url)
    rerank = TextEmbeddingInference(base_url=service_url, top_n=5)
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in TEXTS]
    out = rerank.postprocess_nodes(nodes, query_str=QUERY)
    got = [(TEXTS.index(n.node.get_content()), n.score or 0.0) for n in out]
    assert_ranking(got, expected[:5])

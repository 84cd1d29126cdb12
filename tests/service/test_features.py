"""The tokenization contract: where and how a pair is cut, decided in one place.

Characters first (TextLimits), then the query's share of the model's length, then the
tokenizer's cut of the text (only_second); refusals carry positions, not field names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from service.errors import InputTooLong
from service.features import PairEncoder, TextLimits, collate, encode_pairs, load_tokenizer
from service.model_package import load_package

MAX_LENGTH = 64  # the tiny package's


@pytest.fixture(scope="module")
def encoder(tiny_model_package: Path) -> PairEncoder:
    return PairEncoder.for_package(load_package(tiny_model_package))


def plain_tokenizer(package_dir: Path) -> Tokenizer:
    """The package's tokenizer without the service's settings, to count tokens with."""
    tokenizer = Tokenizer.from_file(str(package_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def test_character_limits_cut_or_refuse_by_position() -> None:
    limits = TextLimits(max_query_chars=5, max_text_chars=4)
    query, texts, cut = limits.apply("drills", ["abcd", "abcde", "ab"], truncate=True)
    assert (query, texts, cut.tolist()) == ("drill", ["abcd", "abcd", "ab"], [False, True, False])
    with pytest.raises(InputTooLong) as text:
        limits.apply("drill", ["abcd", "ab", "abcde"], truncate=False)
    assert text.value.index == 2 and text.value.detail.startswith("5 characters exceed")
    with pytest.raises(InputTooLong) as query_error:
        limits.apply("drills", ["a"], truncate=False)
    assert query_error.value.index is None and query_error.value.field == "query"
    # Within the limits nothing changes, whatever truncate says.
    assert limits.apply("drill", ["abcd"], truncate=False)[:2] == ("drill", ["abcd"])


def test_the_endpoint_names_the_field_of_a_position() -> None:
    error = InputTooLong("too long", index=3)
    assert error.named("items[{}].text").body() == {
        "error": "items[3].text: too long",
        "error_type": "payload_too_large",
        "field": "items[3].text",
    }
    assert error.named("texts[{}]").field == "texts[3]"
    assert InputTooLong("too long").named("texts[{}]").field == "query"


def test_the_manifest_sets_length_and_query_share(encoder: PairEncoder) -> None:
    assert encoder.max_length == MAX_LENGTH
    assert encoder.max_query_tokens == MAX_LENGTH // 2 - 2  # half, less [CLS] and [SEP]


def test_a_long_query_keeps_exactly_its_share_of_tokens(
    encoder: PairEncoder, tiny_model_package: Path
) -> None:
    count = plain_tokenizer(tiny_model_package)
    short = "cordless drill"
    assert encoder.fit_query(short, truncate=False) == short
    long_query = " ".join(f"word{i}" for i in range(200))
    fitted = encoder.fit_query(long_query, truncate=True)
    assert long_query.startswith(fitted)
    n_tokens = len(count.encode(fitted, add_special_tokens=False).ids)
    assert n_tokens == encoder.max_query_tokens
    with pytest.raises(InputTooLong) as refused:
        encoder.fit_query(long_query, truncate=False)
    assert (
        refused.value.index is None
        and f"limit of {encoder.max_query_tokens}" in refused.value.detail
    )


def test_only_the_text_is_cut_and_the_query_survives_whole(
    encoder: PairEncoder, tiny_model_package: Path
) -> None:
    count = plain_tokenizer(tiny_model_package)
    query = encoder.fit_query(" ".join(f"q{i}" for i in range(100)), truncate=True)
    pairs = encoder.encode(query, ["short text", "word " * 300], truncate=True)
    assert [p.truncated for p in pairs] == [False, True]
    assert len(pairs[1]) == MAX_LENGTH
    query_ids = count.encode(query, add_special_tokens=False).ids
    for pair in pairs:
        first_segment = pair.input_ids[pair.token_type_ids == 0]
        assert first_segment[1:-1].tolist() == query_ids  # [CLS] query [SEP], uncut
        assert pair.attention_mask.tolist() == [1] * len(pair)


def test_refusing_a_pair_names_its_position_in_the_request(encoder: PairEncoder) -> None:
    texts = ["a", "b", "word " * 300]
    with pytest.raises(InputTooLong) as refused:
        encoder.encode("drill", texts, truncate=False, offset=256)
    assert refused.value.index == 258
    assert f"model's {MAX_LENGTH} tokens" in refused.value.detail
    # A query the text cannot make room for fails as the query's fault.
    with pytest.raises(InputTooLong) as query_error:
        encoder.encode("x " * 200, ["a"], truncate=True)
    assert query_error.value.index is None


def test_service_encoding_equals_what_training_encodes(
    encoder: PairEncoder, tiny_model_package: Path
) -> None:
    texts = ["Simpson Strong-Tie 12-Gauge Angle", "word " * 300, "brass valve"]
    served = collate(encoder.encode("angle bracket", texts, truncate=True))
    tokenizer = load_tokenizer(tiny_model_package / "tokenizer.json", MAX_LENGTH)
    trained = encode_pairs(tokenizer, ["angle bracket"] * 3, texts)
    assert served.keys() == trained.keys()
    for name in served:
        np.testing.assert_array_equal(served[name], trained[name])

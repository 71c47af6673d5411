"""The offline CLIP tokenizer: a real CLIPTokenizer, deterministic, byte-complete, several tokens per English word."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer

from pipeline.model.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    MODEL_MAX_LENGTH,
    OFFLINE_MERGES,
    build_offline_clip_tokenizer,
    byte_to_unicode_alphabet,
    offline_clip_vocabulary,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> CLIPTokenizer:
    return build_offline_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def test_is_a_clip_tokenizer_with_sd_limits(tokenizer: CLIPTokenizer) -> None:
    assert isinstance(tokenizer, CLIPTokenizer)
    assert tokenizer.model_max_length == MODEL_MAX_LENGTH == 77
    assert len(tokenizer) == 2 * 256 + len(OFFLINE_MERGES) + 2
    assert tokenizer.convert_ids_to_tokens([tokenizer.bos_token_id, tokenizer.eos_token_id]) == [BOS_TOKEN, EOS_TOKEN]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_plain_encoding_wraps_with_bos_eos_and_pads_to_77(tokenizer: CLIPTokenizer) -> None:
    ids = tokenizer("jazz with piano", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id
    body = tokenizer("jazz with piano", add_special_tokens=False).input_ids
    assert ids[1 : 1 + len(body)] == body
    assert set(ids[1 + len(body) :]) == {tokenizer.eos_token_id}


def test_english_words_split_into_several_tokens(tokenizer: CLIPTokenizer) -> None:
    prompt = "church bells on sunday"
    tokens = tokenizer.tokenize(prompt)
    assert len(tokens) >= 2 * len(prompt.split())
    assert sum(token.endswith("</w>") for token in tokens) == len(prompt.split())


def test_merges_are_applied(tokenizer: CLIPTokenizer) -> None:
    assert tokenizer.tokenize("the") == ["the</w>"]
    assert tokenizer.tokenize("singing") == ["s", "in", "g", "ing</w>"]


def test_decode_round_trips_lowercased_text(tokenizer: CLIPTokenizer) -> None:
    prompt = "Jazz with Piano, and RAIN!"
    ids = tokenizer(prompt).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "jazz with piano , and rain !"


def test_any_text_tokenizes_without_unknown_tokens(tokenizer: CLIPTokenizer) -> None:
    text = "café 🎹 ß 日本 \t\x01 ~"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids and tokenizer.unk_token_id not in ids


def test_build_is_deterministic(tmp_path: Path) -> None:
    first = build_offline_clip_tokenizer(tmp_path / "a")
    second = build_offline_clip_tokenizer(tmp_path / "b")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    prompt = "lo-fi beat with a sunday piano"
    assert first(prompt).input_ids == second(prompt).input_ids


def test_directory_reloads_with_from_pretrained(tmp_path: Path) -> None:
    built = build_offline_clip_tokenizer(tmp_path)
    reloaded = CLIPTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert reloaded.model_max_length == 77
    assert reloaded("rainy techno").input_ids == built("rainy techno").input_ids


def test_byte_alphabet_matches_byte_level_pre_tokenizer() -> None:
    alphabet = byte_to_unicode_alphabet()
    assert len(alphabet) == len(set(alphabet)) == 256
    assert set(alphabet) == set(pre_tokenizers.ByteLevel.alphabet())
    assert alphabet[ord("a")] == "a" and alphabet[ord(" ")] == "Ġ"


def test_vocabulary_rejects_merge_of_unknown_symbols() -> None:
    with pytest.raises(ValueError, match="merges"):
        offline_clip_vocabulary((("q", "zz"),))


def test_whole_word_merges_make_each_caption_word_one_token(tmp_path: Path) -> None:
    from pipeline.model.tokenizer import bpe_symbols, whole_word_merges

    words = ["church", "bells", "ringing", "fingerpicked", "lo-fi", "hip", "hop"]
    merges = whole_word_merges(words)
    assert merges[: len(OFFLINE_MERGES)] == OFFLINE_MERGES  # the base vocabulary is untouched
    tokenizer = build_offline_clip_tokenizer(tmp_path, merges)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("church bells ringing fingerpicked", add_special_tokens=False).input_ids)
    assert tokens == ["church</w>", "bells</w>", "ringing</w>", "fingerpicked</w>"]
    assert tokenizer("lo-fi hip hop", add_special_tokens=False).input_ids == tokenizer(
        "lo - fi hip hop", add_special_tokens=False
    ).input_ids
    assert len(bpe_symbols("sunday", merges)) > 1  # words outside the list still split into pieces

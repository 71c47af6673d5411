"""Prompt weighting syntax and the chunked, cached CLIP prompt encoder, on a tiny offline CLIP text model."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from pipeline.diffusion.prompts import CHUNK_LENGTH, PromptEncoder, apply_token_weights, parse_weighted_prompt
from pipeline.model.tokenizer import build_offline_clip_tokenizer

HIDDEN_SIZE = 32


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> CLIPTokenizer:
    return build_offline_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def build_text_encoder(tokenizer: CLIPTokenizer, final_norm_bias: float) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = CLIPTextModel(config).eval()
    with torch.no_grad():
        model.final_layer_norm.bias.fill_(final_norm_bias)
    return model


@pytest.fixture(scope="module")
def text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """Like a trained CLIP, its final LayerNorm has a bias, so hidden states have a meaningful mean."""
    return build_text_encoder(tokenizer, final_norm_bias=0.25)


class CountingEncoder(torch.nn.Module):
    """Wraps a text encoder and counts forward calls, to prove cache hits skip the model."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, input_ids: torch.Tensor):
        self.calls += 1
        return self.inner(input_ids)


@pytest.fixture
def counting(text_encoder: CLIPTextModel) -> CountingEncoder:
    return CountingEncoder(text_encoder)


@pytest.fixture
def encoder(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> PromptEncoder:
    return PromptEncoder(tokenizer, text_encoder)


def plain_diffusers_encoding(tokenizer, text_encoder, prompt: str) -> torch.Tensor:
    ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def prompt_of_tokens(tokenizer: CLIPTokenizer, count: int) -> str:
    """A prompt that tokenizes to exactly ``count`` tokens ("xq" is two tokens: 'x', 'q</w>'; "z" is one)."""
    prompt = " ".join(["xq"] * (count // 2) + ["z"] * (count % 2))
    assert len(tokenizer(prompt, add_special_tokens=False).input_ids) == count
    return prompt


# --- parser -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("jazz with piano", [("jazz with piano", 1.0)]),
        ("a (b) c", [("a ", 1.0), ("b", 1.1), (" c", 1.0)]),
        ("((b))", [("b", 1.1 * 1.1)]),
        ("(((b)))", [("b", 1.1**3)]),
        ("(b:1.3) c", [("b", 1.3), (" c", 1.0)]),
        ("(b: 0.5 )", [("b", 0.5)]),
        ("(b:.25)", [("b", 0.25)]),
        ("((b:2) c)", [("b", 2.2), (" c", 1.1)]),
        ("[b]", [("b", 1 / 1.1)]),
        ("[[b]]", [("b", 1 / 1.1 / 1.1)]),
        ("(a [b] c)", [("a ", 1.1), ("b", 1.0), (" c", 1.1)]),
        ("([b)]", [("b", 1.0)]),
        (r"\(b\) \[c\]", [("(b) [c]", 1.0)]),
        (r"back\\slash", [("back\\slash", 1.0)]),
        (r"lone\ backslash", [("lone\\ backslash", 1.0)]),
        (r"(\(b\))", [("(b)", 1.1)]),
        ("(b", [("b", 1.1)]),
        ("a [b", [("a ", 1.0), ("b", 1 / 1.1)]),
        ("a) b]", [("a) b]", 1.0)]),
        ("ratio 2:1) x", [("ratio 2:1) x", 1.0)]),
        ("(time 2:30)", [("time 2", 30.0)]),  # as in A1111, ":number)" always reads as a weight
        ("[b:1.5]", [("b:1.5", 1 / 1.1)]),
        ("(b:x)", [("b:x", 1.1)]),
        ("a (b)(c)", [("a ", 1.0), ("bc", 1.1)]),
        ("", [("", 1.0)]),
        ("()", [("", 1.0)]),
    ],
)
def test_parse_weighted_prompt(text: str, expected: list[tuple[str, float]]) -> None:
    parsed = parse_weighted_prompt(text)
    assert [span for span, _ in parsed] == [span for span, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected])


def test_parse_rejects_non_string() -> None:
    with pytest.raises(ValueError, match="prompt"):
        parse_weighted_prompt(None)  # type: ignore[arg-type]


# --- unweighted encoding matches diffusers ----------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["jazz with piano", "", "Church bells on Sunday, lo-fi!"])
def test_unweighted_prompt_equals_plain_diffusers_encoding(encoder, tokenizer, text_encoder, prompt: str) -> None:
    expected = plain_diffusers_encoding(tokenizer, text_encoder, prompt)
    result = encoder.encode(prompt)
    assert result.shape == (1, 77, HIDDEN_SIZE)
    assert torch.equal(result, expected)


def test_prompt_of_exactly_75_tokens_is_one_plain_chunk(encoder, tokenizer, text_encoder) -> None:
    prompt = prompt_of_tokens(tokenizer, 75)
    assert torch.equal(encoder.encode(prompt), plain_diffusers_encoding(tokenizer, text_encoder, prompt))


# --- weights ----------------------------------------------------------------------------------------------------------


def test_weight_scales_exactly_the_weighted_tokens_then_restores_the_mean(encoder, tokenizer, text_encoder) -> None:
    weighted = encoder.encode("jazz (piano:1.5) drums")
    plain = plain_diffusers_encoding(tokenizer, text_encoder, "jazz piano drums")
    assert not torch.allclose(weighted, plain)

    jazz_count = len(tokenizer("jazz ", add_special_tokens=False).input_ids)
    piano_count = len(tokenizer("piano", add_special_tokens=False).input_ids)
    piano_positions = range(1 + jazz_count, 1 + jazz_count + piano_count)  # after BOS and "jazz"
    weights = torch.ones(77)
    weights[list(piano_positions)] = 1.5
    rescale = plain.mean() / (plain * weights[None, :, None]).mean()

    ratio = weighted / plain
    for position in range(77):
        expected_factor = rescale * weights[position]
        torch.testing.assert_close(ratio[0, position], expected_factor.expand(HIDDEN_SIZE), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(weighted.mean(), plain.mean(), rtol=1e-5, atol=1e-6)


def test_weights_without_a_meaningful_mean_scale_only_the_weighted_tokens(tokenizer) -> None:
    unbiased = build_text_encoder(tokenizer, final_norm_bias=0.0)  # hidden-state mean is rounding noise
    weighted = PromptEncoder(tokenizer, unbiased).encode("jazz (piano:1.5) drums")
    plain = plain_diffusers_encoding(tokenizer, unbiased, "jazz piano drums")
    piano = slice(5, 8)  # BOS + 'j','a','z','z</w>' then 'pi','an','o</w>'
    torch.testing.assert_close(weighted[:, piano], plain[:, piano] * 1.5)
    assert torch.equal(weighted[:, :5], plain[:, :5])
    assert torch.equal(weighted[:, 8:], plain[:, 8:])


def test_down_weighting_lowers_the_tokens_relative_share(encoder) -> None:
    plain = encoder.encode("jazz piano drums")
    softer = encoder.encode("jazz [piano] drums")
    piano = slice(5, 8)  # BOS + 'j','a','z','z</w>' then 'pi','an','o</w>'
    share_plain = plain[0, piano].norm() / plain[0].norm()
    share_softer = softer[0, piano].norm() / softer[0].norm()
    assert share_softer < share_plain


def test_apply_token_weights_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="weights"):
        apply_token_weights(torch.ones(1, 77, 4), torch.ones(76))


# --- long prompts -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("token_count", "length"), [(76, 154), (150, 154), (151, 231), (225, 231)])
def test_long_prompts_are_encoded_in_77_token_chunks(encoder, tokenizer, token_count: int, length: int) -> None:
    assert encoder.encode(prompt_of_tokens(tokenizer, token_count)).shape == (1, length, HIDDEN_SIZE)


def test_each_chunk_is_wrapped_and_encoded_on_its_own(encoder, tokenizer, text_encoder) -> None:
    prompt = prompt_of_tokens(tokenizer, 100)
    all_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    chunks = encoder.tokenize(prompt)
    assert [len(chunk.input_ids) for chunk in chunks] == [77, 77]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert chunks[0].input_ids == [bos, *all_ids[:75], eos]
    assert chunks[1].input_ids == [bos, *all_ids[75:], eos] + [tokenizer.pad_token_id] * 50

    result = encoder.encode(prompt)
    with torch.no_grad():
        for index, chunk in enumerate(chunks):
            expected = text_encoder(torch.tensor([chunk.input_ids]))[0]
            assert torch.equal(result[:, index * 77 : (index + 1) * 77], expected)


def test_prompts_beyond_max_chunks_are_cut(tokenizer, text_encoder) -> None:
    encoder = PromptEncoder(tokenizer, text_encoder, max_chunks=3)
    long_result = encoder.encode(prompt_of_tokens(tokenizer, 400))
    assert long_result.shape == (1, 231, HIDDEN_SIZE)
    assert torch.equal(long_result, encoder.encode(prompt_of_tokens(tokenizer, 226)))
    all_ids = tokenizer(prompt_of_tokens(tokenizer, 400), add_special_tokens=False).input_ids
    last_chunk = encoder.tokenize(prompt_of_tokens(tokenizer, 400))[-1]
    assert last_chunk.input_ids == [tokenizer.bos_token_id, *all_ids[150:225], tokenizer.eos_token_id]

    single = PromptEncoder(tokenizer, text_encoder, max_chunks=1)
    assert single.encode(prompt_of_tokens(tokenizer, 200)).shape == (1, 77, HIDDEN_SIZE)


def test_weights_follow_their_tokens_into_later_chunks(encoder, tokenizer) -> None:
    head = prompt_of_tokens(tokenizer, 80)
    chunks = encoder.tokenize(f"{head} (xq:2)")
    assert len(chunks) == 2
    assert chunks[0].weights == [1.0] * 77
    assert chunks[1].weights[1:8] == [1.0] * 5 + [2.0, 2.0]
    assert chunks[1].weights[8:] == [1.0] * 69


# --- encode_many ------------------------------------------------------------------------------------------------------


def test_encode_many_pads_shorter_prompts_with_empty_prompt_chunks(encoder, tokenizer) -> None:
    short, long = "jazz with piano", prompt_of_tokens(tokenizer, 160)
    padded_short, padded_long = encoder.encode_many([short, long])
    assert padded_short.shape == padded_long.shape == (1, 231, HIDDEN_SIZE)
    assert torch.equal(padded_long, encoder.encode(long))
    assert torch.equal(padded_short[:, :77], encoder.encode(short))
    empty = encoder.encode("")
    assert torch.equal(padded_short[:, 77:154], empty)
    assert torch.equal(padded_short[:, 154:], empty)
    torch.lerp(padded_short, padded_long, 0.5)  # interpolation between them is now well defined


def test_encode_many_keeps_equal_lengths_and_order(encoder) -> None:
    results = encoder.encode_many(["rain", "techno"])
    assert [tuple(result.shape) for result in results] == [(1, 77, HIDDEN_SIZE)] * 2
    assert torch.equal(results[1], encoder.encode("techno"))
    assert encoder.encode_many([]) == []
    with pytest.raises(ValueError, match="prompts"):
        encoder.encode_many("rain")  # type: ignore[arg-type]


# --- cache ------------------------------------------------------------------------------------------------------------


def test_cache_hit_skips_the_text_encoder(tokenizer, counting: CountingEncoder) -> None:
    encoder = PromptEncoder(tokenizer, counting)
    first = encoder.encode("jazz with piano")
    calls_after_first = counting.calls
    assert calls_after_first == 1
    again = encoder.encode("jazz with piano")
    assert counting.calls == calls_after_first
    assert torch.equal(first, again)
    encoder.encode(prompt_of_tokens(tokenizer, 100))
    assert counting.calls == calls_after_first + 2  # one call per chunk


def test_cache_evicts_least_recently_used(tokenizer, counting: CountingEncoder) -> None:
    encoder = PromptEncoder(tokenizer, counting, cache_size=2)
    for prompt in ("a", "b", "a", "c"):  # "a" is refreshed, so "c" evicts "b"
        encoder.encode(prompt)
    assert counting.calls == 3
    assert encoder.cache_info() == (2, 2)
    encoder.encode("a")
    encoder.encode("c")
    assert counting.calls == 3
    encoder.encode("b")
    assert counting.calls == 4
    assert encoder.cache_info() == (2, 2)


def test_zero_cache_size_never_caches(tokenizer, counting: CountingEncoder) -> None:
    encoder = PromptEncoder(tokenizer, counting, cache_size=0)
    encoder.encode("rain")
    encoder.encode("rain")
    assert counting.calls == 2
    assert encoder.cache_info() == (0, 0)


def test_clear_cache_forces_reencoding(tokenizer, counting: CountingEncoder) -> None:
    encoder = PromptEncoder(tokenizer, counting)
    encoder.encode("rain")
    encoder.clear_cache()
    encoder.encode("rain")
    assert counting.calls == 2


# --- device, dtype, validation ----------------------------------------------------------------------------------------


def test_result_follows_encoder_dtype_or_the_given_one(tokenizer, text_encoder) -> None:
    default = PromptEncoder(tokenizer, text_encoder).encode("rain")
    assert default.dtype == torch.float32 and default.device.type == "cpu"
    doubled = PromptEncoder(tokenizer, text_encoder, device="cpu", dtype=torch.float64).encode("(rain)")
    assert doubled.dtype == torch.float64
    assert not doubled.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"cache_size": -1}, "cache_size"), ({"max_chunks": 0}, "max_chunks"), ({"max_chunks": 1.5}, "max_chunks")],
)
def test_constructor_rejects_bad_settings(tokenizer, text_encoder, kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PromptEncoder(tokenizer, text_encoder, **kwargs)


def test_encode_rejects_non_string(encoder) -> None:
    with pytest.raises(ValueError, match="prompt"):
        encoder.encode(42)  # type: ignore[arg-type]


def test_chunk_length_constant_matches_clip() -> None:
    assert CHUNK_LENGTH == 77

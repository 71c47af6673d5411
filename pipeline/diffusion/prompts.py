"""Prompt weighting and chunked long-prompt embedding.

Two concepts live here because each only makes sense with the other: :func:`parse_weighted_prompt` reads the A1111
attention syntax into ``(text, weight)`` spans, and :class:`PromptEncoder` turns those spans into the CLIP hidden
states Stable Diffusion conditions on, lifting CLIP's 77-token limit by encoding 75-token chunks separately.

Syntax (the A1111 convention the riffusion community uses):

* ``(words)`` multiplies the weight of ``words`` by 1.1; nesting multiplies again: ``((words))`` is 1.21.
* ``(words:1.3)`` multiplies by 1.3 instead of 1.1.
* ``[words]`` divides by 1.1.
* ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are the literal characters.
* An opening bracket that is never closed acts as if closed at the end of the prompt; a closing bracket with no
  matching opener is kept as literal text, so no prompt is ever rejected for its brackets.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

BRACKET_FACTOR = 1.1
TOKENS_PER_CHUNK = 75
CHUNK_LENGTH = TOKENS_PER_CHUNK + 2
# A hidden-state mean smaller than this fraction of the mean magnitude is treated as zero (see apply_token_weights).
NEGLIGIBLE_MEAN = 1e-3

# One lexical unit per match, tried in order: an escape, an explicit weight closing a round group, a bracket, or a run
# of ordinary text (a lone backslash or colon counts as text).
_PROMPT_UNIT = re.compile(
    r"""
    (?P<escape>\\[()\[\]\\])
    | :\s*(?P<weight>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)
    | (?P<bracket>[()\[\]])
    | (?P<text>[^\\()\[\]:]+|[\\:])
    """,
    re.VERBOSE,
)


@dataclass
class _OpenGroup:
    """A bracket seen but not yet closed: where its spans start in the output, and which kind it is."""

    start: int
    bracket: str


def _scale_spans(spans: list[list], start: int, factor: float) -> None:
    for span in spans[start:]:
        span[1] *= factor


def _merge_equal_neighbours(spans: list[list]) -> list[tuple[str, float]]:
    merged: list[tuple[str, float]] = []
    for text, weight in spans:
        if not text:
            continue
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged


def parse_weighted_prompt(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into ``(text, weight)`` spans following the A1111 attention syntax described in this module.

    Adjacent spans of equal weight are merged, empty spans dropped; a prompt with no text gives ``[("", 1.0)]`` so
    callers always get at least one span.
    """
    if not isinstance(text, str):
        raise ValueError(f"prompt: expected a str, got {type(text).__name__}")
    spans: list[list] = []
    open_groups: list[_OpenGroup] = []

    def close_innermost(bracket: str, factor: float) -> bool:
        # Round and square groups close independently, so "([a)]" still weights "a" by both.
        for index in range(len(open_groups) - 1, -1, -1):
            if open_groups[index].bracket == bracket:
                _scale_spans(spans, open_groups.pop(index).start, factor)
                return True
        return False

    for unit in _PROMPT_UNIT.finditer(text):
        literal = unit.group(0)
        if unit.group("escape"):
            spans.append([literal[1], 1.0])
        elif unit.group("weight") is not None:
            if not close_innermost("(", float(unit.group("weight"))):
                spans.append([literal, 1.0])
        elif literal in "([":
            open_groups.append(_OpenGroup(start=len(spans), bracket=literal))
        elif literal == ")":
            if not close_innermost("(", BRACKET_FACTOR):
                spans.append([literal, 1.0])
        elif literal == "]":
            if not close_innermost("[", 1.0 / BRACKET_FACTOR):
                spans.append([literal, 1.0])
        else:
            spans.append([literal, 1.0])

    while open_groups:
        group = open_groups.pop()
        factor = BRACKET_FACTOR if group.bracket == "(" else 1.0 / BRACKET_FACTOR
        _scale_spans(spans, group.start, factor)

    return _merge_equal_neighbours(spans) or [("", 1.0)]


@dataclass(frozen=True)
class TokenChunk:
    """One CLIP window: 77 token ids (BOS, up to 75 prompt tokens, EOS, padding) and a weight per position."""

    input_ids: list[int]
    weights: list[float]

    @property
    def is_weighted(self) -> bool:
        return any(weight != 1.0 for weight in self.weights)


class PromptEncoder:
    """Turn prompts into Stable Diffusion text conditioning, with weights, long prompts and an LRU cache.

    ``encode`` returns ``last_hidden_state`` of the CLIP text model shaped ``(1, 77 * chunks, dim)``. Prompt tokens
    are split into chunks of 75; each chunk is wrapped as ``[BOS] + tokens + [EOS] + padding`` and encoded on its
    own, and the chunks are concatenated along the sequence axis. Tokens past ``max_chunks * 75`` are dropped. An
    unweighted prompt of up to 75 tokens gives exactly the tensor of the plain diffusers call.

    Weights follow the A1111 rule, applied per chunk: every position's hidden state is multiplied by its token's
    weight (BOS, EOS and padding keep 1.0), then the whole chunk is rescaled so its mean equals the unweighted mean.
    The rescale keeps the overall magnitude the UNet was trained on, so a weight shifts emphasis between tokens
    rather than making the whole prompt louder. See :func:`apply_token_weights` for when the rescale is skipped.

    Returned tensors are shared with the cache: treat them as read-only.
    """

    def __init__(
        self,
        tokenizer,
        text_encoder: torch.nn.Module,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        cache_size: int = 256,
        max_chunks: int = 3,
    ) -> None:
        if not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size: expected an int >= 0, got {cache_size!r}")
        if not isinstance(max_chunks, int) or max_chunks < 1:
            raise ValueError(f"max_chunks: expected an int >= 1, got {max_chunks!r}")
        for name in ("bos_token_id", "eos_token_id"):
            if getattr(tokenizer, name, None) is None:
                raise ValueError(f"tokenizer: has no {name}")
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        parameter = next(text_encoder.parameters())
        self.encoder_device = parameter.device
        self.device = torch.device(device) if device is not None else parameter.device
        self.dtype = dtype if dtype is not None else parameter.dtype
        self.cache_size = cache_size
        self.max_chunks = max_chunks
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_lock = threading.Lock()

    def tokenize(self, prompt: str) -> list[TokenChunk]:
        """Parse weights, tokenize each span, and pack the tokens into at most ``max_chunks`` 77-token chunks."""
        token_ids: list[int] = []
        token_weights: list[float] = []
        for text, weight in parse_weighted_prompt(prompt):
            span_ids = self.tokenizer(text, add_special_tokens=False, truncation=False).input_ids
            token_ids += span_ids
            token_weights += [weight] * len(span_ids)

        limit = self.max_chunks * TOKENS_PER_CHUNK
        token_ids, token_weights = token_ids[:limit], token_weights[:limit]
        starts = range(0, max(len(token_ids), 1), TOKENS_PER_CHUNK)
        return [
            self._wrap_chunk(
                token_ids[start : start + TOKENS_PER_CHUNK], token_weights[start : start + TOKENS_PER_CHUNK]
            )
            for start in starts
        ]

    def _wrap_chunk(self, ids: list[int], weights: list[float]) -> TokenChunk:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        padding = CHUNK_LENGTH - len(ids) - 2
        input_ids = [self.tokenizer.bos_token_id, *ids, self.tokenizer.eos_token_id] + [pad_id] * padding
        return TokenChunk(input_ids=input_ids, weights=[1.0, *weights, 1.0] + [1.0] * padding)

    def encode(self, prompt: str) -> torch.Tensor:
        """Return the conditioning for ``prompt``, shaped ``(1, 77 * chunks, dim)``; repeated prompts hit the cache."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt: expected a str, got {type(prompt).__name__}")
        with self._cache_lock:
            cached = self._cache.get(prompt)
            if cached is not None:
                self._cache.move_to_end(prompt)
                return cached
        embedding = self._encode_uncached(prompt)
        if self.cache_size > 0:
            with self._cache_lock:
                self._cache[prompt] = embedding
                self._cache.move_to_end(prompt)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return embedding

    def encode_many(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        """Encode several prompts to one common length, so they can be interpolated or batched together.

        Shorter results are extended with whole chunks of the empty prompt's encoding: the same filler the UNet
        sees for unconditional guidance, which keeps a lerp between a long and a short prompt meaningful.
        """
        if isinstance(prompts, str):
            raise ValueError("prompts: expected a sequence of str, got a single str")
        embeddings = [self.encode(prompt) for prompt in prompts]
        if not embeddings:
            return []
        target_length = max(embedding.shape[1] for embedding in embeddings)
        if all(embedding.shape[1] == target_length for embedding in embeddings):
            return embeddings
        empty_chunk = self.encode("")
        return [self._pad_with_chunks(embedding, empty_chunk, target_length) for embedding in embeddings]

    @staticmethod
    def _pad_with_chunks(embedding: torch.Tensor, filler: torch.Tensor, target_length: int) -> torch.Tensor:
        missing_chunks = (target_length - embedding.shape[1]) // CHUNK_LENGTH
        if missing_chunks == 0:
            return embedding
        return torch.cat([embedding, filler.repeat(1, missing_chunks, 1)], dim=1)

    def cache_info(self) -> tuple[int, int]:
        """Return ``(entries, capacity)`` of the embedding cache."""
        with self._cache_lock:
            return len(self._cache), self.cache_size

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    def _encode_uncached(self, prompt: str) -> torch.Tensor:
        with torch.inference_mode():
            hidden = [self._encode_chunk(chunk) for chunk in self.tokenize(prompt)]
        return torch.cat(hidden, dim=1).to(device=self.device, dtype=self.dtype)

    def _encode_chunk(self, chunk: TokenChunk) -> torch.Tensor:
        input_ids = torch.tensor([chunk.input_ids], dtype=torch.long, device=self.encoder_device)
        hidden = self.text_encoder(input_ids)[0]
        if not chunk.is_weighted:
            return hidden
        return apply_token_weights(hidden, torch.tensor(chunk.weights, device=hidden.device))


def apply_token_weights(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale each position of ``hidden`` (batch, tokens, dim) by ``weights`` (tokens,), keeping the mean unchanged.

    The mean-restoring factor is only meaningful when the mean is: a CLIP whose final LayerNorm has no bias (an
    untrained or tiny model) gives hidden states whose mean is rounding noise, and dividing by noise would scale or
    even flip the whole conditioning. In that case (either mean below ``NEGLIGIBLE_MEAN`` of the mean magnitude, or
    the two means of opposite sign) only the per-token scaling is applied. Computed in float32 so half-precision
    encoders do not lose the small differences the weights make.
    """
    if weights.shape != hidden.shape[1:2]:
        raise ValueError(f"weights: expected shape ({hidden.shape[1]},), got {tuple(weights.shape)}")
    original = hidden.float()
    weighted = original * weights.float()[None, :, None]
    original_mean, weighted_mean = original.mean(), weighted.mean()
    negligible = NEGLIGIBLE_MEAN * original.abs().mean()
    if original_mean.abs() > negligible and weighted_mean.abs() > negligible and original_mean * weighted_mean > 0:
        weighted = weighted * (original_mean / weighted_mean)
    return weighted.to(hidden.dtype)

"""An offline CLIP tokenizer built from a small, fixed byte-level BPE vocabulary.

The real riffusion checkpoint ships CLIP ViT-L/14's 49408-token vocabulary, which cannot be downloaded here. The tiny
model and the tests still need a genuine :class:`~transformers.CLIPTokenizer` (same normalisation, same pre-tokenizer,
same BOS/EOS/padding behaviour), so this module writes a vocabulary in CLIP's own file layout and loads it through the
ordinary ``from_pretrained`` path. With only a few merges, ordinary English words split into several tokens each, which
keeps prompt weighting and long-prompt chunking meaningful even for short prompts.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable
from pathlib import Path

from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77

# Pairs merged in this order (earlier merges win). A handful of frequent English bigrams and suffixes: enough to show
# that merging works, few enough that a typical word stays 2-5 tokens long.
OFFLINE_MERGES: tuple[tuple[str, str], ...] = (
    ("t", "h"),
    ("i", "n"),
    ("e", "r"),
    ("a", "n"),
    ("o", "n"),
    ("r", "e"),
    ("e", "n"),
    ("a", "r"),
    ("o", "r"),
    ("s", "t"),
    ("a", "t"),
    ("o", "u"),
    ("l", "l"),
    ("e", "s</w>"),
    ("th", "e</w>"),
    ("in", "g</w>"),
    ("an", "d</w>"),
    ("e", "d</w>"),
    ("o", "n</w>"),
    ("e", "r</w>"),
    ("a", "r</w>"),
    ("o", "r</w>"),
    ("en", "t</w>"),
    ("i", "c</w>"),
    ("a", "l</w>"),
    ("b", "e"),
    ("d", "e"),
    ("p", "i"),
    ("m", "u"),
    ("s", "i"),
    ("g", "u"),
    ("w", "i"),
    ("t", "h</w>"),
    ("wi", "th</w>"),
    ("b", "a"),
    ("l", "o"),
    ("c", "h"),
)


def byte_to_unicode_alphabet() -> list[str]:
    """Return the 256 printable symbols standing for bytes 0..255, in byte order.

    Byte-level BPE avoids whitespace and control characters in its vocabulary by giving every byte a visible
    character: printable Latin-1 bytes stand for themselves, the others are shifted above U+00FF in byte order.
    This must agree with the mapping of ``tokenizers``' ByteLevel pre-tokenizer, which CLIPTokenizer uses.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1))
    printable |= set(range(ord("®"), ord("ÿ") + 1))
    alphabet = []
    shifted = 0
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + shifted))
            shifted += 1
    return alphabet


def offline_clip_vocabulary(merges: tuple[tuple[str, str], ...] = OFFLINE_MERGES) -> dict[str, int]:
    """Build a CLIP-ordered vocabulary: bytes, bytes + ``</w>``, one token per merge, then BOS and EOS."""
    alphabet = byte_to_unicode_alphabet()
    tokens = alphabet + [symbol + END_OF_WORD for symbol in alphabet]
    for left, right in merges:
        if left not in tokens or right not in tokens:
            raise ValueError(f"merges: pair {left!r} {right!r} uses a symbol that no earlier token produces")
        tokens.append(left + right)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    if len(set(tokens)) != len(tokens):
        raise ValueError("merges: a merge produces a token that already exists")
    return {token: index for index, token in enumerate(tokens)}


def bpe_symbols(word: str, merges: Iterable[tuple[str, str]]) -> list[str]:
    """Split one pre-tokenized ASCII word the way CLIP's BPE does: the lowest-ranked adjacent pair merges first."""
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), index) for index, pair in enumerate(itertools.pairwise(symbols))]
        rank, index = min(pairs)
        if rank == len(ranks):
            break
        pair = (symbols[index], symbols[index + 1])
        merged, position = [], 0
        while position < len(symbols):
            if position + 1 < len(symbols) and (symbols[position], symbols[position + 1]) == pair:
                merged.append(pair[0] + pair[1])
                position += 2
            else:
                merged.append(symbols[position])
                position += 1
        symbols = merged
    return symbols


def whole_word_merges(words: Iterable[str], base: tuple[tuple[str, str], ...] = OFFLINE_MERGES) -> tuple[tuple[str, str], ...]:
    """``base`` plus the merges that make each letter run of ``words`` a single token.

    New merges rank after all earlier ones, so they never change how an already whole word splits; a model trained on
    a small caption vocabulary then sees one token per word. Digits and punctuation stay single symbols, as CLIP's
    pre-tokenizer splits them apart anyway.
    """
    merges = list(base)
    for text in words:
        for word in re.findall(r"[a-z]+", text.lower()):
            symbols = bpe_symbols(word, merges)
            while len(symbols) > 1:
                merges.append((symbols[0], symbols[1]))
                symbols = bpe_symbols(word, merges)
    return tuple(merges)


def write_offline_clip_tokenizer_files(directory: Path, merges: tuple[tuple[str, str], ...] = OFFLINE_MERGES) -> None:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` like a diffusers ``tokenizer/`` folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocabulary = offline_clip_vocabulary(merges)
    (directory / "vocab.json").write_text(json.dumps(vocabulary, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in merges]
    (directory / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "do_lower_case": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def build_offline_clip_tokenizer(directory: Path, merges: tuple[tuple[str, str], ...] = OFFLINE_MERGES) -> CLIPTokenizer:
    """Write the offline vocabulary into ``directory`` and load it as a CLIPTokenizer (77 tokens, like SD 1.5).

    The files stay in ``directory`` so a model saved next to them reloads with ``CLIPTokenizer.from_pretrained``.
    The result is deterministic: the same files, ids and vocabulary size (``len(tokenizer)``) on every call.
    """
    write_offline_clip_tokenizer_files(directory, merges)
    return CLIPTokenizer.from_pretrained(str(directory), local_files_only=True)

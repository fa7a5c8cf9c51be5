"""Offline word-level CLIP tokenizers for small vocabularies (the embedded teacher and tests)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from transformers import CLIPTokenizer

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Splits `text` the way CLIP's pre-tokenizer does for our vocabularies: lower-case words and punctuation."""
    return _WORD.findall(text.lower())


def build_word_tokenizer(words: Iterable[str], model_max_length: int = 77) -> CLIPTokenizer:
    """Builds a `CLIPTokenizer` whose BPE merges turn every word of `words` into a single token.

    The vocabulary holds the special tokens, every character (alone and word-final, `c</w>`), and the chain of
    prefixes of each word, so unknown words still tokenize, character by character. No file or network is needed;
    `save_pretrained` writes a standard tokenizer folder that stock `CLIPTokenizer.from_pretrained` reloads.
    """
    words = sorted({w for text in words for w in split_words(text)})
    if not words:
        raise ValueError("build_word_tokenizer needs at least one word")
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        if token not in vocab:
            vocab[token] = len(vocab)

    add("<|startoftext|>")
    add("<|endoftext|>")
    for char in sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz0123456789,.")):
        add(char)
        add(char + "</w>")
    merges: list[tuple[str, str]] = []  # transformers 5 wants tuples, not "a b" strings
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        prefix = symbols[0]
        for symbol in symbols[1:]:
            if (prefix, symbol) not in merges:
                merges.append((prefix, symbol))
            prefix += symbol
            add(prefix)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)

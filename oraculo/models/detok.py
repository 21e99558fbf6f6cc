"""Incremental detokenization: each new token's text from a few tokens' decode, not the reply's.

Decoding a sequence's every token again at each step costs O(n) per token, O(n²) per reply (a
512-token reply decodes ~130k tokens). Instead, as vLLM and transformers' ``TextStreamer`` do,
decode only a short window: the tokens since the last emitted text plus a few before them for
context (a SentencePiece tokenizer drops a word's leading space when it decodes the word alone, a
byte-level BPE splits a character across tokens), and emit what the window's text has beyond the
context's text. A window whose text ends in U+FFFD is half a UTF-8 character: it waits for the
next token.

The concatenated deltas equal ``tokenizer.decode(ids, skip_special_tokens=True)`` for the
tokenizers we ship (tested on the bundled model against the whole decode).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: prompt tokens decoded before the first generated one, for context (as vLLM's detokenizer)
CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Turns one sequence's generated token ids into text deltas, a few tokens' decode each."""

    __slots__ = ("_ids", "_prefix", "_read", "_tokenizer", "text")

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-CONTEXT_TOKENS:])
        self._prefix = 0  # window start: context for the tokens after ``_read``
        self._read = len(self._ids)  # tokens whose text is already in ``text``
        self.text = ""  # the reply so far

    def add(self, token: int) -> str:
        """Take one generated token; returns the text it completes (may be empty)."""
        self._ids.append(token)
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        after = decode(self._ids[self._prefix :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # a special token, or half a character: wait for more
        delta = after[len(before) :]
        self._prefix, self._read = self._read, len(self._ids)
        self.text += delta
        return delta
